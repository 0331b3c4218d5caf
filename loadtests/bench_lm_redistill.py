"""/generate re-distillation on real models: shifted-domain traffic → shadow log → new student → gate.

    .venv/bin/python -m loadtests.bench_lm_redistill --state-dir .kdgate

On a scratch copy of a state dir with the default /generate models:
1. a gateway serves /generate with the student at 100% and the shadow on (a queue long enough that no
   completion is dropped); a client sends `--requests` chat prompts of an instruction the seed data
   never had ("Explain in simple words for a child: <BBC paragraph>"), 2 at a time, greedy;
2. once the shadow has logged every completion the gateway stops, and `kdgate distill --task generate
   --from-shadow` (2 threads, idle machine) re-distils the student: its wall time and the gate's
   figures, parent vs candidate, on the newest 20% of the window (never trained on) and on the seed
   held-out prompts (forgetting), plus the share of greedy completions that loop.
Writes loadtests/results/bench_lm_redistill.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from distill.corpora import bbc_paragraphs
from distill.generate.build import latest_student
from distill.registry import Registry
from distill.shadowlog.reader import read_shadow
from gateway.continual.child import redistill_command
from loadtests._server import admin_headers, gateway, scratch_copy

INSTRUCTION = "Explain in simple words for a child: {text}"


def send(url: str, texts: list[str], max_tokens: int) -> list[int]:
    def one(text: str) -> int:
        body = {
            "messages": [{"role": "user", "content": INSTRUCTION.format(text=text)}],
            "max_tokens": max_tokens,
        }
        return httpx.post(f"{url}/generate", json=body, timeout=300).status_code

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, texts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--budget", type=float, default=3.0, help="minutes of KD (the loop's default)")
    parser.add_argument("--parent", help="student to serve and re-distil (default: the latest)")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_lm_redistill.json"))
    args = parser.parse_args()
    latest = latest_student(Registry(args.state_dir))
    if latest is None:
        raise SystemExit(f"no generate student in {args.state_dir}; run `kdgate serve` once first")
    parent_ref = args.parent or latest.ref
    texts = bbc_paragraphs(limit=args.requests, seed=23)
    report: dict[str, Any] = {"parent": parent_ref, "requests": len(texts), "max_tokens": args.max_tokens}
    with scratch_copy(args.state_dir) as state:
        settings = {"shadow_generate_queue_size": args.requests + 8, "shadow_flush_seconds": 1.0}
        with gateway(state, **settings) as url:
            split = {"weights": {parent_ref: 100}}
            httpx.put(
                f"{url}/admin/traffic/generate", json=split, headers=admin_headers(state)
            ).raise_for_status()
            started = time.monotonic()
            codes = send(url, texts, args.max_tokens)
            report["traffic_seconds"] = round(time.monotonic() - started, 1)
            report["status_codes"] = {str(c): codes.count(c) for c in sorted(set(codes))}
            root = str(state / "shadow")
            deadline = time.monotonic() + 900
            while read_shadow(root, "generate", columns=["ts"]).num_rows < len(texts):
                if time.monotonic() > deadline:
                    break
                time.sleep(2.0)
            report["shadow_seconds"] = round(time.monotonic() - started, 1)
        report["shadow_records"] = read_shadow(str(state / "shadow"), "generate", columns=["ts"]).num_rows
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = redistill_command(
                state, None, time.time(), parent_ref, 2, task="generate", budget_minutes=args.budget
            )
            cmd += ["--result-json", str(out)]
            started = time.monotonic()
            done = subprocess.run(cmd, capture_output=True, text=True)
            report["trigger_to_registered_idle_2_threads_s"] = round(time.monotonic() - started, 1)
            if not out.exists():
                raise SystemExit(f"re-distillation failed ({done.returncode}): {done.stderr[-2000:]}")
            result = json.loads(out.read_text())
    gate = result["gate"]
    report.update(
        budget_minutes=args.budget,
        registered=result["registered"],
        gate_passed=gate["passed"],
        gate_reasons=gate["reasons"],
        window_counts=result["data"]["counts"],
        parent_figures=gate["parent"],
        candidate_figures=gate["candidate"],
        shifted_domain_agreement_gain_points=round(
            100 * (gate["candidate"]["recent_agreement"] - gate["parent"]["recent_agreement"]), 2
        ),
        seed_heldout_agreement_change_points=round(
            100 * (gate["candidate"]["seed_accuracy"] - gate["parent"]["seed_accuracy"]), 2
        ),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
