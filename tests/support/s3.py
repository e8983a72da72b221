"""moto's S3 in server mode on loopback: a real HTTP endpoint, as MinIO would be.

``start_s3_server`` only starts the server. boto3 still wants credentials, and
the caller must make sure they are fake ones (``AWS_ACCESS_KEY_ID`` etc. in the
environment) so no request can be signed with real keys; the ``s3_server``
fixture does that. To use the fixture from another test module, import it:

    from tests.support.s3 import s3_server  # noqa: F401
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_s3_server() -> tuple[str, Callable[[], None]]:
    """Start moto on 127.0.0.1 on a free port; return its endpoint URL and a stop function."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


@pytest.fixture(scope="session")
def s3_server() -> Iterator[tuple[str, str]]:
    """``(endpoint_url, bucket)``: a moto S3 server with one empty bucket, fake credentials
    set in ``os.environ`` for the session and put back afterwards."""
    saved = {name: os.environ.get(name) for name in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    endpoint, stop = start_s3_server()
    try:
        import boto3

        bucket = f"vor-test-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        yield endpoint, bucket
    finally:
        stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
