"""Offline figures of the /classify teacher and student: accuracy, agreement, KL, latency, size.

    .venv/bin/python -m loadtests.bench_models --state-dir .kdgate [--no-kd-baseline]

Writes loadtests/results/bench_models.json. Latency is in-process (no HTTP), one thread per model
unless --threads says otherwise; the machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from distill.classify.build import ONNX_FP32, STUDENT_NAME, TEACHER_NAME, load_split
from distill.classify.evaluate import accuracy, compare_to_teacher
from distill.classify.io import load_classifier
from distill.classify.model import truncated_copy
from distill.classify.recipe import ClassifyRecipe
from distill.classify.runner import OnnxClassifierRunner, Runner, TorchClassifierRunner, load_runner
from distill.classify.tokenize import BatchTokenizer
from distill.registry import Registry
from distill.trainer import train


def latency(runner: Runner, texts: list[str], repeats: int) -> dict[str, float]:
    for text in texts[:20]:  # warm-up
        runner.predict_logits([text])
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        runner.predict_logits([texts[i % len(texts)]])
        times.append((time.perf_counter() - started) * 1000)
    batch = texts[:32]
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        runner.predict_logits(batch)
    throughput = rounds * len(batch) / (time.perf_counter() - started)
    return {
        "p50_ms_batch1": statistics.median(times),
        "p99_ms_batch1": float(np.percentile(times, 99)),
        "throughput_batch32_per_s": throughput,
    }


def size_mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 2)


def no_kd_baseline(
    registry: Registry,
    teacher_ref: str,
    recipe: ClassifyRecipe,
    test_texts: list[str],
    test_labels: list[int],
    teacher_test: np.ndarray,
) -> dict[str, float]:
    """The same student, same data and budget, trained on hard labels only: what KD is worth."""
    split = load_split(recipe)
    n = recipe.student_examples or len(split.train.texts)
    part = split.train.take(list(range(min(n, len(split.train.texts)))))
    model = truncated_copy(load_classifier(registry.path(teacher_ref)), recipe.student_layers)
    tok = BatchTokenizer.from_dir(registry.path(teacher_ref), recipe.max_length)
    labels = torch.tensor(part.labels)
    train(
        model,
        part.texts,
        tok,
        lambda logits, batch: torch.nn.functional.cross_entropy(logits, labels[batch]),
        epochs=recipe.student_epochs,
        batch_size=recipe.batch_size,
        lr=recipe.student_lr,
        head_lr=recipe.student_head_lr,
        seed=recipe.seed,
        desc="no-KD baseline",
    )
    from distill.classify.export import torch_logits

    logits = torch_logits(model, tok, test_texts)
    return {"test_accuracy": accuracy(logits, test_labels), **compare_to_teacher(teacher_test, logits)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--threads", type=int, default=1, help="threads per model (default 1)")
    parser.add_argument("--repeats", type=int, default=500, help="batch-1 calls per model")
    parser.add_argument("--no-kd-baseline", action="store_true", help="skip the hard-label-only baseline")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_models.json"))
    args = parser.parse_args()

    registry = Registry(args.state_dir)
    teacher_m, student_m = registry.latest(TEACHER_NAME), registry.latest(STUDENT_NAME)
    if teacher_m is None or student_m is None:
        raise SystemExit(
            f"no default models in {args.state_dir}; run `kdgate serve` or `kdgate distill` first"
        )
    recipe = ClassifyRecipe(
        **{
            k: (tuple(v) if isinstance(v, list) else v)
            for k, v in student_m.lineage.recipe.items()
            if k != "name"
        }
    )
    split = load_split(recipe)
    test_texts, test_labels = split.test.texts, split.test.labels

    teacher = TorchClassifierRunner(teacher_m, registry.path(teacher_m.ref), threads=args.threads)
    teacher_onnx = OnnxClassifierRunner(
        teacher_m, registry.path(teacher_m.ref), threads=args.threads, model_file=ONNX_FP32
    )
    student = load_runner(registry, student_m.ref, threads=args.threads)
    torch.set_num_threads(args.threads)

    teacher_logits = teacher_onnx.predict_logits(test_texts)
    student_logits = student.predict_logits(test_texts)
    report: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads_per_model": args.threads,
        },
        "test_examples": len(test_texts),
        "teacher": {
            "ref": teacher_m.ref,
            "test_accuracy": accuracy(teacher_logits, test_labels),
            "size_mb_safetensors": size_mb(registry.path(teacher_m.ref) / "model.safetensors"),
            "size_mb_onnx_fp32": size_mb(registry.path(teacher_m.ref) / ONNX_FP32),
            "latency_torch": latency(teacher, test_texts, args.repeats),
            "latency_onnx_fp32": latency(teacher_onnx, test_texts, args.repeats),
        },
        "student": {
            "ref": student_m.ref,
            "format": student_m.metrics.get("quantized"),
            "test_accuracy": accuracy(student_logits, test_labels),
            **compare_to_teacher(teacher_logits, student_logits),
            "size_mb_served_onnx": size_mb(registry.path(student_m.ref) / student_m.files[0]),
            "latency": latency(student, test_texts, args.repeats),
        },
        "build_seconds": {
            "teacher": teacher_m.metrics.get("train_seconds"),
            "student": student_m.metrics.get("train_seconds"),
        },
    }
    t, s = report["teacher"], report["student"]
    assert isinstance(t, dict) and isinstance(s, dict)
    report["targets"] = {
        "student_p50_vs_teacher_torch_p50": s["latency"]["p50_ms_batch1"]
        / t["latency_torch"]["p50_ms_batch1"],
        "student_accuracy_vs_teacher": s["test_accuracy"] / t["test_accuracy"],
        "agreement": s["agreement"],
        "goals": {
            "student_p50_vs_teacher_torch_p50": "<= 0.2",
            "student_accuracy_vs_teacher": ">= 0.97",
            "agreement": ">= 0.92",
        },
    }
    if not args.no_kd_baseline:
        report["no_kd_student_baseline"] = no_kd_baseline(
            registry, teacher_m.ref, replace(recipe), test_texts, test_labels, teacher_logits
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
