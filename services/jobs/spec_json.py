"""A client's job spec from its JSON text.

Kept apart from ``services.jobs.submission`` (which pulls in PyAV, OpenCV and numpy)
so that a process whose only job is parsing specs imports little more than
pydantic: the API parses large specs in such a process (``api.spec_parser``).
"""

from __future__ import annotations

import json
from typing import Any

from services.errors import InvalidSpec
from services.models import JobSpec


def parse_client_json(raw: str | bytes, field: str) -> Any:
    """A client's JSON (the spec, or the whole body), refused with ``InvalidSpec`` naming
    ``field`` unless vor can keep it: well-formed, without NaN or Infinity, nested
    less deep than Python's recursion limit, and with no lone surrogate (``"\\ud800"``
    parses, but cannot be written back as UTF-8)."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidSpec(
            f"{field} is not JSON: {exc.msg} at position {exc.pos}", field=field
        ) from exc
    except RecursionError:
        raise InvalidSpec(f"{field} is nested too deeply to be a job spec", field=field) from None
    except ValueError as exc:
        raise InvalidSpec(f"{field} is not JSON: {exc}", field=field) from exc
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidSpec(
            f"{field} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff): send valid Unicode",
            field=field,
        ) from None
    return value


def parse_spec(raw: str | bytes, field: str) -> JobSpec:
    """A client's job spec from its JSON text; ``ValidationError`` names what is wrong."""
    return JobSpec.model_validate(parse_client_json(raw, field))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
