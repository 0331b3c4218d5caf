"""The registry on a real S3 API (moto in server mode): publish from one state dir, pull into another's
cache, every file checked against the manifest's sha256. The files are plain bytes: what a model holds
is not the registry's business."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deploy.local.s3 import S3Server
from deploy.local.seed import copy_model
from distill.faults import register_fault_model
from distill.modelfiles import CLAIM, MANIFEST
from distill.registry import (
    CorruptObject,
    FaultSpec,
    Lineage,
    Manifest,
    MissingObject,
    Registry,
    RegistryError,
    Role,
)
from tests.support import TEACHER, kdgate_in_process

FILES = ["model.onnx", "tokenizer/tokenizer.json"]


def manifest(version: int = 1) -> Manifest:
    return Manifest(
        name="classify-student",
        version=version,
        task="classify",
        role=Role.STUDENT,
        format="onnx",
        files=FILES,
        labels=["negative", "positive"],
        tokenizer="tokenizer/tokenizer.json",
    )


def publish(registry: Registry, version: int = 1) -> Manifest:
    with registry.stage("classify-student") as staging:
        for rel in FILES:
            (staging.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging.path / rel).write_bytes(f"v{version} {rel}".encode() * 1000)
        return staging.commit(manifest(version))


def object_key(bucket: str, prefix: str, ref: str, rel: str) -> tuple[str, str]:
    name, version = ref.split("@")
    return bucket.removeprefix("s3://"), f"{prefix}/{name}/{version}/{rel}"


def test_a_model_published_to_s3_is_pulled_verified_into_another_state_dirs_cache(
    s3_bucket: str, tmp_path: Path
) -> None:
    url = f"{s3_bucket}/registry"
    publisher = Registry(tmp_path / "builder", url)
    published = publish(publisher, 1)
    assert set(published.sha256) == set(FILES)

    replica = Registry(tmp_path / "replica", url)
    assert [m.ref for m in replica.list()] == ["classify-student@1"]
    folder = replica.path("classify-student@1")
    assert folder == tmp_path / "replica" / "cache" / "models" / "classify-student" / "1"
    for rel in FILES:
        assert (folder / rel).read_bytes() == (publisher.path(published.ref) / rel).read_bytes()
    assert Manifest.model_validate_json((folder / MANIFEST).read_text()) == published
    assert replica.next_version("classify-student") == 2


def test_a_version_whose_manifest_is_not_uploaded_yet_is_not_listed(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    url = f"{s3_bucket}/registry"
    publish(Registry(tmp_path / "builder", url), 1)
    bucket, key = object_key(s3_bucket, "registry", "classify-student@2", "model.onnx")
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"half of a model")
    assert [m.ref for m in Registry(tmp_path / "replica", url).list()] == ["classify-student@1"]


def test_a_version_another_writer_claimed_is_refused_before_any_upload_and_skipped_by_the_next(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    """A writer mid-upload (or one that died there) holds its version's claim: a second writer of that
    version is refused before it uploads anything, and the next version number passes over it."""
    url = f"{s3_bucket}/registry"
    publish(Registry(tmp_path / "builder", url), 1)
    bucket, key = object_key(s3_bucket, "registry", "classify-student@2", "model.onnx")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key=key.replace("model.onnx", CLAIM), Body=b"the other writer")
    client.put_object(Bucket=bucket, Key=key, Body=b"the other writer's half of a model")
    second = Registry(tmp_path / "second", url)
    with pytest.raises(RegistryError, match="classify-student@2 is being registered by another writer"):
        publish(second, 2)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"the other writer's half of a model"
    assert second.next_version("classify-student") == 3
    assert publish(second, 3).ref == "classify-student@3"


def test_of_two_writers_racing_for_one_version_exactly_one_registers_it_whole(
    s3_bucket: str, tmp_path: Path
) -> None:
    url = f"{s3_bucket}/registry"
    start = threading.Barrier(2)

    def write(writer: str) -> Manifest | RegistryError:
        registry = Registry(tmp_path / writer, url)
        with registry.stage("classify-student") as staging:
            for rel in FILES:
                (staging.path / rel).parent.mkdir(parents=True, exist_ok=True)
                (staging.path / rel).write_bytes(f"{writer} {rel}".encode() * 1000)
            start.wait()
            try:
                return staging.commit(manifest(1))
            except RegistryError as refused:
                return refused

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(write, ["a", "b"]))
    won = [r for r in results if isinstance(r, Manifest)]
    assert len(won) == 1 and sum(isinstance(r, RegistryError) for r in results) == 1, results
    reader = Registry(tmp_path / "reader", url)
    folder = reader.path("classify-student@1")  # every file checked against the winner's manifest
    writers = {(folder / rel).read_bytes().split(b" ")[0] for rel in FILES}
    assert len(writers) == 1 and writers <= {b"a", b"b"}, writers


def test_a_corrupted_object_is_refused_by_name_and_nothing_is_cached(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    url = f"{s3_bucket}/registry"
    publish(Registry(tmp_path / "builder", url), 1)
    bucket, key = object_key(s3_bucket, "registry", "classify-student@1", "model.onnx")
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"tampered")

    replica = Registry(tmp_path / "replica", url)
    with pytest.raises(CorruptObject, match=rf"{s3_bucket}/{key} does not match its manifest"):
        replica.path("classify-student@1")
    cached = tmp_path / "replica" / "cache" / "models" / "classify-student"
    assert list(cached.iterdir()) == []  # no entry, no half-pulled folder


def test_a_missing_object_is_named_and_a_pulled_version_keeps_loading(
    s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    url = f"{s3_bucket}/registry"
    builder = Registry(tmp_path / "builder", url)
    publish(builder, 1)
    replica = Registry(tmp_path / "replica", url)
    replica.path("classify-student@1")
    publish(builder, 2)
    bucket, key = object_key(s3_bucket, "registry", "classify-student@2", "tokenizer/tokenizer.json")
    s3_server.client().delete_object(Bucket=bucket, Key=key)

    with pytest.raises(MissingObject, match=rf"classify-student@2: object {s3_bucket}/{key} is missing"):
        replica.path("classify-student@2")
    assert (replica.path("classify-student@1") / "model.onnx").exists()


def test_a_version_without_files_is_pulled_as_its_manifest(s3_bucket: str, tmp_path: Path) -> None:
    """A fault wrapper is a manifest only (it names the model it wraps): pulled, it is a folder with it."""
    url = f"{s3_bucket}/registry"
    builder = Registry(tmp_path / "builder", url)
    publish(builder, 1)
    faulty = register_fault_model(builder, FaultSpec(wraps="classify-student@1", error_rate=1.0))
    folder = Registry(tmp_path / "replica", url).path(faulty.ref)
    assert Manifest.model_validate_json((folder / MANIFEST).read_text()) == faulty


def test_the_cli_builds_imports_and_lists_models_in_the_s3_registry(
    s3_bucket: str, state_dir: Path, tmp_path: Path
) -> None:
    """`--registry-url` (or KDGATE_REGISTRY_URL) on the commands that write models: a student distilled
    from the bucket's teacher and a fault wrapper land in the bucket, where another machine lists them."""
    url = f"{s3_bucket}/registry"
    copy_model(Registry(state_dir), TEACHER, Registry(tmp_path / "seed", url), "classify-teacher")
    user = ("--state-dir", str(tmp_path / "user"), "--registry-url", url)

    few = {"student_examples": 64, "eval_examples": 50, "threads": 2}  # two batches: a quick student
    built = kdgate_in_process("distill", "--layers", "1", "--recipe", json.dumps(few), *user)
    assert built.returncode == 0, built.stdout + built.stderr
    faulty = kdgate_in_process("models", "fault", "classify-student@1", "--error-rate", "1", *user)
    assert faulty.returncode == 0, faulty.stdout + faulty.stderr

    elsewhere = Registry(tmp_path / "another-machine", url)
    refs = {m.ref for m in elsewhere.list()}
    assert refs == {"classify-teacher@1", "classify-student@1", "classify-student-faulty@1"}
    student = elsewhere.get("classify-student@1")
    assert student.lineage.teacher == TEACHER and student.lineage.recipe["student_layers"] == 1
    assert all((elsewhere.path(student.ref) / rel).is_file() for rel in student.files)
    assert Registry(tmp_path / "user").list() == []  # nothing went to the local default registry


