"""An S3 API for the benches: `moto_server` in a process of its own (so its Python does not share this
one's GIL, as a real store would not), with the standard AWS variables pointing boto3 and s3fs at it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import httpx

from loadtests._server import free_port


@contextmanager
def moto_bucket(bucket: str) -> Iterator[str]:
    """`moto_server` on a free port with `bucket` created; yields its s3:// URL, stops the server after."""
    port = free_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    program = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(program), "-H", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}"
    finally:
        proc.terminate()
        proc.wait(10)
