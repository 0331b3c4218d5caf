"""Named tasks (issue: bring your own). A user's topic classifier, imported with the CLI as the teacher of
its own task `topics`, is served at /classify/topics and as the v2 model `topics`, beside the bundled
sentiment task at /classify. The task has its own split, metrics, shadow log and rollout; an unknown task
is a 404 naming the served ones."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from deploy.local.traffic import TrafficLoop
from distill.corpora import bbc_paragraphs
from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry, Role
from distill.shadowlog.reader import read_shadow
from tests.support import (
    FAST,
    TOPICS,
    FakeClock,
    kdgate_in_process,
    metric_sum,
    save_foreign_classifier,
    step_rollout,
)

TEACHER = "topics-teacher@1"
CANDIDATE = "topics-candidate@1"  # the teacher's weights behind a (fault-free) wrapper: a cheap student
# Every gate figure is reported and none refuses: the tiny students here are weak, and the gate is
# tested on its own (tests/integration/test_redistill.py).
OPEN_GATE = {
    "min_agreement": 0.0,
    "max_kl": 100.0,
    "min_accuracy": 0.0,
    "max_agreement_drop": 1.0,
    "max_kl_rise": 100.0,
    "max_accuracy_drop": 1.0,
    "max_ece_rise": None,
}
TEXTS = [
    "Shares in the carmaker fell after its quarterly profits missed forecasts.",
    "The striker scored twice as the home side won the cup final.",
    "The minister announced a review of the election rules.",
    "The band's new album tops the charts in its first week.",
    "A new smartphone chip promises longer battery life.",
]


@pytest.fixture(scope="module")
def topics_state(built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled tiny sentiment models, plus `topics` imported as a user does."""
    base = tmp_path_factory.mktemp("named")
    state = base / "state"
    shutil.copytree(built_state, state, copy_function=os.link)
    folder = save_foreign_classifier(base / "minilm-topics")
    done = kdgate_in_process(
        *("models", "import", str(folder), "--task", "topics", "--role", "teacher"),
        *("--name", "topics-teacher", "--state-dir", str(state)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"registered {TEACHER} (topics teacher)" in done.stdout
    register_fault_model(Registry(state), FaultSpec(wraps=TEACHER), name="topics-candidate")
    return state


@pytest.fixture
def named_state(topics_state: Path, tmp_path: Path) -> Path:
    target = tmp_path / "named-state"  # `serve` copies the bundled state to tmp_path / "state"
    shutil.copytree(topics_state, target, copy_function=os.link)
    return target


def test_a_named_task_is_served_beside_the_bundled_one(serve, named_state: Path) -> None:
    server = serve(state_dir=named_state, shadow_enabled=False)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        topics = client.post("/classify/topics", json={"text": TEXTS[0]})
        assert topics.status_code == 200, topics.text
        assert topics.json()["model"] == TEACHER  # the task's teacher holds its default split
        assert list(topics.json()["results"][0]["probabilities"]) == TOPICS

        sentiment = client.post("/classify", json={"text": TEXTS[0]}).json()
        assert sentiment["model"].startswith("classify-") and "sport" not in sentiment["results"][0]["label"]
        assert (
            client.post("/classify/classify", json={"text": TEXTS[0]}).json()["model"] == sentiment["model"]
        )

        unknown = client.post("/classify/news", json={"text": TEXTS[0]})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["field"] == "task"
        assert "served: classify, topics" in unknown.json()["error"]["message"]
        not_a_classifier = client.post("/classify/generate", json={"text": TEXTS[0]})
        assert not_a_classifier.status_code == 404
        assert client.post("/generate/topics", json={"prompt": "Hi"}).status_code == 404

        pinned_elsewhere = client.post("/classify", json={"text": "x"}, headers={"x-kdgate-model": TEACHER})
        assert pinned_elsewhere.status_code == 422  # a pin must name a model of the task asked

        v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[1]]}]}
        inferred = client.post("/v2/models/topics/infer", json=v2)
        assert inferred.status_code == 200, inferred.text
        assert inferred.json()["model_name"] == "topics-teacher"
        metadata = client.get("/v2/models/topics").json()
        assert metadata["parameters"]["labels"] == TOPICS

        ready = client.get("/readyz").json()
        assert ready["tasks"]["topics"] == "ready" and ready["tasks"]["classify"] == "ready"
        traffic = client.get("/admin/traffic", headers=server.admin_headers()).json()["traffic"]
        assert traffic["topics"] == {TEACHER: 100}
        metrics = client.get("/metrics").text
    assert metric_sum(metrics, "kdgate_requests_total", task="topics", model=TEACHER, code="200") == 2


