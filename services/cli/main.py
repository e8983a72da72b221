"""The ``vor`` command line: serve, api, worker, remove, demo, svor-server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services import logs
from services.cli import batch
from services.cli.client import ApiError, ProgressBar, VorClient
from services.cli.embedded import EmbeddedService, worker_args
from services.errors import NotConfigured, VorError
from services.media import masks
from services.media.video import probe
from services.models import Queue


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vor", description="Video object removal service")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_service_commands(commands)
    _add_remove_command(commands)

    demo = commands.add_parser("demo", help="the main job end to end on a clip vor makes")
    demo.add_argument("--out", type=Path, default=Path("vor-demo"))
    demo.add_argument("--engine", choices=["local", "svor"], default="local")

    commands.add_parser(
        "svor-server",
        help="an SVOR-compatible server on the local engine (vor svor-server --help)",
        add_help=False,
    )
    return parser


if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def _add_service_commands(commands: Subcommands) -> None:
    """serve, api, worker: vor's own processes."""
    serve = commands.add_parser("serve", help="API, workers and (if needed) Redis in one command")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU worker processes (default: one per core; they run niced, below the API)",
    )
    serve.add_argument("--data-dir", type=Path, default=None)

    api = commands.add_parser("api", help="the REST API alone")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--processes", type=int, default=1, help="API processes sharing the port (uvicorn workers)"
    )

    worker = commands.add_parser("worker", help="a Celery worker")
    queues = ",".join(Queue)
    worker.add_argument("--queues", default=queues, help=f"comma-separated: {queues}")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--pool", choices=["prefork", "threads", "solo"], default="prefork")
    worker.add_argument("--loglevel", default="INFO")


