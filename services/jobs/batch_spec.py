"""A batch as a client sends it, and the job spec of each of its items.

The request is checked as a whole when it arrives (its shape, the shared spec's
fields, the batch webhook); each item is checked later, in the background, when
its job is made (``item_spec``), so one bad item fails alone. Light on imports,
like ``spec_json``: the API parses a large batch in its parser process
(``api.spec_parser``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.errors import InvalidSpec
from services.jobs.spec_json import parse_client_json
from services.models import JobSpec, http_url

MAX_ITEMS = 10_000
BATCH_EVENTS = ("batch.completed",)
ITEM_KEYS = ("video_url", "spec", "ref")
MAX_REF_CHARS = 200


class BatchItem(BaseModel):
    """One item, as documented (the API reads items leniently: see ``item_spec``)."""

    model_config = ConfigDict(extra="forbid")

    video_url: str = Field(max_length=2048, examples=["https://example.com/clips/0001.mp4"])
    spec: dict[str, Any] = Field(
        default_factory=dict, description="fields of the job spec that override the shared spec's"
    )
    ref: str | None = Field(
        default=None,
        max_length=MAX_REF_CHARS,
        description="the client's own name for the item (a file name), echoed in the item list",
    )


class BatchRequest(BaseModel):
    """``POST /v1/batches``: items, each a video_url with its own spec or overrides of ``spec``."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] = Field(
        default_factory=dict,
        description="the job spec every item shares (without video_url); an item's own `spec` "
        "overrides its top-level fields",
    )
    items: list[Any] = Field(min_length=1, max_length=MAX_ITEMS)
    webhook_url: str | None = Field(
        default=None, max_length=2048, description="where `batch.completed` is sent"
    )
    webhook_events: list[str] = Field(default_factory=lambda: list(BATCH_EVENTS))

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_url(value)

    @field_validator("webhook_events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(BATCH_EVENTS))
        if unknown:
            raise ValueError(f"unknown events {unknown}; a batch sends {list(BATCH_EVENTS)}")
        return events

    def fingerprint(self) -> str:
        """What an ``Idempotency-Key`` replay must match: the request, canonically."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    """``items[3].spec`` + ``("classes", 0, "boxes")`` -> ``items[3].spec.classes[0].boxes``."""
    text = prefix
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _invalid(exc: ValidationError, prefix: str, *, located: bool = False) -> InvalidSpec:
    """The first error of ``exc`` (with ``located``, the first on a field), as InvalidSpec."""
    first = next(e for e in exc.errors() if e.get("loc") or not located)
    field = field_path(prefix, tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidSpec(f"{field}: {message}", field=field)


def parse_batch(raw: str | bytes) -> BatchRequest:
    """The batch request from its JSON text; ``InvalidSpec`` names the field at fault."""
    try:
        request = BatchRequest.model_validate(parse_client_json(raw, "body"))
    except ValidationError as exc:
        raise _invalid(exc, "") from None
    check_shared_spec(request.spec)
    return request


def check_shared_spec(shared: dict[str, Any]) -> None:
    """Refuse a shared spec whose own fields are wrong: every item would fail the same way.

    Rules that join fields (a remove job needs classes, say) are left to each item,
    whose overrides may complete the spec.
    """
    if "video_url" in shared:
        raise InvalidSpec(
            "spec.video_url: each item names its own video_url", field="spec.video_url"
        )
    try:
        JobSpec.model_validate(shared)
    except ValidationError as exc:
        if any(e.get("loc") for e in exc.errors()):
            raise _invalid(exc, "spec", located=True) from None


def item_spec(shared: dict[str, Any], item: Any, index: int) -> JobSpec:
    """The job spec of item ``index``: the shared spec, its overrides, its video_url.

    Raises ``InvalidSpec`` naming the item's field (``items[3].spec.classes[0].boxes``).
    """
    where = f"items[{index}]"
    if not isinstance(item, dict):
        raise InvalidSpec(
            f"{where} must be an object with video_url (and optionally spec, ref)", field=where
        )
    unknown = sorted(set(item) - set(ITEM_KEYS))
    if unknown:
        raise InvalidSpec(
            f"{where}.{unknown[0]}: unknown field; an item has {list(ITEM_KEYS)}",
            field=f"{where}.{unknown[0]}",
        )
    overrides = item.get("spec") or {}
    if not isinstance(overrides, dict):
        raise InvalidSpec(f"{where}.spec must be an object", field=f"{where}.spec")
    if "video_url" in overrides:
        raise InvalidSpec(
            f"{where}.spec.video_url: give video_url on the item itself",
            field=f"{where}.spec.video_url",
        )
    if not item.get("video_url"):
        raise InvalidSpec(
            f"{where}.video_url: each item needs a video_url", field=f"{where}.video_url"
        )
    try:
        spec = JobSpec.model_validate({**shared, **overrides, "video_url": item["video_url"]})
    except ValidationError as exc:
        loc = tuple(exc.errors()[0].get("loc", ()))
        prefix = where if loc[:1] == ("video_url",) else f"{where}.spec"
        raise _invalid(exc, prefix) from None
    return spec


def item_ref(item: Any) -> str | None:
    """The client's name for an item, if it gave one that vor can echo."""
    ref = item.get("ref") if isinstance(item, dict) else None
    return ref[:MAX_REF_CHARS] if isinstance(ref, str) else None