def test_a_named_task_rolls_out_on_its_own_shadow_log(serve, named_state: Path) -> None:
    """A canary of `topics` to 100%, judged on the comparisons its own traffic feeds, logged under the
    task's own folder; the bundled task's split is untouched."""
    clock = FakeClock()
    server = serve(state_dir=named_state, clock=clock, drive_rollouts=False, shadow_idle_cpu=1.0)
    body = {"task": "topics", "candidate": CANDIDATE, **FAST, "steps": [50, 100]}
    started = httpx.post(f"{server.url}/admin/rollouts", json=body, headers=server.admin_headers())
    assert started.status_code == 201, started.text
    with TrafficLoop(server.url, TEXTS, threads=2, path="/classify/topics") as loop:
        final = step_rollout(server, clock, "topics", timeout=300)
    assert final["state"]["phase"] == "promoted", final
    assert set(loop.codes) == {200}
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=server.admin_headers()).json()["traffic"]
    assert traffic["topics"] == {CANDIDATE: 100}
    assert list(traffic["classify"].values()) == [100]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert (
        metric_sum(metrics, "kdgate_shadow_compared_total", task="topics", model=CANDIDATE)
        >= FAST["min_samples"]
    )
    server.stop()
    assert list((named_state / "shadow" / "topics").glob("*.parquet"))


