"""A real S3 API: moto in server mode (its `server` extra, a dev dependency) on 127.0.0.1 and a free
port, in this process (a thread).

kdgate reaches it as it reaches any S3-compatible store: through s3fs, with the endpoint and the
credentials in the standard AWS variables (`env()`), never in kdgate's own settings. `stop()` takes
the endpoint away (connections are refused, as with an unreachable bucket); `restart()` brings it back
on the same port with the same objects (moto keeps them in this process's memory).

Example::

    with S3Server.start() as server:
        monkeypatch.setenv(...) for each item of server.env()
        bucket = server.create_bucket()        # s3://<bucket>
        server.stop(); server.restart()
"""

from __future__ import annotations

import logging
import uuid
from types import TracebackType
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from deploy.local.processes import free_port


class S3Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self._server: ThreadedMotoServer | None = None

    @classmethod
    def start(cls) -> S3Server:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
        server = cls(free_port())
        server.restart()
        return server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point botocore (and so s3fs) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "kdgate-test",
            "AWS_SECRET_ACCESS_KEY": "kdgate-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def create_bucket(self) -> str:
        """A new empty bucket; its s3:// URL."""
        name = f"kdgate-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def client(self) -> Any:  # a boto3 S3 client (boto3 ships no type hints)
        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )

    def restart(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Server:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
