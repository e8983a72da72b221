"""Accepting a job: everything that can be checked before work is queued, is.

``accept`` checks a submission and makes its job, or raises a ``VorError`` naming
the field at fault; ``store_files`` puts its files into storage. The lifecycle
(``Lifecycle.submit``) stores the job and enqueues it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from services.engines import capabilities
from services.engines.base import Capabilities
from services.errors import (
    Conflict,
    InputTooLarge,
    InvalidInput,
    InvalidSpec,
    NotFound,
    PayloadTooLarge,
    TransientError,
)
from services.jobs.store import JobStore, new_job_id
from services.media.masks import MAX_IMAGE_PIXELS
from services.media.video import image_size, probe
from services.media.windows import plan_windows
from services.models import InputInfo, Job, JobSpec, SegmentInfo, Status
from services.settings import Settings
from services.storage import Storage

VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class Submission:
    tenant: str
    spec: JobSpec
    video: Path | None = None
    video_name: str | None = None
    mask: Path | None = None
    mask_name: str | None = None
    idempotency_key: str | None = None
    batch_id: str | None = None
    batch_index: int | None = None


def probe_upload(path: Path, engine: str, settings: Settings) -> InputInfo:
    """Probe a client's video against the configured limits and the engine's own."""
    info = probe(
        path,
        max_duration_s=settings.max_duration_s,
        max_width=settings.max_width,
        max_height=settings.max_height,
        max_frames=settings.max_frames,
    )
    capabilities(engine, settings).check_clip(info)
    return info


def download_video(url: str, dest: Path, settings: Settings) -> Path:
    """Fetch a client's ``video_url`` through the network policy, within the upload limit."""
    import httpx

    from services.netpolicy import guarded_client

    limit = settings.max_upload_bytes
    with guarded_client(settings.allowed_networks(), timeout=60, field="video_url") as client:
        try:
            with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise InvalidInput(
                        f"video_url answered HTTP {response.status_code}; give a URL that "
                        "serves the video directly (redirects are not followed)",
                        field="video_url",
                    )
                size = 0
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise PayloadTooLarge(
                                f"video_url is over the limit of {limit} bytes", field="video_url"
                            )
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise TransientError(
                f"video_url could not be fetched: {exc}", field="video_url"
            ) from exc
    return dest


def check_prompts(spec: JobSpec, engine: Capabilities, info: InputInfo | None) -> None:
    """Every class against what the engine can do and, once known, the video's length."""
    for index, prompt in enumerate(spec.classes):
        engine.check_prompt(prompt, f"classes[{index}].text")
        if info is not None:
            prompt.check_frame_index(info.frames, field=f"classes[{index}].frame_index")


def check_url(url: str, field: str, settings: Settings) -> None:
    from services.netpolicy import check_url as check

    check(url, settings.allowed_networks(), trusted_origins=(settings.svor_base_url,), field=field)


def suffix_of(name: str | None, allowed: set[str], default: str) -> str:
    """The name's extension if it is one of ``allowed`` (and plainly spelled), else ``default``."""
    suffix = Path(name or "").suffix.lower()
    return suffix if suffix in allowed and re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else default


def _mask_frames(path: Path, settings: Settings) -> int:
    """How many frames a client's mask has: 1 for a PNG or JPEG image.

    An image's size is read from its header before it is decoded, and a video
    mask is probed within the video limits, so a small mask cannot be a bomb.
    """
    if path.stat().st_size == 0:
        raise InvalidInput("the mask file is empty (0 bytes)", field="mask")
    size = image_size(path)
    if size is not None:
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise InputTooLarge(
                f"the mask image is {size[0]}x{size[1]}; at most {MAX_IMAGE_PIXELS} pixels",
                field="mask",
            )
        if cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED) is None:
            raise InvalidInput("the mask image could not be decoded", field="mask")
        return 1
    try:
        info = probe(
            path,
            max_width=settings.max_width,
            max_height=settings.max_height,
            max_frames=settings.max_frames,
        )
    except (InvalidInput, InputTooLarge) as exc:
        raise type(exc)(
            f"the mask is neither a PNG/JPEG image nor a usable video ({exc.message})",
            field="mask",
        ) from exc
    return info.frames


