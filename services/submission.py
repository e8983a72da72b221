"""Accepting a job: everything that can be checked before work is queued, is.

A submission that passes is stored (files in storage, the job in the job
store) and enqueued; one that does not raises a ``VorError`` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services import media
from services.errors import (
    Conflict,
    InputTooLarge,
    InvalidInput,
    InvalidSpec,
    NotFound,
    PayloadTooLarge,
    TransientError,
    UnsupportedPrompt,
)
from services.masks import MAX_IMAGE_PIXELS
from services.models import InputInfo, Job, JobSpec, SegmentInfo, Status
from services.settings import Settings
from services.store import JobStore, new_job_id

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


def probe_upload(path: Path, engine: str, settings: Settings) -> InputInfo:
    """Probe a client's video against the configured limits and the engine's own."""
    info = media.probe(
        path,
        max_duration_s=settings.max_duration_s,
        max_width=settings.max_width,
        max_height=settings.max_height,
        max_frames=settings.max_frames,
    )
    if engine == "svor" and info.duration_s > settings.svor_max_duration_s + 0.05:
        raise InvalidInput(
            f"the svor engine accepts clips of at most {settings.svor_max_duration_s:g} s and "
            f"this one lasts {info.duration_s:.2f} s: trim it, or use the local engine",
            field="video",
        )
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


def check_prompts(spec: JobSpec, engine: str, info: InputInfo | None) -> None:
    for index, prompt in enumerate(spec.classes):
        if engine == "local" and not prompt.has_geometry:
            raise UnsupportedPrompt(
                f"class {prompt.label!r} has only a text prompt; the local engine needs boxes or "
                "points (text needs a segmentation model: use engine 'svor')",
                field=f"classes[{index}].text",
            )
        if info is not None and prompt.frame_index >= info.frames:
            raise InvalidSpec(
                f"frame_index {prompt.frame_index} is past the last frame: the video has "
                f"{info.frames} frames (0..{info.frames - 1})",
                field=f"classes[{index}].frame_index",
            )


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
    size = media.image_size(path)
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
        info = media.probe(
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
            if k in {"input", "work"} or k.startswith("segment:")
        }
        return artifacts, dict(source.segments), []
    if "input" not in source.artifacts:
        raise InvalidSpec(f"from_job {source.id} kept no video to reuse", field="from_job")
    artifacts = {"input": source.artifacts["input"]}
    if engine != source.engine or "work" not in source.artifacts:
        return artifacts, {}, []
    artifacts["work"] = source.artifacts["work"]
    segments: dict[str, SegmentInfo] = {}
    done = ["compress"]
    before = {c.label: c for c in source.spec.classes}
    for prompt in spec.classes:
        key = f"segment:{prompt.label}"
        if before.get(prompt.label) == prompt and key in source.artifacts:
            artifacts[key] = source.artifacts[key]
            segments[prompt.label] = source.segments[prompt.label]
            done.append(key)
    return artifacts, segments, done


def _check_replay(existing: Job, spec: JobSpec) -> None:
    if existing.spec != spec:
        raise Conflict(
            f"this Idempotency-Key was used for job {existing.id}, with another spec; "
            "use a new key for a new job",
            field="Idempotency-Key",
        )


def submit(
    sub: Submission,
    *,
    store: JobStore,
    storage: Any,
    settings: Settings,
    enqueue: Callable[[Job], None],
) -> tuple[Job, bool]:
    """Check, store and enqueue a job. Returns the job and whether it is new.

    A request is checked in full before its ``Idempotency-Key`` is looked up, so
    a retry is answered as the first request was: the same job when it was
    accepted, the same error when it was not. A key already used for another
    spec is a conflict, never that other job.
    """
    spec = sub.spec
    engine = spec.engine or settings.engine
    artifacts: dict[str, str] = {}
    segments: dict[str, SegmentInfo] = {}
    done: list[str] = []
    info: InputInfo | None = None

    if spec.from_job:
        if sub.video is not None or spec.video_url or sub.mask is not None:
            raise InvalidSpec(
                "a from_job job reuses that job's video: send no video or mask", field="from_job"
            )
        source = _from_job(spec, sub.tenant, store)
        engine = spec.engine or source.engine
        info = source.input
        artifacts, segments, done = _reused(spec, source, engine)
    elif sub.video is not None:
        if spec.video_url:
            raise InvalidSpec("send either a video file or video_url, not both", field="video_url")
        size = sub.video.stat().st_size
        if size > settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"the video is {size} bytes; the limit is {settings.max_upload_bytes}",
                field="video",
            )
        info = probe_upload(sub.video, engine, settings)
    elif spec.video_url:
        check_url(spec.video_url, "video_url", settings)
    else:
        raise InvalidInput(
            "send a video file (multipart field 'video') or a video_url", field="video"
        )

    check_prompts(spec, engine, info)
    if sub.mask is not None:
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
    elif spec.mode == "remove" and not spec.classes and not spec.from_job:
        raise InvalidSpec(
            "nothing to remove: give classes with boxes or points, a from_job, or a mask",
            field="classes",
        )
    if spec.webhook_url:
        check_url(spec.webhook_url, "webhook_url", settings)
    if sub.idempotency_key:
        existing = store.by_idempotency_key(sub.tenant, sub.idempotency_key)
        if existing is not None:
            _check_replay(existing, spec)
            return existing, False

    job = Job(
        id=new_job_id(),
        tenant=sub.tenant,
        mode=spec.mode,
        engine=engine,  # type: ignore[arg-type]
        spec=spec,
        input=info,
        artifacts=artifacts,
        segments=segments,
        done=done,
        idempotency_key=sub.idempotency_key,
    )
    if sub.video is not None:
        key = f"jobs/{job.id}/input{suffix_of(sub.video_name, VIDEO_SUFFIXES, '.mp4')}"
        storage.put_file(key, sub.video)
        job.artifacts["input"] = key
    if sub.mask is not None:
        suffix = suffix_of(sub.mask_name, VIDEO_SUFFIXES | IMAGE_SUFFIXES, ".bin")
        key = f"jobs/{job.id}/mask_upload{suffix}"
        storage.put_file(key, sub.mask)
        job.artifacts["mask_upload"] = key
    job, created = store.create(job)
    if created:
        enqueue(job)
    return job, created
