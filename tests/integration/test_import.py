"""Importing a user's models (issue: bring your own teacher). /classify: a foreign Hugging Face classifier
made the way a user makes one (MiniLM from its package + a 5-topic head, `save_pretrained`) and its ONNX
export; /generate: SmolLM2 as a plain folder and as the packaged GGUF, and a student that shares its
tokenizer. Every refusal leaves nothing in the registry."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from distill.classify.importer import SAMPLE_TEXTS, import_classifier
from distill.classify.io import base_encoder_dir
from distill.classify.runner import load_runner
from distill.generate.importer import import_causal_lm
from distill.generate.runner import load_lm
from distill.generate.teacher import gguf_path
from distill.importing import ImportRefused, sha256_of
from distill.registry import Manifest, Registry, Role
from tests.support import TOPICS, kdgate_in_process, save_foreign_classifier


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_foreign_classifier(tmp_path_factory.mktemp("foreign") / "minilm-topics")


def reference_logits(folder: Path, texts: list[str]) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        return model(**batch).logits.numpy()


def test_a_hugging_face_classifier_is_imported_exported_and_served_as_it_computes(
    foreign: Path, tmp_path: Path
) -> None:
    registry = Registry(tmp_path)
    manifest = import_classifier(registry, foreign, role=Role.TEACHER)
    assert manifest.ref == "classify-teacher-minilm-topics@1"
    assert manifest.labels == TOPICS and manifest.format == "onnx" and manifest.role is Role.TEACHER
    assert manifest.metrics["onnx_parity_max_abs_diff"] < 1e-4
    assert manifest.metrics["size_mb"] > 1 and manifest.metrics["p50_ms"] > 0
    weights = hashlib.sha256((foreign / "model.safetensors").read_bytes()).hexdigest()
    assert manifest.lineage.data["sha256"]["model.safetensors"] == weights
    assert manifest.lineage.data["source"] == str(foreign.resolve())
    served = load_runner(registry, manifest.ref).predict_logits(SAMPLE_TEXTS)
    np.testing.assert_allclose(served, reference_logits(foreign, SAMPLE_TEXTS), atol=1e-4)


def test_an_onnx_export_with_its_tokenizer_and_labels_is_imported(foreign: Path, tmp_path: Path) -> None:
    """A user's own export, with token_type_ids as a third input (as BERT exports usually have)."""
    export = tmp_path / "export"
    export.mkdir()
    shutil.copyfile(foreign / "tokenizer.json", export / "tokenizer.json")
    model = AutoModelForSequenceClassification.from_pretrained(foreign, local_files_only=True).eval()
    ids = torch.tensor([[101, 2307, 2154, 102]])
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        str(export / "topics.onnx"),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["scores"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
        opset_version=17,
        dynamo=False,
    )
    registry = Registry(tmp_path / "state")
    manifest = import_classifier(registry, export / "topics.onnx", role=Role.TEACHER, labels=TOPICS)
    assert manifest.labels == TOPICS and manifest.lineage.recipe["from"] == "onnx"
    served = load_runner(registry, manifest.ref).predict_logits(SAMPLE_TEXTS)
    np.testing.assert_allclose(served, reference_logits(foreign, SAMPLE_TEXTS), atol=1e-4)


def copy_of(folder: Path, where: Path) -> Path:
    target = where / folder.name
    shutil.copytree(folder, target)
    return target


def refused(registry: Registry, source: Path, **kwargs: object) -> str:
    before = registry.list()
    with pytest.raises(ImportRefused) as caught:
        import_classifier(registry, source, **{"role": Role.TEACHER, **kwargs})  # type: ignore[arg-type]
    assert registry.list() == before
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]  # no staging left behind
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_imports_are_refused_with_what_to_do_and_register_nothing(foreign: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "state")

    assert "no sequence-classification head" in refused(registry, base_encoder_dir())

    no_tokenizer = copy_of(foreign, tmp_path / "a")
    (no_tokenizer / "tokenizer.json").unlink()
    assert "missing tokenizer" in refused(registry, no_tokenizer)

    assert "3 labels given but the head has 5 outputs" in refused(registry, foreign, labels=["a", "b", "c"])

    truncated = copy_of(foreign, tmp_path / "b")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "truncated or corrupt" in refused(registry, truncated)

    causal = tmp_path / "tiny-llama"
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(causal)
    assert "causal language model" in refused(registry, causal)

    assert "does not exist" in refused(registry, tmp_path / "nowhere")
    junk = copy_of(foreign, tmp_path / "c") / "model.onnx"
    junk.write_bytes(b"not a protobuf")
    assert "no label names" in refused(registry, junk)
    assert "truncated or corrupt" in refused(registry, junk, labels=TOPICS)