def check_targets(label: str, wanted: list[int], found: set[int], finder: str) -> None:
    """Refuse target ids that segmentation did not find, naming the ones it did."""
    missing = sorted(set(wanted) - found)
    if missing:
        raise InvalidSpec(
            f"targets.{label} names ids {missing}, but {finder} found "
            f"{sorted(found) or 'no objects'}: pick ids from the segment result",
            field=f"targets.{label}",
        )


def _from_job(spec: JobSpec, tenant: str, store: JobStore) -> Job:
    assert spec.from_job
    try:
        source = store.get_for(tenant, spec.from_job)
    except NotFound:
        raise InvalidSpec(f"from_job {spec.from_job} does not exist", field="from_job") from None
    if source.mode != "segment":
        raise InvalidSpec(
            f"from_job {source.id} is a {source.mode} job, not a segment job", field="from_job"
        )
    if source.status is not Status.succeeded:
        raise InvalidSpec(
            f"from_job {source.id} is {source.status.value}; it must have succeeded first",
            field="from_job",
        )
    if spec.mode == "segment":
        return source
    for prompt in spec.classes:
        if prompt.label not in source.segments:
            raise InvalidSpec(
                f"class {prompt.label!r} is not in from_job {source.id} "
                f"(it has {sorted(source.segments)})",
                field="classes",
            )
    for label, ids in (spec.targets or {}).items():
        segment = source.segments.get(label)
        if segment is None:
            raise InvalidSpec(
                f"targets name class {label!r}, which from_job {source.id} does not have "
                f"(it has {sorted(source.segments)})",
                field=f"targets.{label}",
            )
        check_targets(label, ids, {o.id for o in segment.objects}, f"from_job {source.id}")
    return source


def _reused(
    spec: JobSpec, source: Job, engine: str
) -> tuple[dict[str, str], dict[str, SegmentInfo], list[str]]:
    """What a from_job job takes over from its segment job: artifacts, segments, stages done.

    A remove job takes the video, the working copy and every class's objects. A
    segment job (a class prompted again) takes the video, and, on the same engine,
    the working copy and the segmentation of every class whose prompt is
    unchanged, so only the classes prompted anew are segmented again.
    """
    if spec.mode == "remove":
        artifacts = {
            k: v
            for k, v in source.artifacts.items()
            if k in {"input", "work"} or k.startswith(("segment:", "work:"))
        }
        return artifacts, dict(source.segments), []
    if "input" not in source.artifacts:
        raise InvalidSpec(f"from_job {source.id} kept no video to reuse", field="from_job")
    artifacts = {"input": source.artifacts["input"]}
    if engine != source.engine or "work" not in source.artifacts:
        return artifacts, {}, []
    artifacts.update({k: v for k, v in source.artifacts.items()
                      if k == "work" or k.startswith("work:")})  # fmt: skip
    segments: dict[str, SegmentInfo] = {}
    done = ["compress"]
    before = {c.label: c for c in source.spec.classes}
    for prompt in spec.classes:
        key = f"segment:{prompt.label}"
        if before.get(prompt.label) == prompt and key in source.artifacts:
            kept = {k: v for k, v in source.artifacts.items()
                    if k == key or k.startswith(key + ":w")}  # fmt: skip
            artifacts.update(kept)
            segments[prompt.label] = source.segments[prompt.label]
            done.extend(kept)
    return artifacts, segments, done


@dataclass
class _Source:
    """Where a job's video comes from, and what it takes over from a ``from_job``."""

    engine: str
    info: InputInfo | None = None
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)
    segments: dict[str, SegmentInfo] = dataclasses.field(default_factory=dict)
    done: list[str] = dataclasses.field(default_factory=list)
    windows: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def _windows(info: InputInfo, engine: str, settings: Settings) -> list[tuple[int, int]]:
    """A long video's windows for ``engine`` (none when it runs whole); ``compress`` checks
    them against the working copy it makes."""
    found = plan_windows(info.frames, info.fps, capabilities(engine, settings).window_s)
    return found if len(found) > 1 else []


