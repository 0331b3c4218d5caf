"""A model version's files between the registry's store and this machine: their sha256, publishing them
to a remote store (the manifest last), and pulling them into the local cache (each file verified).

A version on a remote store is ``<base>/<name>/<version>/`` with its ``manifest.json``; a reader lists
manifests only, so a version whose upload is still running (or died) is never seen. A pull downloads
into a hidden folder beside the cache entry, checks every file against the manifest's ``sha256`` and
renames the folder into place: a cache entry that exists is whole and verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import fsspec

MANIFEST = "manifest.json"
CLAIM = ".claim"  # on a remote store: the object whose create-only PUT makes a version one writer's
PULL_PREFIX = ".pull-"


class RegistryError(Exception):
    """A model reference that cannot be resolved or a manifest that does not validate."""


class MissingObject(RegistryError):
    """A file a manifest lists is not in the store."""


class CorruptObject(RegistryError):
    """A file in the store does not match the sha256 its manifest gives."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file under ``folder`` but its manifest, by relative POSIX path."""
    return {
        path.relative_to(folder).as_posix(): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST
    }


def publish(fs: fsspec.AbstractFileSystem, dest: str, folder: Path, files: list[str], ref: str) -> None:
    """Claims ``dest`` for this writer, uploads ``files`` of ``folder`` there, then its manifest: the
    version appears (to a reader listing manifests) only once every file is there, and all its files
    come from one writer.

    The claim is a create-only PUT of ``dest/.claim`` (S3's ``If-None-Match: *``): of several writers
    racing for one version exactly one wins, and the others get a RegistryError before uploading
    anything. Without it both would upload, and the version would hold one writer's files under the
    other's manifest. A writer that dies mid-upload leaves its claim, so the version stays unused:
    `Registry.next_version` counts claims."""
    claim = f"{dest}/{CLAIM}"
    try:
        fs.pipe_file(claim, f"{uuid.uuid4().hex}\n".encode(), mode="create")
    except OSError as exc:  # FileExistsError, or s3fs's OSError for HTTP 412
        fs.invalidate_cache(dest)
        if not fs.exists(claim):
            raise
        raise RegistryError(f"{ref} is being registered by another writer: register the next one") from exc
    for rel in files:
        fs.put_file(str(folder / rel), f"{dest}/{rel}")
    fs.put_file(str(folder / MANIFEST), f"{dest}/{MANIFEST}")


def pull(
    fs: fsspec.AbstractFileSystem,
    src: str,
    ref: str,
    digests: dict[str, str],
    manifest: bytes,
    target: Path,
    where: str,
) -> Path:
    """``target``, holding the version at ``src`` (``where`` names it in errors): downloaded and verified
    unless an earlier pull already put it there. Two processes pulling at once each download; the first
    rename wins and the other's copy is discarded."""
    if (target / MANIFEST).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{PULL_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()  # a version may have no files (a fault wrapper), but always has its manifest
        for rel, digest in sorted(digests.items()):
            local = tmp / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"{src}/{rel}", str(local))
            except FileNotFoundError as exc:
                raise MissingObject(f"{ref}: object {where}/{rel} is missing from the registry") from exc
            got = sha256_of(local)
            if got != digest:
                raise CorruptObject(
                    f"{ref}: object {where}/{rel} does not match its manifest "
                    f"(sha256 {got[:12]}..., expected {digest[:12]}...): refusing to load it"
                )
        (tmp / MANIFEST).write_bytes(manifest)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MANIFEST).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process's pull won
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
