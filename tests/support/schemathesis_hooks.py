"""Schemathesis hooks for vor (``SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks``).

Every multipart submission Schemathesis generates carries a real small video
(``VOR_ST_VIDEO``, a clip the test made) in its ``video`` part instead of random
bytes, so generated jobs get past the probe and reach the spec's own checks,
the queue and the workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import schemathesis

VIDEO = Path(os.environ["VOR_ST_VIDEO"]).read_bytes()


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if not (case.media_type or "").startswith("multipart/form-data"):
        return case
    parts = getattr(case.body, "body", case.body)
    if isinstance(parts, dict) and "video" in parts:
        parts["video"] = VIDEO
    return case
