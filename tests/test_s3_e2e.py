"""The S3 storage path, end to end, against a real S3-compatible server (moto)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import redis

from services.cli.embedded import EmbeddedService
from services.media.synthetic import SyntheticClip
from services.media.video import probe
from tests.conftest import api_client, service_env
from tests.helpers import accepted, wait, wait_for_stage
from tests.support.proxy import TcpProxy
from tests.support.s3 import s3_server  # noqa: F401

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def s3_service(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    svor_server: str,
    s3_server: tuple[str, str],  # noqa: F811
) -> Iterator[EmbeddedService]:
    endpoint, bucket = s3_server
    base, _, db = redis_url.rpartition("/")
    own_db = f"{base}/{int(db) + 1}"
    redis.Redis.from_url(own_db).flushdb()
    env = service_env(
        own_db, svor_server, VOR_STORAGE_URL=f"s3://{bucket}/results",
        VOR_S3_ENDPOINT_URL=endpoint,
    )  # fmt: skip
    with EmbeddedService(tmp_path_factory.mktemp("vor-s3"), env=env, io_threads=2) as svc:
        yield svc


def test_job_results_land_in_s3_under_presigned_urls(
    s3_service: EmbeddedService,
    s3_server: tuple[str, str],  # noqa: F811
    clip: SyntheticClip,
    tmp_path: Path,
) -> None:
    endpoint, bucket = s3_server
    client = api_client(s3_service)
    spec = {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    job = wait(client, accepted(client, spec, clip.path)["id"])
    assert job["status"] == "succeeded", job
    url = job["result"]["video_url"]
    assert url.startswith(endpoint) and "X-Amz-Signature=" in url and "X-Amz-Expires=604800" in url
    response = httpx.get(url)
    assert response.status_code == 200
    (tmp_path / "r.mp4").write_bytes(response.content)
    assert probe(tmp_path / "r.mp4").frames == 16

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"results/jobs/{job['id']}/result.mp4" in keys
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    left = s3.list_objects_v2(Bucket=bucket, Prefix=f"results/jobs/{job['id']}/")
    assert left.get("KeyCount", 0) == 0


@pytest.fixture(scope="module")
def s3_cut_off(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    svor_server: str,
    s3_server: tuple[str, str],  # noqa: F811
) -> Iterator[tuple[EmbeddedService, TcpProxy]]:
    """A service whose S3 traffic goes through a proxy the test can take down."""
    endpoint, bucket = s3_server
    host, _, port = endpoint.removeprefix("http://").partition(":")
    base, _, db = redis_url.rpartition("/")
    own_db = f"{base}/{int(db) + 2}"
    redis.Redis.from_url(own_db).flushdb()
    with TcpProxy(host, int(port)) as proxy:
        env = service_env(
            own_db, svor_server, VOR_STORAGE_URL=f"s3://{bucket}/cut",
            VOR_S3_ENDPOINT_URL=proxy.url, VOR_DEBUG_STAGE_DELAYS="publish:1.5",
        )  # fmt: skip
        with EmbeddedService(tmp_path_factory.mktemp("vor-s3-cut"), env=env) as svc:
            yield svc, proxy


def test_s3_outage_during_publish_is_retried(
    s3_cut_off: tuple[EmbeddedService, TcpProxy],
    s3_server: tuple[str, str],  # noqa: F811
    clip: SyntheticClip,
) -> None:
    service, proxy = s3_cut_off
    client = api_client(service)
    spec = {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    job = accepted(client, spec, clip.path)
    wait_for_stage(client, job["id"], "publish")
    proxy.down()
    outage_ends = time.monotonic() + 4
    while time.monotonic() < outage_ends:
        seen = client.get(f"/v1/jobs/{job['id']}").json()
        assert seen["status"] != "succeeded", "success before the result was stored"
        time.sleep(0.2)
    proxy.up()
    assert proxy.refused > 0, "the stage did try S3 while it was down"
    final = wait(client, job["id"], timeout=90)
    assert final["status"] == "succeeded", final
    assert final["runs"]["publish"] >= 2
    endpoint, bucket = s3_server
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.head_object(Bucket=bucket, Key=f"cut/jobs/{job['id']}/result.mp4")