def _source(sub: Submission, store: JobStore, settings: Settings) -> _Source:
    spec = sub.spec
    engine = spec.engine or settings.engine
    if spec.from_job:
        if sub.video is not None or spec.video_url or sub.mask is not None:
            raise InvalidSpec(
                "a from_job job reuses that job's video: send no video or mask", field="from_job"
            )
        source = _from_job(spec, sub.tenant, store)
        engine = spec.engine or source.engine
        reused = _Source(engine, source.input, *_reused(spec, source, engine))
        if "work" in reused.artifacts:
            reused.windows = list(source.windows)
        return reused
    if sub.video is not None:
        if spec.video_url:
            raise InvalidSpec("send either a video file or video_url, not both", field="video_url")
        size = sub.video.stat().st_size
        if size > settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"the video is {size} bytes; the limit is {settings.max_upload_bytes}",
                field="video",
            )
        info = probe_upload(sub.video, engine, settings)
        return _Source(engine, info, windows=_windows(info, engine, settings))
    if spec.video_url:
        check_url(spec.video_url, "video_url", settings)
        return _Source(engine)
    raise InvalidInput("send a video file (multipart field 'video') or a video_url", field="video")


def _check_mask(sub: Submission, info: InputInfo | None, settings: Settings) -> None:
    spec = sub.spec
    if sub.mask is None:
        if spec.mode == "remove" and not spec.classes and not spec.from_job:
            raise InvalidSpec(
                "nothing to remove: give classes with boxes or points, a from_job, or a mask",
                field="classes",
            )
        return
    if spec.mode != "remove":
        raise InvalidSpec("only a remove job takes a mask", field="mask")
    if spec.classes:
        raise InvalidSpec("send either a mask or classes to segment, not both", field="mask")
    frames = _mask_frames(sub.mask, settings)
    if info is not None and frames not in (1, info.frames):
        raise InvalidInput(
            f"the mask has {frames} frames and the video {info.frames}: send one mask frame "
            "per video frame, or a single image for all of them",
            field="mask",
        )


def accept(sub: Submission, *, store: JobStore, settings: Settings) -> Job:
    """Check everything that can be checked before work is queued; the new job (not yet
    stored), or a ``VorError`` naming the field at fault."""
    spec = sub.spec
    source = _source(sub, store, settings)
    check_prompts(spec, capabilities(source.engine, settings), source.info)
    _check_mask(sub, source.info, settings)
    if spec.webhook_url:
        check_url(spec.webhook_url, "webhook_url", settings)
    return Job(
        id=new_job_id(),
        tenant=sub.tenant,
        mode=spec.mode,
        engine=source.engine,  # type: ignore[arg-type]
        spec=spec,
        input=source.info,
        artifacts=source.artifacts,
        segments=source.segments,
        done=source.done,
        windows=source.windows,
        idempotency_key=sub.idempotency_key,
        batch_id=sub.batch_id,
        batch_index=sub.batch_index,
    )


def check_replay(existing: Job, spec: JobSpec) -> None:
    """An ``Idempotency-Key`` already used: the same spec replays its job; another spec
    is a conflict, never that other job."""
    if existing.spec != spec:
        raise Conflict(
            f"this Idempotency-Key was used for job {existing.id}, with another spec; "
            "use a new key for a new job",
            field="Idempotency-Key",
        )


def store_files(job: Job, sub: Submission, storage: Storage) -> None:
    """Put the submitted video and mask into storage, under the job's keys."""
    if sub.video is not None:
        key = f"jobs/{job.id}/input{suffix_of(sub.video_name, VIDEO_SUFFIXES, '.mp4')}"
        storage.put_file(key, sub.video)
        job.artifacts["input"] = key
    if sub.mask is not None:
        suffix = suffix_of(sub.mask_name, VIDEO_SUFFIXES | IMAGE_SUFFIXES, ".bin")
        key = f"jobs/{job.id}/mask_upload{suffix}"
        storage.put_file(key, sub.mask)
        job.artifacts["mask_upload"] = key