def _add_remove_command(commands: Subcommands) -> None:
    """remove: the SVOR reference CLI's flags."""
    remove = commands.add_parser(
        "remove",
        help="remove (or --segment) objects in a video",
        description="Remove objects from a video, with the SVOR reference CLI's flags: "
        "--classes, --targets, --boxes and --points take several values each, or repeat.",
    )
    remove.add_argument(
        "input",
        nargs="?",
        type=Path,
        help="the video; or a folder of videos, or a list file (.txt) of paths and URLs, "
        "removed as one batch into -o DIR",
    )
    remove.add_argument("--video", type=Path, help="the video (same as the positional)")
    for flag, metavar, text in (
        ("--classes", "LABEL[:TEXT[:PROMPT]]", "classes to find, by text and removal prompt"),
        ("--targets", "LABEL:ID,ID", "object ids to remove, per class (from --segment)"),
        ("--boxes", "LABEL:X,Y,W,H", "a box around one object (0..1, or pixels)"),
        ("--points", "LABEL:X,Y[:1|0]", "a point on (1) or off (0) an object (0..1, or pixels)"),
    ):
        remove.add_argument(
            flag, nargs="+", action="extend", default=[], metavar=metavar, help=text
        )
    remove.add_argument("--frame", type=int, default=0, help="annotation frame index")
    remove.add_argument(
        "--segment", action="store_true", help="segment only: print the objects, write the preview"
    )
    remove.add_argument(
        "--skip-segment",
        nargs="?",
        const=FROM_CACHE,
        default=None,
        metavar="JOB",
        help="remove --targets from the segmentation an earlier --segment cached in --tmp-dir "
        "(or from the finished segment job JOB on --server)",
    )
    remove.add_argument(
        "--tmp-dir",
        type=Path,
        default=Path("temp"),
        help="scratch and cached segment results (default: ./temp, as the reference CLI)",
    )
    remove.add_argument("--mask", type=Path, help="remove this mask (video or image) instead")
    remove.add_argument("--engine", choices=["local", "svor"], default=None)
    remove.add_argument("--dilation", type=int, default=None, help="mask dilation in pixels")
    remove.add_argument("-o", "--output", type=Path, help="where to write the result")
    remove.add_argument("--server", help="URL of a running vor service")
    remove.add_argument("--api-key", default=os.environ.get("VOR_API_KEY"))
    remove.add_argument(
        "--serve-host",
        default="127.0.0.1",
        help="a batch of local files: the address of this machine its workers fetch them "
        "from (default 127.0.0.1: the embedded service, or a --server on this machine)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["svor-server"]:
        return run_module("services.standin", argv[1:])
    args = build_parser().parse_args(argv)
    if args.command in SERVICE_COMMANDS:
        logs.setup(_log_format())
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)
    handler = COMMANDS[args.command]
    try:
        return int(handler(args) or 0)
    except (ApiError, UsageError) as exc:
        print(f"vor: {exc}", file=sys.stderr)
        return 2
    except VorError as exc:
        print(f"vor: {exc.message}", file=sys.stderr)
        return 2
    except NotConfigured as exc:
        print(f"vor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


class UsageError(RuntimeError):
    pass


SERVICE_COMMANDS = {"serve", "api", "worker"}
"""Their logs are for machines: JSON lines unless VOR_LOG_FORMAT=text."""


def _log_format() -> logs.LogFormat:
    from services.settings import get_settings

    return get_settings().log_format


SHUTDOWN_GRACE_S = 10
"""How long a stopping API lets requests finish; event streams would hold it up for good
(their clients go on by polling)."""


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "api.app:app",
        host=args.host,
        port=args.port,
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        workers=args.processes,
        http="api.limits:HeaderTimeoutProtocol",
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Become a Celery worker (``python -m workers``): the same process, so signals sent
    to ``vor worker`` reach Celery, and the command line never imports it."""
    argv = worker_args(args.queues, args.pool, args.concurrency, args.loglevel)
    return run_module("workers", argv)


def run_module(module: str, argv: list[str]) -> int:
    """Replace this process by ``python -m module argv...`` (same pid, same environment)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def _data_dir(given: Path | None) -> Path:
    from services.settings import get_settings

    return (given or get_settings().data_dir).resolve()


def cmd_serve(args: argparse.Namespace) -> int:
    service = EmbeddedService(
        _data_dir(args.data_dir),
        host=args.host,
        port=args.port,
        workers=args.workers,
        quiet=False,
    )
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        service.start()
        _print_secret(service)
        print(
            f"broker: {service.broker_url}\nredis: {service.env['VOR_REDIS_URL']}\n"
            f"api: {service.url}\nwritten to {service.served_file}; with "
            f"VOR_DATA_DIR={service.data_dir}, `celery -A workers.celery_app inspect ping` "
            "and Flower find this broker",
            flush=True,
        )
        print(
            f"vor is serving at {service.url} (docs: {service.url}/docs); Ctrl-C stops it",
            flush=True,
        )
        while True:
            time.sleep(0.5)
            for name in service.restart_dead():
                print(f"vor: {name} exited; started it again", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        service.stop()


def _print_secret(service: EmbeddedService) -> None:
    if os.environ.get("VOR_WEBHOOK_SECRET"):
        return
    import redis

    from services.jobs.store import JobStore
    from services.jobs.webhooks import generate_secret

    store = JobStore(redis.Redis.from_url(service.env["VOR_REDIS_URL"]))
    secret = store.shared_secret("webhook", generate_secret)
    print(f"VOR_WEBHOOK_SECRET is not set; webhooks are signed with {secret}", flush=True)


FROM_CACHE = "cache"
"""``--skip-segment`` without a job id: the segmentation cached in ``--tmp-dir``."""


def _pair(text: str, flag: str) -> tuple[str, str]:
    label, sep, rest = text.partition(":")
    if not sep or not label or not rest:
        hint = (
            "; it looks like the video: give it before the flags, or with --video"
            if Path(text).is_file()
            else ""
        )
        raise UsageError(f"{flag} {text!r}: expected label:values{hint}")
    return label, rest


def _floats(text: str, count: int, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not {count} comma-separated numbers") from None
    if len(values) != count:
        raise UsageError(f"{flag}: expected {count} numbers, got {len(values)}")
    return values


def targets_from_args(args: argparse.Namespace) -> dict[str, list[int]]:
    targets: dict[str, list[int]] = {}
    for text in args.targets:
        label, ids = _pair(text, "--targets")
        try:
            targets.setdefault(label, []).extend(int(i) for i in ids.split(",") if i.strip())
        except ValueError:
            raise UsageError(f"--targets {text!r}: ids are whole numbers, as 2,3") from None
    return targets


def spec_from_args(args: argparse.Namespace, size: tuple[int, int] | None) -> dict[str, Any]:
    """Turn the reference CLI's flags into a job spec (pixel coordinates are normalised).

    Without ``--engine``, classes with a text prompt go to the svor engine, the
    only one that reads text (the reference CLI is an SVOR client); others to the
    service's default.
    """
    classes: dict[str, dict[str, Any]] = {}

    def cls(label: str) -> dict[str, Any]:
        return classes.setdefault(label, {"label": label, "frame_index": args.frame})

    def norm(values: list[float]) -> list[float]:
        if all(v <= 1.0 for v in values) or size is None:
            return values
        width, height = size
        return [v / (width if i % 2 == 0 else height) for i, v in enumerate(values)]

    for text in args.classes:
        label, _, rest = text.partition(":")
        prompt_text, _, remove_prompt = rest.partition(":")
        entry = cls(label)
        if prompt_text:
            entry["text"] = prompt_text
        if remove_prompt:
            entry["remove_prompt"] = remove_prompt
    for text in args.boxes:
        label, values = _pair(text, "--boxes")
        cls(label).setdefault("boxes", []).append(norm(_floats(values, 4, "--boxes")))
    for text in args.points:
        label, rest = _pair(text, "--points")
        coords, _, flag = rest.partition(":")
        entry = cls(label)
        entry.setdefault("points", []).append(norm(_floats(coords, 2, "--points")))
        entry.setdefault("point_labels", []).append(0 if flag.strip() == "0" else 1)
    targets = targets_from_args(args)
    spec: dict[str, Any] = {"mode": "segment" if args.segment else "remove"}
    if args.engine or any("text" in c for c in classes.values()):
        spec["engine"] = args.engine or "svor"
    if args.dilation is not None:
        spec["options"] = {"mask_dilation": args.dilation}
    if targets:
        spec["targets"] = targets
    if not args.skip_segment:
        spec["classes"] = list(classes.values())
    return spec


def _video_of(args: argparse.Namespace) -> Path:
    if args.skip_segment and not (args.video or args.input) and Path(args.skip_segment).is_file():
        args.input, args.skip_segment = Path(args.skip_segment), FROM_CACHE
    video: Path | None = args.video or args.input
    if video is None:
        raise UsageError("give the video: vor remove VIDEO [flags], or --video VIDEO")
    if not video.is_file():
        raise UsageError(f"{video} is not a file")
    return video


def cmd_remove(args: argparse.Namespace) -> int:
    if batch.is_batch_input(args.video or args.input):
        return cmd_remove_batch(args, args.video or args.input)
    video = _video_of(args)
    info = probe(video)
    cache = SegmentCache(args.tmp_dir, video)
    if args.skip_segment == FROM_CACHE:
        spec, mask = _spec_from_cache(args, cache)
        return _on_service(args, lambda client: _run_remove(client, args, video, spec, mask))
    spec = spec_from_args(args, (info.width, info.height))
    if args.skip_segment:
        if not args.server:
            raise UsageError("--skip-segment JOB needs the --server that ran the job")
        spec["from_job"] = args.skip_segment
    return _on_service(
        args, lambda client: _run_remove(client, args, video, spec, args.mask, cache)
    )


def _on_service(
    args: argparse.Namespace,
    run: Callable[[VorClient], int],
    env: dict[str, str] | None = None,
) -> int:
    """``run`` against ``--server``, or a vor started for it with its data in ``--tmp-dir``."""
    if args.server:
        return run(VorClient(args.server, api_key=args.api_key))
    with EmbeddedService(args.tmp_dir.resolve() / "service", env=env) as service:
        return run(VorClient(service.url))


def cmd_remove_batch(args: argparse.Namespace, source: Path) -> int:
    """A folder or list file as one batch: one progress bar, results into ``-o DIR``."""
    if args.segment or args.skip_segment or args.mask:
        raise UsageError("a folder or list is removed as a batch: --segment, --skip-segment "
                         "and --mask take one video")  # fmt: skip
    try:
        sources = batch.sources_of(source)
    except batch.BatchInputError as exc:
        raise UsageError(str(exc)) from None
    shared = spec_from_args(args, None)
    corners = [
        xy for c in shared.get("classes", []) for xy in c.get("boxes", []) + c.get("points", [])
    ]
    in_pixels = any(v > 1.0 for xy in corners for v in xy)
    if in_pixels:
        shared.pop("classes")  # each video's own, normalised by its size
    out = args.output or source.with_name(
        f"{source.stem if source.is_file() else source.name}_removed"
    )

    def item(src: batch.Source, url: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"video_url": url, "ref": src.ref}
        if in_pixels:
            if src.path is None:
                raise UsageError(f"{src.ref}: give boxes and points as 0..1 for URLs (the size "
                                 "of a video vor has not seen is unknown here)")  # fmt: skip
            info = probe(src.path)
            entry["spec"] = {"classes": spec_from_args(args, (info.width, info.height))["classes"]}
        return entry

    def run(client: VorClient) -> int:
        with batch.served(sources, args.serve_host) as urls:
            items = [item(src, urls[src.ref]) for src in sources]
            created = client.submit_batch({"spec": shared, "items": items})
            print(f"batch {created['id']} accepted: {created['total']} videos", file=sys.stderr)
            batch.follow(client, created["id"], batch.BatchBar())
        return 1 if batch.collect(client, created["id"], out) else 0

    from services.settings import get_settings

    allowed = get_settings().allowed_url_networks or ""
    env = {"VOR_ALLOWED_URL_NETWORKS": ",".join(n for n in (allowed, "127.0.0.0/8") if n)}
    return _on_service(args, run, env)


class SegmentCache:
    """What ``--segment`` found, kept in ``--tmp-dir`` for a later ``--skip-segment``.

    As the reference CLI does: one object-id mask per class,
    ``<video stem>_mask_<label>_raw.mkv`` (pixel value = object id), beside
    ``<video stem>_segments.json`` (the objects, the engine, the job).
    """

    def __init__(self, folder: Path, video: Path) -> None:
        self.folder = folder
        self.video = video
        self.index = folder / f"{video.stem}_segments.json"

    def mask(self, label: str) -> Path:
        return self.folder / f"{self.video.stem}_mask_{label}_raw.mkv"

    def load(self) -> dict[str, Any]:
        if not self.index.exists():
            raise UsageError(
                f"nothing is cached for {self.video.name} in {self.folder}: run vor remove "
                "--segment --classes ... first (with the same --tmp-dir)"
            )
        state = dict(json.loads(self.index.read_text()))
        if state.get("video") != str(self.video.resolve()):
            raise UsageError(
                f"{self.index} holds the segmentation of {state.get('video')}, not of "
                f"{self.video.resolve()}: use another --tmp-dir"
            )
        return state

    def save(self, job: dict[str, Any], client: VorClient) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = json.loads(self.index.read_text()) if self.index.exists() else {}
        if state.get("video") != str(self.video.resolve()):
            state = {"video": str(self.video.resolve()), "segments": {}}
        for label, segment in job["segments"].items():
            # The first class's files have no suffix; every other class's end in _<label>.
            url = job["result"].get(f"mask_url_{label}") or job["result"]["mask_url"]
            client.download(url, self.mask(label))
            state["segments"][label] = {**segment, "engine": job["engine"], "job": job["id"]}
        self.index.write_text(json.dumps(state, indent=1))


def _spec_from_cache(args: argparse.Namespace, cache: SegmentCache) -> tuple[dict[str, Any], Path]:
    """The spec and the 0/255 mask of a ``--skip-segment`` run: the chosen ids of each
    cached class, united in one pass, as the reference CLI's convert and merge steps."""
    targets = targets_from_args(args)
    if not targets:
        raise UsageError("--skip-segment needs --targets label:ids (the ids --segment printed)")
    segments = cache.load()["segments"]
    sources: list[tuple[Path, list[int]]] = []
    for label, ids in targets.items():
        segment = segments.get(label)
        if segment is None:
            raise UsageError(
                f"--targets {label}: no class {label!r} was segmented for {cache.video.name} "
                f"(cached: {', '.join(segments) or 'none'})"
            )
        found = {int(o["id"]) for o in segment["objects"]}
        unknown = sorted(set(ids) - found)
        if unknown:
            raise UsageError(
                f"--targets {label}: id {', '.join(map(str, unknown))} was not found; "
                f"segmentation found {sorted(found)}"
            )
        sources.append((cache.mask(label), ids))
    merged = masks.select_union(sources, cache.folder / f"{cache.video.stem}_mask_merged.mkv")
    engines = {segments[label]["engine"] for label in targets}
    spec: dict[str, Any] = {"mode": "remove", "engine": args.engine or sorted(engines)[0]}
    if args.dilation is not None:
        spec["options"] = {"mask_dilation": args.dilation}
    return spec, merged


def _run_remove(
    client: VorClient,
    args: argparse.Namespace,
    video: Path,
    spec: dict[str, Any],
    mask: Path | None,
    cache: SegmentCache | None = None,
) -> int:
    upload = None if spec.get("from_job") else video
    job = client.submit(spec, upload, mask=mask)
    print(f"job {job['id']} accepted", file=sys.stderr)
    job = client.wait(job["id"], on_update=ProgressBar())
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        print(
            f"vor: job {job['status']}: {error.get('message')} (code {error.get('code')}, "
            f"stage {error.get('stage')})",
            file=sys.stderr,
        )
        return 1
    if args.segment:
        for label, segment in job["segments"].items():
            print(f"{label}: {segment.get('suggestion', '')}")
            for obj in segment["objects"]:
                box = ", ".join(f"{v:.3f}" for v in obj["box"])
                print(f"  id {obj['id']}: box [{box}]")
        preview = args.output or video.with_name(f"{video.stem}_preview.png")
        client.download(job["result"]["preview_url"], preview)
        if cache is not None:
            cache.save(job, client)
        print(
            f"preview: {preview}\nsegment job: {job['id']}; cached in {args.tmp_dir}: remove with "
            f'--skip-segment --targets "{next(iter(job["segments"]), "label")}:<id>,..."'
        )
        return 0
    out = args.output or video.with_name(f"{video.stem}_removed.mp4")
    client.download(job["result"]["video_url"], out)
    print(f"result: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.media import preview, synthetic

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    clip = synthetic.make_clip(
        out / "input.mp4", width=320, height=192, frames=36, fps=12, audio=True
    )
    print(f"demo clip: {clip.path} (a disc crosses a textured scene; 36 frames, 320x192)")
    spec = {
        "mode": "remove",
        "engine": args.engine,
        "classes": [{"label": "disc", "boxes": [clip.box(0)], "frame_index": 0}],
    }
    with EmbeddedService(out / "service") as service:
        ready = time.monotonic()
        print(f"embedded vor ready at {service.url} in {ready - started:.1f} s", file=sys.stderr)
        client = VorClient(service.url)
        job = client.submit(spec, clip.path)
        job = client.wait(job["id"], on_update=ProgressBar())
        if job["status"] != "succeeded":
            print(f"vor: demo job failed: {job.get('error')}", file=sys.stderr)
            return 1
        result = client.download(job["result"]["video_url"], out / "result.mp4")
        client.download(job["result"]["mask_url"], out / "mask.mkv")
    picture = preview.before_after_png(
        clip.path, result, len(clip.masks) // 2, out / "before_after.png"
    )
    timings = job.get("timings") or {}
    print("stage timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    print(
        f"result: {result}\nbefore/after: {picture}\n"
        f"total {time.monotonic() - started:.1f} s (job {job['id']})"
    )
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "api": cmd_api,
    "worker": cmd_worker,
    "remove": cmd_remove,
    "demo": cmd_demo,
}


if __name__ == "__main__":
    sys.exit(main())
