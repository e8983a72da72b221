"""The ``local`` engine: classical computer vision on the CPU, no key, no network."""

from __future__ import annotations

from services.engines.base import Capabilities
from services.models import Queue

CAPABILITIES = Capabilities(name="local", queue=Queue.cpu, text_prompts=False)
"""Boxes and points only (tracking starts from geometry); any clip the service accepts."""
