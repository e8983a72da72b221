"""The ``svor`` engine: the SVOR cloud API (SAM3 segmentation, MiEraser erasure)."""

from __future__ import annotations

from services.engines.base import Capabilities
from services.models import Queue


def capabilities(window_s: float) -> Capabilities:
    """Text prompts too; any length vor takes, as windows of at most ``window_s``
    (``VOR_SVOR_MAX_DURATION_S``, the service's limit per upload); its calls wait on the
    network, so its stages go to the ``io`` queue."""
    return Capabilities(name="svor", queue=Queue.io, text_prompts=True, window_s=window_s)


def upload_limits(max_clip_s: float) -> Capabilities:
    """What the SVOR service itself takes in one upload (``vor svor-server`` enforces it)."""
    return Capabilities(name="SVOR", queue=Queue.io, text_prompts=True, max_clip_s=max_clip_s)
