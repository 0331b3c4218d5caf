"""Publishing a local registry's models to a shared registry URL (s3://...), as a build job would: the
replicas then pull them, each into its own cache, checked against the manifests' sha256."""

from __future__ import annotations

import shutil
from pathlib import Path

from distill.registry import MANIFEST, Registry


def publish_all(source: Path, builder: Path, url: str) -> Registry:
    """Every model of the local registry in the state dir `source`, published to `url` from the state
    dir `builder` (its staging area); the registry on `url` is returned, for publishing more.

    Example::

        remote = publish_all(Path(".kdgate"), tmp / "builder", "s3://bucket/registry")
        [m.ref for m in remote.list()]  # ['classify-student@1', 'classify-teacher@1']
    """
    local, remote = Registry(source), Registry(builder, url)
    for manifest in local.list():
        copy_model(local, manifest.ref, remote, manifest.name)
    return remote


def copy_model(source: Registry, ref: str, target: Registry, name: str, version: int | None = None) -> str:
    """The files of `ref` in `source`, committed to `target` as `name` (at `version`, default the same
    version as `ref`'s); the new ref. Files are copied as they are: the manifest says what they hold."""
    manifest = source.get(ref)
    with target.stage(name) as staging:
        shutil.copytree(source.path(ref), staging.path, dirs_exist_ok=True)
        (staging.path / MANIFEST).unlink()
        update = {"name": name, "version": manifest.version if version is None else version}
        return staging.commit(manifest.model_copy(update=update)).ref
