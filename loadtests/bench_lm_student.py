"""The /generate student against its KD budget: held-out agreement, KL, perplexity, decode speed.

    nice -n 10 .venv/bin/python -m loadtests.bench_lm_student --state-dir /tmp/gen-bench --budgets 4.5 20

Each budget builds a fresh `generate-student` (no warm start) with `GenerateRecipe.for_budget(minutes)`
into the registry at --state-dir (the teacher is converted there if missing). Teacher targets are cached
under the state dir, so the first budget pays for generating them and later ones only for the prompts
they add: `targets_seconds` says how much of each build went there. Writes
loadtests/results/bench_lm_student.json. Decode speeds are best-of-3 at batch 1 with the build's thread
count; anything else running on the cores lowers both, the teacher more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from distill.generate.build import build_generate_student
from distill.generate.recipe import GenerateRecipe
from distill.registry import Registry

KEPT = (
    "heldout_agreement",
    "fp32_heldout_agreement",
    "heldout_kl",
    "heldout_perplexity",
    "heldout_tokens",
    "tokens_per_s",
    "teacher_tokens_per_s",
    "speedup",
    "threads",
    "export_dtype",
    "params_m",
    "targets_seconds",
    "build_seconds",
    "train_steps",
    "train_epochs",
    "train_final_loss",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--budgets", type=float, nargs="+", default=[GenerateRecipe().budget_minutes])
    parser.add_argument("--threads", type=int, default=GenerateRecipe().threads)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_lm_student.json"))
    args = parser.parse_args()
    registry = Registry(args.state_dir)
    runs = []
    for minutes in args.budgets:
        recipe = GenerateRecipe.for_budget(minutes, threads=args.threads)
        started = time.monotonic()
        manifest = build_generate_student(registry, recipe)
        runs.append(
            {
                "budget_minutes": minutes,
                "ref": manifest.ref,
                "train_prompts": manifest.lineage.data["sizes"]["train_prompts"],
                "train_completion_tokens": manifest.lineage.data["sizes"]["train_completion_tokens"],
                "wall_seconds": round(time.monotonic() - started, 1),
                **{key: manifest.metrics.get(key) for key in KEPT},
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "targets": {
            "heldout_agreement_default_build": 0.30,
            "heldout_agreement_60_min": 0.45,
            "speedup": 4.0,
        },
        "default_recipe": GenerateRecipe().__dict__,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