def test_a_student_must_predict_its_teachers_labels(foreign: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    import_classifier(registry, foreign, role=Role.TEACHER, labels=[t.upper() for t in TOPICS])
    message = refused(registry, foreign, role=Role.STUDENT)
    assert "differ from its teacher" in message
    assert "differ from those of task 'classify'" in refused(registry, foreign, role=Role.TEACHER)
    assert [m.role for m in registry.list()] == [Role.TEACHER]


def test_a_task_name_must_be_one_and_keep_its_kind(foreign: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "state")
    assert "not a task name" in refused(registry, foreign, task="Topics!")
    assert "is the bundled generate task" in refused(registry, foreign, task="generate")
    with registry.stage("chat-teacher") as staging:  # what a generate import into task `chat` registers
        staging.commit(
            Manifest(
                name="chat-teacher",
                version=1,
                task="chat",
                task_kind="generate",
                role="teacher",
                format="torch",
            )
        )
    assert "task 'chat' is a generate task" in refused(registry, foreign, task="chat")


# --- /generate: causal LMs --------------------------------------------------------------------------------


def tiny_causal_lm(folder: Path, tokenizer_from: Path | None) -> Path:
    """A random 1-layer Llama saved as a user would, with the tokenizer of `tokenizer_from` (if any)."""
    config = LlamaConfig(
        vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    if tokenizer_from is not None:
        AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True).save_pretrained(folder)
    return folder


def test_causal_lms_are_imported_from_a_folder_and_from_gguf_and_a_student_shares_the_tokenizer(
    generate_built_state: Path, tmp_path: Path
) -> None:
    built = Registry(generate_built_state)
    registry = Registry(tmp_path / "state")
    teacher = import_causal_lm(registry, built.path("generate-teacher@1"), role=Role.TEACHER, name="smollm2")
    assert teacher.ref == "smollm2@1" and teacher.format == "torch" and "model.safetensors" in teacher.files
    assert teacher.metrics["p50_ms_per_token"] > 0 and teacher.metrics["size_mb"] > 100
    lm = load_lm(registry, teacher.ref)
    assert lm.decode_text(lm.encode("Hello there")) == "Hello there"

    student = import_causal_lm(registry, built.path("generate-student@1"), role=Role.STUDENT)
    assert student.lineage.teacher == teacher.ref

    other_vocab = tiny_causal_lm(tmp_path / "bert-vocab-llama", tokenizer_from=base_encoder_dir())
    with pytest.raises(ImportRefused, match="tokenizer differs from its teacher smollm2@1"):
        import_causal_lm(registry, other_vocab, role=Role.STUDENT)

    from_gguf = import_causal_lm(registry, gguf_path(), role=Role.TEACHER)
    assert from_gguf.lineage.recipe["from"] == "gguf"
    assert from_gguf.lineage.data["sha256"] == {gguf_path().name: sha256_of(gguf_path())}
    assert len(registry.list()) == 3


def test_bad_causal_lm_imports_are_refused_and_register_nothing(foreign: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "state")

    def refused_lm(source: Path) -> str:
        with pytest.raises(ImportRefused) as caught:
            import_causal_lm(registry, source, role=Role.TEACHER)
        assert registry.list() == []
        assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]
        return str(caught.value)

    assert "sequence classifier" in refused_lm(foreign)
    assert "missing tokenizer" in refused_lm(tiny_causal_lm(tmp_path / "no-tok", tokenizer_from=None))
    broken = tiny_causal_lm(tmp_path / "broken", tokenizer_from=base_encoder_dir())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "does not load or run" in refused_lm(broken)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    assert "cannot read" in refused_lm(junk)


def test_the_cli_imports_or_refuses_with_one_line_and_exit_2(foreign: Path, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    done = kdgate_in_process("models", "import", str(foreign), "--role", "teacher", "--state-dir", state)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered classify-teacher-minilm-topics@1 (classify teacher)" in done.stdout

    no_head = kdgate_in_process(
        "models", "import", str(base_encoder_dir()), "--role", "teacher", "--state-dir", state
    )
    assert no_head.returncode == 2
    assert len(no_head.stdout.strip().splitlines()) == 1
    assert "no sequence-classification head" in no_head.stdout

    as_generate = kdgate_in_process(
        "models", "import", str(foreign), "--kind=generate", "--role=student", f"--state-dir={state}"
    )
    assert as_generate.returncode == 2 and "sequence classifier" in as_generate.stdout
    assert [m.ref for m in Registry(Path(state)).list()] == ["classify-teacher-minilm-topics@1"]
