"""A generate task of the user's own (issue: bring your own). SmolLM2, saved as a plain Hugging Face
folder, is imported as the teacher of task `chat`; `kdgate distill --task chat --prompts FILE` distils
its student on the user's prompts; both are served at /generate/chat and through the OpenAI API with
the task as `model`, beside no bundled model at all."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from distill.corpora import bbc_paragraphs
from distill.registry import Registry, Role
from tests.support import kdgate_in_process, start_server

# A poor but real student, fast: the fields of TINY_GENERATE_RECIPE that make it so.
TINY = {
    "train_prompts": 16,
    "heldout_prompts": 8,
    "max_new_tokens": 12,
    "shard_size": 8,
    "teacher_batch_size": 16,
    "student_layers": [0, 29],
    "batch_size": 8,
    "max_steps": 6,
    "speed_tokens": 8,
    "speed_repeats": 1,
}


def write_prompts(path: Path, n: int) -> Path:
    """Half as one prompt, half as a chat with a system turn: the two shapes a user's file may hold."""
    rows: list[dict[str, object]] = []
    for i, paragraph in enumerate(bbc_paragraphs(limit=n, seed=7)):
        text = " ".join(paragraph.split()[:30])
        if i % 2:
            rows.append({"prompt": f"Summarize in one sentence: {text}"})
        else:
            turns = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]
            rows.append({"messages": turns})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_student_of_a_users_chat_teacher_is_distilled_on_their_prompts_and_served(
    generate_built_state: Path, tmp_path: Path
) -> None:
    state = ("--state-dir", str(tmp_path / "state"))
    folder = Registry(generate_built_state).path("generate-teacher@1")  # SmolLM2 as safetensors
    how = ("--task", "chat", "--role", "teacher", "--name", "chat-teacher")
    imported = kdgate_in_process("models", "import", str(folder), *how, *state)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi"}\n{"messages": [{"role": "assistant", "content": "Hello"}]}\n')
    refused = kdgate_in_process("distill", "--task", "chat", "--prompts", str(bad), *state)
    assert refused.returncode == 2 and "bad.jsonl:2" in refused.stdout + refused.stderr
    assert "end with the user's turn" in refused.stdout + refused.stderr
    wrong_input = kdgate_in_process("distill", "--task", "chat", "--data", str(prompts), *state)
    assert wrong_input.returncode == 2 and "--prompts" in wrong_input.stdout + wrong_input.stderr

    done = kdgate_in_process(
        "distill", "--task", "chat", "--prompts", str(prompts), "--recipe", json.dumps(TINY), *state
    )
    assert done.returncode == 0, done.stdout + done.stderr
    registry = Registry(tmp_path / "state")
    student = registry.latest_of("chat", Role.STUDENT)
    assert student is not None and student.ref == "chat-student@1"
    assert (student.task, student.lineage.teacher) == ("chat", "chat-teacher@1")
    assert student.lineage.data["source"] == str(prompts) and student.lineage.data["sha256"]
    sizes = student.lineage.data["sizes"]
    assert sizes["train_prompts"] == 16 and 0 < sizes["heldout_prompts"] <= 8  # ~10% of 40 are held out
    assert 0.0 <= student.metrics["heldout_agreement"] <= 1.0
    assert [m.ref for m in registry.list()] == ["chat-student@1", "chat-teacher@1"]  # nothing bundled

    server = start_server(tmp_path / "state", shadow_enabled=False)
    try:
        pinned = httpx.post(
            f"{server.url}/generate/chat",
            json={"prompt": "The weather today", "max_tokens": 4},
            headers={"x-kdgate-model": student.ref},
            timeout=60,
        )
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["model"] == student.ref and pinned.json()["text"]
        chat = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "chat-teacher@1"  # the task's teacher holds its default split
    finally:
        server.stop()
