"""The ``local`` engine: classical computer vision on the CPU, no key, no network."""

from __future__ import annotations

from services.engines.base import Capabilities
from services.models import Queue

CAPABILITIES = Capabilities(name="local", queue=Queue.cpu, text_prompts=False)
"""Boxes and points only (tracking starts from geometry); any clip the service accepts,
in one piece."""


def capabilities(window_s: float) -> Capabilities:
    """``CAPABILITIES`` with a video longer than ``window_s`` (``VOR_LOCAL_WINDOW_S``; 0: never)
    run as windows of it: the segment step keeps its clip's frames on disk, memory-mapped,
    so a window bounds what one step maps."""
    if window_s <= 0:
        return CAPABILITIES
    return Capabilities(name="local", queue=Queue.cpu, text_prompts=False, window_s=window_s)
