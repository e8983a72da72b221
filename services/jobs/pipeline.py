"""The stages of a job as plain functions: each takes a job id and its resources.

Celery tasks in ``workers/`` are thin wrappers around ``run_stage``; tests call
the stages directly. A stage reads its inputs from storage into a scratch
directory of its own, writes its outputs back to storage, records them on the
job, and removes the scratch directory, so a stage that runs twice (a
redelivered message) simply does its work again. A stage that ends its job
(the last one succeeding, any one failing) does so through the lifecycle.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from services import logs, metrics
from services.engines import capabilities
from services.errors import (
    Canceled,
    Conflict,
    InvalidSpec,
    NotFound,
    StageCrashed,
    StageTimedOut,
    Stale,
    TransientError,
    VorError,
)
from services.jobs import submission, windowed
from services.jobs.lease import StageLease
from services.jobs.plan import stage_key
from services.jobs.stagerun import Resources as Resources
from services.jobs.stagerun import StageRun as StageRun
from services.jobs.store import JobStore
from services.media import compose, masks, preview
from services.media.video import video_size
from services.models import ClassPrompt, Job, SegmentInfo, SegmentObject, Stage
from services.settings import Settings

log = logging.getLogger("vor.pipeline")


class Replanned(Exception):
    """The job was planned again (with windows); the rest of this chain is stale."""


class StageOutcome(Enum):
    done = "done"
    """The chain goes on."""
    skipped = "skipped"
    """The job ended, the message is stale, or the job was canceled meanwhile."""
    failed = "failed"
    """This stage failed the job."""
    busy = "busy"
    """Another copy holds the stage's lease: look again once the lease could have expired."""


def run_stage(
    stage: Stage,
    job_id: str,
    res: Resources,
    *,
    label: str | None = None,
    window: int | None = None,
    generation: int = 0,
    final_attempt: bool = True,
) -> StageOutcome:
    """Run one stage of a job and record what happened on the job.

    A ``TransientError`` propagates for the caller to retry, unless this is the
    ``final_attempt``; every other failure fails the job through the lifecycle.
    """
    key = stage_key(stage, label, window)
    logs.bind(job_id=job_id, stage=stage.value)
    with StageLease(res.store, job_id, key, heartbeat_s=res.settings.heartbeat_s) as lease:
        if not lease.acquire():
            log.warning("%s of %s is running elsewhere; this copy waits", key, job_id)
            return StageOutcome.busy
        try:
            job = res.store.start_stage(job_id, stage, label, generation=generation, window=window)
        except (NotFound, Conflict, Stale):
            return StageOutcome.skipped
        logs.bind(tenant=job.tenant)
        if job.runs[key] > res.settings.stage_max_runs:
            res.jobs.fail(job_id, stage, StageCrashed(
                f"the {stage.value} stage was started {job.runs[key] - 1} times and its worker "
                "died each time (out of memory, or a crash in a codec?); try a shorter or "
                "smaller video",
                stage=stage.value,
            ))  # fmt: skip
            return StageOutcome.failed
        res.jobs.notify(job_id, "job.progress")
        run = StageRun(job, stage, res, _scratch(res.settings, job.id, key), window)
        return _attempt(run, label, final_attempt=final_attempt)


def _scratch(settings: Settings, job_id: str, key: str) -> Path:
    scratch = settings.work_dir / job_id / f"{key.replace(':', '-')}-{time.time_ns()}"
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def _attempt(run: StageRun, label: str | None, *, final_attempt: bool) -> StageOutcome:
    """Do the stage's work in a scratch directory; every way it can end, handled."""
    job, stage, res, scratch = run.job, run.stage, run.res, run.scratch
    key = stage_key(stage, label, run.window)
    try:
        _work(run, label)
        return StageOutcome.done
    except Canceled:
        res.jobs.cleanup(job.id)
        return StageOutcome.skipped
    except Replanned:
        return StageOutcome.skipped
    except res.time_limit_errors:
        res.jobs.fail(job.id, stage, StageTimedOut(
            f"the {stage.value} stage did not finish within "
            f"{res.settings.stage_time_limit_s:g} s; try a shorter video",
            stage=stage.value,
        ))  # fmt: skip
        return StageOutcome.failed
    except TransientError:
        if not final_attempt:
            raise
        return _failed(run, key)
    except Exception:
        return _failed(run, key)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _failed(run: StageRun, key: str) -> StageOutcome:
    """Fail the job with the exception being handled (a crash is logged with its trace)."""
    exc = sys.exc_info()[1]
    assert exc is not None
    if not isinstance(exc, VorError):
        log.exception("stage %s of %s crashed", key, run.job.id)
    run.res.jobs.fail(run.job.id, run.stage, exc)
    return StageOutcome.failed


