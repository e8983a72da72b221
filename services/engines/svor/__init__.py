"""The ``svor`` engine: the SVOR cloud API (SAM3 segmentation, MiEraser erasure)."""

from __future__ import annotations

from services.engines.base import Capabilities
from services.models import Queue


def capabilities(max_clip_s: float) -> Capabilities:
    """Text prompts too; clips of at most ``max_clip_s`` (``VOR_SVOR_MAX_DURATION_S``); its
    calls wait on the network, so its stages go to the ``io`` queue."""
    return Capabilities(name="svor", queue=Queue.io, text_prompts=True, max_clip_s=max_clip_s)
