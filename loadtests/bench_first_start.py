"""First answer on a fresh state: `kdgate serve` on an empty state dir, as a fresh clone's `make serve`
runs it after install, and the wall times until each task first answers 200 and every default model
is built.

    .venv/bin/python -m loadtests.bench_first_start [--note "..."]

The gateway listens at once and builds its missing default models in a child below serving: the
generate teacher (the packaged GGUF, converted), the classify teacher, the classify student, the
generate student. The script polls /generate and /classify once a second (each poll is a real request
with a tiny body) and `GET /admin/build` for each step's end, and stops the gateway when every step has
ended. Its control is the install itself: `make install` on a fresh clone takes its own time (noted,
not measured here) before `serve` starts.

Writes loadtests/results/bench_first_start.json. Figures are from this shared 2-core machine; the
default recipes take ~20 minutes of CPU, so other load on the machine stretches them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from distill.build_status import StepStatus, read_status
from loadtests._server import free_port

OUT = Path(__file__).parent / "results" / "bench_first_start.json"
PROBES = {
    "generate": ("/generate", {"prompt": "Hello", "max_tokens": 1}),
    "classify": ("/classify", {"text": "What a lovely day"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--note", default="", help="what else was running on the machine")
    parser.add_argument("--timeout-minutes", type=float, default=60.0)
    parser.add_argument(
        "--state-dir", type=Path, help="a new dir to build in and keep (for other benches); default: temp"
    )
    args = parser.parse_args()
    if args.state_dir is not None and args.state_dir.exists() and any(args.state_dir.iterdir()):
        parser.error(f"--state-dir {args.state_dir} is not empty: a first start needs a fresh state")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state_dir or Path(tmp) / "state"
        kdgate = Path(sys.executable).with_name("kdgate")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(kdgate), "serve", "--state-dir", str(state), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            result = _watch(url, state, started, args.timeout_minutes * 60, proc)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    result["note"] = args.note
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _watch(
    url: str, state: Path, started: float, timeout_s: float, proc: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """Seconds from the start of `serve` to: listening, each task's first 200, each build step's end
    (from the build's status file, as `kdgate models build-status` reads it)."""
    since: dict[str, float | None] = {"listening": None, **{f"first_200_{task}": None for task in PROBES}}
    status = read_status(state)
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() - started < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"kdgate serve exited with {proc.returncode}")
            try:
                client.get("/healthz")
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            since["listening"] = since["listening"] or round(time.monotonic() - started, 1)
            for task, (path, body) in PROBES.items():
                if since[f"first_200_{task}"] is None and client.post(path, json=body).status_code == 200:
                    since[f"first_200_{task}"] = round(time.monotonic() - started, 1)
            status = read_status(state)
            if status.ended_at is not None and all(v is not None for v in since.values()):
                break
            time.sleep(1.0)
    return {"seconds_after_serve": since, "build_steps": [_step(s, status.started_at) for s in status.steps]}


def _step(step: StepStatus, build_started: float | None) -> dict[str, Any]:
    def after(start: float | None, end: float | None) -> float | None:
        return None if start is None or end is None else round(end - start, 1)

    return {
        "step": f"{step.task} {step.role}",
        "state": step.state,
        "ref": step.ref,
        "error": step.error,
        "seconds": after(step.started_at, step.ended_at),
        "ended_after_build_start_s": after(build_started, step.ended_at),
    }


if __name__ == "__main__":
    main()