def test_a_student_is_distilled_from_the_users_texts_and_redistilled_from_its_shadow(
    serve, named_state: Path, tmp_path: Path
) -> None:
    """`kdgate distill --task topics --data FILE`: pure KD from the imported teacher on the user's own
    unlabelled texts, a student cut from the teacher's own (kept) weights, served by its task. Its live
    traffic fills the task's shadow log, and `--from-shadow` re-distils the task's student on it,
    replaying the pinned file, which must not have changed since."""
    data = tmp_path / "news.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in bbc_paragraphs(limit=150)))
    state = ("--state-dir", str(named_state))
    done = kdgate_in_process("distill", "--task", "topics", "--data", str(data), "--layers", "1", *state)
    assert done.returncode == 0, done.stdout + done.stderr
    student = Registry(named_state).latest_of("topics", Role.STUDENT)
    assert student is not None and student.ref == "topics-student@1"
    assert (student.lineage.teacher, student.labels) == (TEACHER, TOPICS)
    assert student.lineage.data["source"] == str(data) and "pure KD" in student.lineage.data["labels"]
    assert student.lineage.recipe["alpha"] == 1.0 and student.lineage.recipe["student_layers"] == 1
    teacher_weights = Registry(named_state).path(TEACHER) / "hf"
    assert student.lineage.recipe["student_base"] == str(teacher_weights.resolve())
    assert student.metrics["test_accuracy"] is None and 0.0 <= student.metrics["agreement"] <= 1.0

    no_column = kdgate_in_process(
        "distill", "--task", "topics", "--data", str(data), "--text-col", "body", *state
    )
    assert no_column.returncode == 2 and "no column 'body'" in no_column.stdout + no_column.stderr
    no_task = kdgate_in_process("distill", "--task", "news", "--data", str(data), *state)
    assert no_task.returncode == 2 and "no task 'news'" in no_task.stdout + no_task.stderr
    assert [m.ref for m in Registry(named_state).models_of("topics", Role.STUDENT)] == [student.ref]

    server = serve(state_dir=named_state, shadow_idle_cpu=1.0, shadow_flush_seconds=0.2)
    admin = server.admin_headers()
    split = {"weights": {student.ref: 100}}
    httpx.put(f"{server.url}/admin/traffic/topics", json=split, headers=admin).raise_for_status()
    live = bbc_paragraphs(limit=40, seed=3)
    for text in live:
        answer = httpx.post(f"{server.url}/classify/topics", json={"text": text}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"] == student.ref, answer.text
        assert list(answer.json()["results"][0]["probabilities"]) == TOPICS
    deadline = time.monotonic() + 180  # bounds a failure only: the shadow teacher runs in SCHED_IDLE
    while read_shadow(str(named_state / "shadow"), "topics", columns=["ts"]).num_rows < len(live):
        assert time.monotonic() < deadline, "the shadow did not log the task's traffic"
        time.sleep(0.5)
    server.stop()

    redistil = ("distill", "--task", "topics", "--from-shadow", "--gate", json.dumps(OPEN_GATE), *state)
    short = ("--recipe", json.dumps({"min_steps": 10}))
    unknown_field = kdgate_in_process(*redistil, "--recipe", json.dumps({"min_stepz": 10}))
    assert unknown_field.returncode == 2 and "min_stepz" in unknown_field.stdout + unknown_field.stderr
    done = kdgate_in_process(*redistil, *short, "--result-json", str(tmp_path / "run.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["registered"] == "topics-student@2", run
    assert run["data"]["counts"]["shadow_window"] + run["data"]["counts"]["holdout"] == len(set(live))
    second = Registry(named_state).get("topics-student@2")
    assert (second.task, second.lineage.parent, second.lineage.teacher) == ("topics", student.ref, TEACHER)
    assert second.lineage.data["seed_source"] == str(data) and second.labels == TOPICS

    with data.open("a") as extra:  # the pinned file changes: its texts can no longer be replayed
        extra.write(json.dumps({"text": "One more article."}) + "\n")
    changed = kdgate_in_process(*redistil, *short)
    assert changed.returncode == 1 and "changed since" in changed.stdout + changed.stderr
    assert Registry(named_state).latest_of("topics", Role.STUDENT).ref == "topics-student@2"


def users_small_bert(folder: Path, texts: list[str]) -> Path:
    """A user's own small topic classifier, as `save_pretrained` writes it: BERT architecture, 2 narrow
    layers, the task's labels, and a word-level tokenizer trained on their texts (not the teacher's
    WordPiece)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        id2label=dict(enumerate(TOPICS)),
        label2id={t: i for i, t in enumerate(TOPICS)},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def test_a_student_starts_from_the_users_own_smaller_encoder_and_tokenizer(
    serve, named_state: Path, tmp_path: Path
) -> None:
    texts = bbc_paragraphs(limit=150)
    data = tmp_path / "news.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in texts))
    small = users_small_bert(tmp_path / "small-bert", texts)
    state = ("--state-dir", str(named_state))
    done = kdgate_in_process(
        "distill", "--task", "topics", "--data", str(data), "--student", str(small), *state
    )
    assert done.returncode == 0, done.stdout + done.stderr
    student = Registry(named_state).latest_of("topics", Role.STUDENT)
    assert student is not None and student.lineage.recipe["student_base"] == str(small)
    folder = Registry(named_state).path(student.ref)
    served_vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert served_vocab == json.loads((small / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 64  # the user's width

    server = serve(state_dir=named_state, shadow_enabled=False)
    pinned = httpx.post(
        f"{server.url}/classify/topics", json={"text": TEXTS[3]}, headers={"x-kdgate-model": student.ref}
    )
    assert pinned.status_code == 200, pinned.text
    assert list(pinned.json()["results"][0]["probabilities"]) == TOPICS

    # The same model imported as a student of the task: a new student starts from its kept weights.
    imported = kdgate_in_process(
        "models", "import", str(small), "--task", "topics", "--role", "student", *state
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    ref = Registry(named_state).latest_of("topics", Role.STUDENT).ref
    again = kdgate_in_process("distill", "--task", "topics", "--data", str(data), "--student", ref, *state)
    assert again.returncode == 0, again.stdout + again.stderr
    from_ref = Registry(named_state).latest_of("topics", Role.STUDENT)
    assert from_ref.lineage.recipe["student_base"] == str((Registry(named_state).path(ref) / "hf").resolve())
    built = kdgate_in_process(
        "distill", "--task", "topics", "--data", str(data), "--student", "classify-student@1", *state
    )
    assert built.returncode == 2 and "no weights to start from" in built.stdout + built.stderr

    (small / "config.json").write_text(json.dumps({"model_type": "distilbert"}))
    refused = kdgate_in_process(
        "distill", "--task", "topics", "--data", str(data), "--student", str(small), *state
    )
    assert refused.returncode == 2 and "BERT-architecture" in refused.stdout + refused.stderr
