"""A user's prompts file for /generate distillation (distill/generate/prompts_file.py): both line shapes,
the split, and each refusal naming its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.datafile import DataFileError, file_sha256
from distill.generate.prompts_file import read_prompts, split_prompts


def test_prompts_and_chats_read_as_the_teacher_will_see_them(tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hello"}) + "\n\n" + json.dumps({"messages": chat}) + "\n")
    one, two = read_prompts(path, file_sha256(path))
    assert one.messages == [{"role": "user", "content": "Hello"}]
    assert two.messages == chat and two.instruction == "Why?"
    repeated = read_prompts(path, None) * 3
    train, held = (split_prompts(repeated, side, 10, 0) for side in ("train", "heldout"))
    assert sorted(p.text for p in train + held) == sorted({one.text, two.text})  # each once, one side
    path.write_text(json.dumps({"prompt": "Changed"}) + "\n")
    with pytest.raises(DataFileError, match="changed since"):
        read_prompts(path, file_sha256(path)[::-1])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('["a list"]', "expected an object"),
        ('{"prompt": ""}', "non-empty prompt"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "needs a role"),
    ],
)
def test_a_bad_prompts_line_is_refused_naming_it(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(DataFileError, match=message) as refused:
        read_prompts(path, None)
    assert f"{path}:2" in str(refused.value)
