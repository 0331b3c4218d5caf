"""Bring your own teacher, end to end, as a user would: a topic classifier fine-tuned outside kdgate,
imported into its own task, and a student distilled from it on unlabelled texts.

    .venv/bin/python -m loadtests.bench_byo

1. A user's teacher: MiniLM (from its package) with a 5-topic head, fine-tuned briefly on BBC articles
   with plain transformers, `save_pretrained` into a folder.
2. `import_classifier(--task topics)`: wall time and the ONNX export's parity. Also the two generate
   import kinds on the packaged SmolLM2: its GGUF file, then the Hugging Face folder that import wrote.
3. `build_student` with the recipe's `data_file`: pure KD on unlabelled BBC articles the teacher never
   saw, read from a JSONL file the way `kdgate distill --task topics --data FILE` reads it.
4. On labelled held-out articles (neither trained on): the teacher's and the student's accuracy, their
   agreement, and p50 latency at batch 1, one thread, the two runners interleaved in one process.

Writes loadtests/results/bench_byo.json. Figures are from this shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.classify.build import build_student
from distill.classify.evaluate import accuracy, compare_to_teacher
from distill.classify.importer import import_classifier
from distill.classify.io import base_encoder_dir
from distill.classify.recipe import ClassifyRecipe
from distill.classify.runner import load_runner
from distill.corpora import LabelledTexts, load_bbc
from distill.datafile import file_sha256
from distill.generate.importer import import_causal_lm
from distill.generate.teacher import gguf_path
from distill.registry import Registry, Role

OUT = Path(__file__).parent / "results" / "bench_byo.json"


def fine_tune_teacher(folder: Path, train: LabelledTexts, epochs: int, max_length: int) -> float:
    """What a user does before kdgate: fine-tune and `save_pretrained`. Returns the seconds it took."""
    started = time.monotonic()
    torch.manual_seed(0)
    names = train.label_names
    model = AutoModelForSequenceClassification.from_pretrained(
        base_encoder_dir(),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(base_encoder_dir(), local_files_only=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    order = np.random.default_rng(0).permutation(len(train.texts))
    for _ in range(epochs):
        for start in range(0, len(order), 16):
            rows = order[start : start + 16]
            batch = tokenizer(
                [train.texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            loss = model(**batch, labels=torch.tensor([train.labels[i] for i in rows])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return time.monotonic() - started


def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, round(time.monotonic() - started, 1)


def latency_ratio(
    registry: Registry, teacher: str, student: str, texts: list[str], runs: int
) -> dict[str, Any]:
    """p50 ms of each at batch 1, one thread, interleaved so drift hits both alike."""
    runners = {ref: load_runner(registry, ref, threads=1, prefer_onnx=True) for ref in (teacher, student)}
    times: dict[str, list[float]] = {ref: [] for ref in runners}
    for runner in runners.values():
        runner.predict_logits(texts[:1])  # graph set-up
    for i in range(runs):
        for ref, runner in runners.items():
            started = time.perf_counter()
            runner.predict_logits([texts[i % len(texts)]])
            times[ref].append((time.perf_counter() - started) * 1000.0)
    p50 = {ref: round(statistics.median(values), 3) for ref, values in times.items()}
    return {
        "teacher_p50_ms": p50[teacher],
        "student_p50_ms": p50[student],
        "ratio": round(p50[teacher] / p50[student], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher-examples", type=int, default=600, help="BBC articles the user's teacher trains on"
    )
    parser.add_argument(
        "--kd-examples", type=int, default=1000, help="unlabelled articles the student distils on"
    )
    parser.add_argument("--eval-examples", type=int, default=400, help="labelled held-out articles")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2, help="student layers")
    parser.add_argument("--runs", type=int, default=300, help="latency runs per model")
    parser.add_argument("--note", default="", help="what else was running on the machine")
    args = parser.parse_args()
    torch.set_num_threads(2)

    bbc = load_bbc()
    order = np.random.default_rng(0).permutation(len(bbc.texts))
    n_t, n_kd, n_eval = args.teacher_examples, args.kd_examples, args.eval_examples
    teacher_part, kd_part = bbc.take(order[:n_t]), bbc.take(order[n_t : n_t + n_kd])
    held_out = bbc.take(order[n_t + n_kd : n_t + n_kd + n_eval])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry = Registry(root / "state")
        fine_tune_s = fine_tune_teacher(root / "my-topics", teacher_part, args.epochs, max_length=128)
        teacher, import_s = timed(
            lambda: import_classifier(
                registry, root / "my-topics", role=Role.TEACHER, task="topics", name="topics-teacher"
            )
        )
        gguf, gguf_s = timed(lambda: import_causal_lm(registry, gguf_path(), role=Role.TEACHER, task="chat"))
        folder, folder_s = timed(
            lambda: import_causal_lm(
                registry, registry.path(gguf.ref), role=Role.TEACHER, task="chat", name="chat-hf"
            )
        )

        data_file = root / "my-texts.jsonl"
        data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in kd_part.texts))
        recipe = ClassifyRecipe(
            data_file=str(data_file),
            data_sha256=file_sha256(data_file),
            student_layers=args.layers,
            student_epochs=args.epochs,
            threads=2,
        )
        student, distil_s = timed(lambda: build_student(registry, recipe, teacher.ref, log=print))

        teacher_logits = load_runner(registry, teacher.ref, threads=2, prefer_onnx=True).predict_logits(
            held_out.texts
        )
        student_logits = load_runner(registry, student.ref, threads=2, prefer_onnx=True).predict_logits(
            held_out.texts
        )
        latency = latency_ratio(registry, teacher.ref, student.ref, held_out.texts, args.runs)

    result = {
        "note": args.note,
        "sizes": {"teacher_train": n_t, "kd_unlabelled": n_kd, "held_out_labelled": len(held_out.texts)},
        "user_fine_tune_s": round(fine_tune_s, 1),
        "imports": {
            "classify_hf_folder": {
                "seconds": import_s,
                "onnx_parity_max_abs_diff": teacher.metrics.get("onnx_parity_max_abs_diff"),
                **{k: teacher.metrics.get(k) for k in ("size_mb", "p50_ms")},
            },
            "generate_gguf": {
                "seconds": gguf_s,
                **{k: gguf.metrics.get(k) for k in ("size_mb", "p50_ms_per_token")},
            },
            "generate_hf_folder": {
                "seconds": folder_s,
                **{k: folder.metrics.get(k) for k in ("size_mb", "p50_ms_per_token")},
            },
        },
        "distil_seconds": distil_s,
        "student": {"ref": student.ref, "layers": args.layers, "quantized": student.metrics.get("quantized")},
        "held_out": {
            "teacher_accuracy": round(accuracy(teacher_logits, held_out.labels), 4),
            "student_accuracy": round(accuracy(student_logits, held_out.labels), 4),
            **{k: round(float(v), 4) for k, v in compare_to_teacher(teacher_logits, student_logits).items()},
        },
        "latency_batch1_1thread": latency,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