def _work(run: StageRun, label: str | None) -> None:
    settings, stage = run.res.settings, run.stage
    _debug_delay(run)
    if label is not None and label == settings.debug_crash_label:
        os.kill(os.getpid(), signal.SIGKILL)
    replan = False
    if run.window is not None:
        windowed.STAGES[stage](run, label)
    elif stage is Stage.segment:
        segment(run, label)
    else:
        replan = STAGES[stage](run) is True
    seconds = time.monotonic() - run.began
    if stage is not Stage.publish:
        run.res.store.complete_stage(run.job.id, stage_key(stage, label, run.window), seconds)
    metrics.stage_done(run.res.store.redis, stage.value, run.job.engine, seconds)
    if replan:
        run.res.jobs.requeue(run.job.id)
        raise Replanned()


def _debug_delay(run: StageRun) -> None:
    transient = run.res.settings.transient_once().get(run.stage.value)
    if transient is not None and run.job.runs.get(stage_key(run.stage)) == 1:
        raise TransientError(
            f"injected transient failure of {run.stage.value}", retry_after=transient
        )
    delay = run.res.settings.stage_delays().get(run.stage.value, 0.0)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        run.progress(0.0)


def _prompts(job: Job, store: JobStore) -> list[ClassPrompt]:
    if job.spec.classes:
        return job.spec.classes
    if job.spec.from_job:
        return store.require(job.spec.from_job).spec.classes
    return []


def compress(run: StageRun) -> bool:
    """The working copy (and a long video's windows); True when the job must be planned
    again (a ``video_url`` turned out to need windows)."""
    job = run.job
    if "input" not in job.artifacts and job.spec.video_url:
        downloaded = submission.download_video(
            job.spec.video_url, run.out("download"), run.res.settings
        )
        run.store("input", downloaded, run.key("input" + _url_suffix(job.spec.video_url)))
    source = run.fetch("input")
    if job.input is None:
        info = submission.probe_upload(source, job.engine, run.res.settings)
        submission.check_prompts(job.spec, capabilities(job.engine, run.res.settings), info)
        run.job = run.res.store.update(job.id, lambda j: setattr(j, "input", info))
    assert run.job.input is not None
    engine = run.res.engine(job.engine)
    work = engine.prepare(source, run.job.input, run.folder("prepare"), run.progress)
    run.store("work", work, run.key("work" + work.suffix))
    replan = windowed.set_windows(run, work, engine.capabilities.window_s)
    if "mask_upload" in job.artifacts:
        width, height, _, frames = video_size(work)
        targets = next(iter(job.spec.targets.values())) if job.spec.targets else None
        mask = masks.load_user_mask(
            run.fetch("mask_upload"),
            frames=frames,
            width=width,
            height=height,
            targets=targets,
            out=run.out("mask.mkv"),
        )
        run.store("mask", mask, run.key("mask.mkv"))
        windowed.cut_mask(run, mask)
    run.progress(1.0)
    return replan


def _url_suffix(url: str) -> str:
    return submission.suffix_of(url.split("?")[0], submission.VIDEO_SUFFIXES, ".mp4")


def segment(run: StageRun, label: str | None) -> None:
    job = run.job
    prompt = next(c for c in job.spec.classes if c.label == label)
    work = run.fetch("work")
    engine = run.res.engine(job.engine)
    result = engine.segment(work, prompt, run.folder(f"segment-{label}"), run.progress)
    run.store(f"segment:{label}", result.mask_path, run.key(f"segments/{label}.mkv"))
    info = SegmentInfo(
        suggestion=result.suggestion,
        objects=[SegmentObject(id=o.id, box=o.box) for o in result.objects],
    )
    run.job = run.res.store.update(job.id, lambda j: j.segments.__setitem__(str(label), info))
    run.progress(1.0)


def mask_convert(run: StageRun) -> None:
    """Pick each class's target ids, checked against what segmentation found.

    The pixels are converted by ``merge`` in the same pass that unites the
    classes: each object-id mask is decoded once, looked up and maxed.
    """
    job = run.job
    targets = job.spec.targets or {}
    selection: dict[str, list[int] | None] = {}
    for prompt in _prompts(job, run.res.store):
        found = {o.id for o in job.segments.get(prompt.label, SegmentInfo()).objects}
        wanted = targets.get(prompt.label)
        if wanted:
            submission.check_targets(prompt.label, wanted, found, "segmentation")
        elif not found:
            raise InvalidSpec(
                f"segmentation found no object for class {prompt.label!r}: check the prompt "
                "(box, points, frame_index)",
                field="classes",
            )
        selection[prompt.label] = sorted(wanted) if wanted else None
    run.job = run.res.store.update(job.id, lambda j: setattr(j, "selection", selection))
    run.progress(1.0)