def test_a_named_tasks_redistillation_finds_the_task_in_the_s3_registry(
    s3_bucket: str, tmp_path: Path
) -> None:
    """`kdgate distill --from-shadow --task NAME --registry-url …` on a machine whose own state dir holds
    nothing: the task is known from the bucket's models, so the run goes on to the task's shadow log
    (empty here: refused for its size, exit 1) instead of failing on an unknown task (exit 2)."""
    url = f"{s3_bucket}/registry"
    registry = Registry(tmp_path / "seed", url)
    for name, role in (("topics-teacher", Role.TEACHER), ("topics-student", Role.STUDENT)):
        lineage = {"teacher": "topics-teacher@1"} if role is Role.STUDENT else {}
        with registry.stage(name) as staging:
            (staging.path / "model.onnx").write_bytes(b"never read: the run stops at its window")
            staging.commit(
                manifest()
                .model_copy(update={"name": name, "task": "topics", "role": role, "files": ["model.onnx"]})
                .model_copy(update={"lineage": Lineage(**lineage)})
            )
    done = kdgate_in_process(
        *("distill", "--from-shadow", "--task", "topics", "--registry-url", url),
        *("--state-dir", str(tmp_path / "elsewhere"), "--shadow-root", str(tmp_path / "shadow")),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "only 0 usable" in done.stdout, done.stdout
