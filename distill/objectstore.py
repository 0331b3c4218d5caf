"""Where the registry and the shadow log keep their files: an fsspec URL, resolved in one place.

A local path (the embedded default), ``s3://bucket/prefix`` on any S3-compatible store (through s3fs),
or any other fsspec URL. S3 credentials and the endpoint come from the standard AWS variables and
profile (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ...), read by botocore itself:
kdgate never sees them, so it cannot log them.

>>> fs, path = filesystem("/var/lib/kdgate/models")
>>> type(fs).__name__, path
('LocalFileSystem', '/var/lib/kdgate/models')
>>> is_local(fs)
True
"""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

# botocore's defaults (60 s timeouts, 5 attempts) keep a writer on an unreachable store for ~8 s per
# call; a shadow flush or a model pull should fail within a few seconds, be counted, and try again later.
S3_OPTIONS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 5,
        "read_timeout": 30,
        "retries": {"max_attempts": 3, "mode": "standard"},
    }
}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``url`` and the path on it (no trailing slash). fsspec caches the instance,
    so every caller of one URL shares its connections."""
    protocol = fsspec.core.split_protocol(url)[0]
    options = S3_OPTIONS if protocol in ("s3", "s3a") else {}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path.rstrip("/") or path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether the files are on this machine's disk (no copy needed to load them)."""
    return isinstance(fs, LocalFileSystem)


def display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` as a URL for messages (``s3://bucket/key``): a URL never carries credentials here.

    >>> display(LocalFileSystem(), "/tmp/x")
    '/tmp/x'
    """
    return fs.unstrip_protocol(path) if not is_local(fs) else path