def merge(run: StageRun) -> None:
    """One 0/255 mask: the chosen ids of every class, united."""
    sources = [(run.fetch(f"segment:{label}"), ids) for label, ids in run.job.selection.items()]
    merged = masks.select_union(sources, run.out("mask.mkv"))
    run.store("mask", merged, run.key("mask.mkv"))
    windowed.cut_mask(run, merged)
    run.progress(1.0)


def erase(run: StageRun) -> None:
    job = run.job
    engine = run.res.engine(job.engine)
    erased = engine.erase(
        run.fetch("work"),
        run.fetch("mask"),
        run.folder("erase"),
        run.progress,
        dilation=_dilation(job, run.res.settings),
    )
    run.store("erased", erased, run.key("erased" + erased.suffix))
    run.progress(1.0)


_dilation = windowed.dilation


def publish(run: StageRun) -> None:
    """Composite at full resolution, store every result, then (only then) succeed."""
    job = run.job
    if job.mode == "segment":
        return publish_segments(run)
    original = run.fetch("input")
    mask = run.fetch("mask")
    result = compose.composite(
        original,
        run.fetch("erased"),
        mask,
        run.out("result.mp4"),
        dilation=_dilation(job, run.res.settings),
        progress=lambda f: run.progress(0.8 * f),
    )
    run.store("result:video_url", result, run.key("result.mp4"), "video/mp4")
    run.store("result:mask_url", mask, run.key("mask.mkv"), "video/x-matroska")
    prompts = _prompts(job, run.res.store)
    if prompts and f"segment:{prompts[0].label}" in job.artifacts:
        id_mask, frame_index = run.fetch(f"segment:{prompts[0].label}"), prompts[0].frame_index
    else:
        id_mask, frame_index = mask, 0
    png = preview.preview_png(original, id_mask, frame_index, run.out("preview.png"))
    run.store("result:preview_url", png, run.key("preview.png"), "image/png")
    _succeed(run)


def publish_segments(run: StageRun) -> None:
    job = run.job
    work = run.fetch("work")
    for index, prompt in enumerate(job.spec.classes):
        id_mask = run.fetch(f"segment:{prompt.label}")
        suffix = "" if index == 0 else f"_{prompt.label}"
        png = preview.preview_png(
            work, id_mask, prompt.frame_index, run.out(f"preview-{prompt.label}.png")
        )
        run.store(
            f"result:preview_url{suffix}", png, run.key(f"preview-{prompt.label}.png"), "image/png"
        )
        run.store(
            f"result:mask_url{suffix}",
            id_mask,
            run.key(f"segments/{prompt.label}.mkv"),
            "video/x-matroska",
        )
        overlay = preview.overlay_video(work, id_mask, run.out(f"overlay-{prompt.label}.mp4"))
        run.store(
            f"result:overlay_url{suffix}",
            overlay,
            run.key(f"overlay-{prompt.label}.mp4"),
            "video/mp4",
        )
        cutout_ids = job.spec.options.cutout
        if cutout_ids:
            mp4, webm = preview.cutout(
                work,
                id_mask,
                cutout_ids,
                run.out(f"cutout-{prompt.label}.mp4"),
                run.out(f"cutout-{prompt.label}.webm"),
            )
            run.store(
                f"result:cutout_url{suffix}",
                mp4,
                run.key(f"cutout-{prompt.label}.mp4"),
                "video/mp4",
            )
            run.store(
                f"result:cutout_alpha_url{suffix}",
                webm,
                run.key(f"cutout-{prompt.label}.webm"),
                "video/webm",
            )
        run.progress((index + 1) / len(job.spec.classes))
    _succeed(run)


def _succeed(run: StageRun) -> None:
    run.res.jobs.succeed(run.job.id, run.stage.value, time.monotonic() - run.began)


STAGES: dict[Stage, Callable[..., object]] = {
    Stage.compress: compress,
    Stage.stitch: windowed.stitch,
    Stage.blend: windowed.blend,
    Stage.segment: segment,
    Stage.mask_convert: mask_convert,
    Stage.merge: merge,
    Stage.erase: erase,
    Stage.publish: publish,
}
