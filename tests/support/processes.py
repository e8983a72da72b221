"""Helpers that start vor's processes for tests (the process-tree tools are
``services.cli.processes``; the stand-in's starter is ``services.standin.process``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
