"""All of vor's configuration, read once from the environment.

Nothing else in the project reads ``os.environ``: ask ``get_settings()``.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SVOR_BASE_URL = "https://mipixgen-pre.ai.mioffice.cn"


class TenantLimits(BaseModel):
    """One tenant's own limits, over ``VOR_TENANT_MAX_RUNNING`` / ``VOR_TENANT_MAX_QUEUED``."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(default=None, ge=0)
    max_queued: int | None = Field(default=None, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOR_", extra="ignore")

    data_dir: Path = Path(".vor")
    redis_url: str | None = None
    broker_url: str | None = None
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    url_expiry_s: int = 7 * 24 * 3600

    engine: str = "local"
    dispatcher: str = "workers.dispatch:CeleryDispatcher"
    """``module:factory`` of the ``Dispatcher`` that queues stages and webhooks; the
    API imports it by this name at start-up (``services.runtime.get_dispatcher``)."""
    dispatch_capacity: int = Field(default=0, ge=0)
    """Jobs released to the workers at once per pool (the queue of the job's engine
    stages); 0: the slots the live workers of that queue report."""
    tenant_max_running: int = Field(default=0, ge=0)
    """A tenant's jobs released to the workers at once (0: no limit but the capacity)."""
    tenant_max_queued: int = Field(default=10_000, ge=0)
    """A tenant's jobs waiting for a slot; one more submission answers 429."""
    tenant_limits: dict[str, TenantLimits] = Field(default_factory=dict)
    """Per-tenant overrides, JSON: ``{"acme": {"max_running": 2, "max_queued": 100}}``."""
    svor_base_url: str = DEFAULT_SVOR_BASE_URL
    svor_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("SVOR_API_KEY", "VOR_SVOR_API_KEY")
    )
    svor_poll_deadline_s: float = 600.0
    svor_max_retries: int = 5
    svor_timeout_s: float = 60.0
    svor_max_upload_bytes: int = 1000 * 1024
    svor_max_duration_s: float = 3.0
    """The longest clip one SVOR call takes; longer videos go as windows of this length."""
    local_window_s: float = Field(default=10.0, ge=0)
    """The local engine runs a video longer than this as windows of it (0: always whole)."""
    svor_rate_limit_per_s: float = Field(default=5.0, ge=0)
    """Calls per second to SVOR from all workers together (0 = no limit)."""
    svor_rate_burst: float | None = Field(default=None, ge=1)
    """Calls that may go at once after a quiet spell; default: one second's worth."""
    svor_max_concurrency: int = Field(default=8, ge=0)
    """SVOR calls in flight from all workers together (0 = no limit)."""

    api_keys: str | None = None
    webhook_secret: str | None = None
    allowed_url_networks: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    signing_key: str | None = None
    log_format: Literal["json", "text"] = "json"

    max_upload_bytes: int = Field(default=500 * 1024 * 1024, ge=1)
    """The files of one multipart submission (video and mask together)."""
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    """A JSON body, and the spec part of a multipart submission."""
    max_batch_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """The JSON body of ``POST /v1/batches`` (10,000 items with specs of their own)."""
    header_timeout_s: float = Field(default=15.0, gt=0)
    """A request's line and headers must arrive within this long."""
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    """A request body must bring 64 KiB (or its end) within every this long."""
    max_duration_s: float = 600.0
    max_width: int = 3840
    max_height: int = 2160
    max_frames: int = 36_000
    """Ten minutes at 60 fps."""
    default_mask_dilation: int = 4

    visibility_timeout_s: int = 3 * 3600
    stage_time_limit_s: int = 3600

    webhook_max_attempts: int = 6
    webhook_backoff_base_s: float = 5.0
    webhook_timeout_s: float = 15.0
    stage_max_retries: int = Field(default=5, ge=0)
    stage_max_runs: int = 3
    heartbeat_s: float = 5.0
    soft_shutdown_s: float = 30.0
    stall_timeout_s: float = 60.0
    sweep_interval_s: float = 10.0
    batch_chunk: int = Field(default=100, ge=1, le=1000)
    """Items of a batch made into jobs per step (one ``vor.batch`` task)."""
    debug_stage_delays: str | None = None
    debug_crash_label: str | None = None
    """``VOR_DEBUG_CRASH_LABEL=poison``: segmenting a class of that label kills its worker
    process outright, as an out-of-memory kill would (fault injection for tests)."""
    debug_transient_once: str | None = None
    """``VOR_DEBUG_TRANSIENT_ONCE=erase:8``: the first run of the stage fails with a
    transient error asking to retry after 8 s (fault injection for tests)."""

    def stage_delays(self) -> dict[str, float]:
        """``VOR_DEBUG_STAGE_DELAYS=erase:3,publish:1``: seconds to idle at a stage's start
        (``batch``: at each step of a batch's expansion).

        For fault-injection tests and demos only: it widens the window in which a
        test kills a worker or an upstream mid-stage.
        """
        return seconds_by_stage(self.debug_stage_delays)

    def transient_once(self) -> dict[str, float]:
        return seconds_by_stage(self.debug_transient_once)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in {"local", "svor"}:
            raise ValueError("VOR_ENGINE must be 'local' or 'svor'")
        return value

    @property
    def storage(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'storage').resolve()}"

    @property
    def work_dir(self) -> Path:
        return (self.data_dir / "work").resolve()

    def tenants_by_key(self) -> dict[str, str]:
        """``VOR_API_KEYS`` as ``{key: tenant}``; empty means auth is off."""
        pairs: dict[str, str] = {}
        for item in (self.api_keys or "").split(","):
            item = item.strip()
            if not item:
                continue
            tenant, sep, key = item.partition(":")
            if not sep or not tenant or not key:
                raise ValueError(f"VOR_API_KEYS entry {item!r} is not 'tenant:key'")
            pairs[key] = tenant
        return pairs

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [
            ipaddress.ip_network(cidr.strip(), strict=False)
            for cidr in (self.allowed_url_networks or "").split(",")
            if cidr.strip()
        ]


def seconds_by_stage(text: str | None) -> dict[str, float]:
    """``"erase:3,publish:1"`` as ``{"erase": 3.0, "publish": 1.0}``."""
    pairs: dict[str, float] = {}
    for item in (text or "").split(","):
        name, _, seconds = item.strip().partition(":")
        if name and seconds:
            pairs[name] = float(seconds)
    return pairs


@lru_cache
def get_settings() -> Settings:
    return Settings()


SERVED_FILE = "vor.json"
"""What a running ``vor serve`` writes into its data directory: its API, Redis and broker URLs."""


def served_file(data_dir: Path) -> Path:
    return data_dir.resolve() / SERVED_FILE


def served(settings: Settings) -> dict[str, str]:
    """The URLs a ``vor serve`` on ``VOR_DATA_DIR`` wrote down; empty when none runs there.

    This is how a process started by hand (``celery -A workers.celery_app inspect
    ping``, Flower, one more ``vor worker``) finds the embedded Redis, whose port
    is picked at random.
    """
    try:
        data = json.loads(served_file(settings.data_dir).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
