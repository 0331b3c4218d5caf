"""How fast replicas agree, on each state store: two `kdgate serve` processes on one state dir, with the
local files or with PostgreSQL (`--store`), measured in one run.

    .venv/bin/python -m loadtests.bench_replicas --state-dir .kdgate [--store postgresql://…]

- **Weight propagation:** from the start of an admin write on replica A (`PUT /admin/traffic/{task}`,
  the whole split to one model, alternating) to the first `/classify` answer of replica B served by that
  model. B is asked back to back, so the figure is the store's delay plus one request. On the local
  files, B looks at the file at most every 0.25 s and the rounds follow each other at once, so each
  lands right after a look: the local figure is the worst case (a write at a random time waits half).
- **Controller failover:** a rollout waits on a long dwell; the replica holding the controller lease is
  killed with -9, and the time until the survivor names itself in `GET /admin/rollouts/{task}` is the
  failover (one rollout tick of the survivor, `rollout_tick_seconds`, plus the store's lock release).
  The killed replica is replaced before the next round.

Writes loadtests/results/bench_replicas.json. Client and servers share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests._server import free_port, scratch_copy

ROLLOUT = {"steps": [5, 100], "min_dwell_s": 3600.0, "min_samples": 10, "min_requests": 10}


class Replica:
    """One `kdgate serve` process (no shadow, no build) that the bench may kill with -9."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        kdgate = Path(sys.executable).with_name("kdgate")
        cmd = [str(kdgate), "serve", "--state-dir", str(state_dir), "--port", str(port), "--no-build"]
        base = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "KDGATE_SHADOW_ENABLED": "0",
        }
        self.proc = subprocess.Popen(
            cmd, env=base | env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica on {self.url} did not start ({self.proc.poll()})")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50_ms": statistics.median(values_ms),
        "p99_ms": float(np.percentile(values_ms, 99)),
        "max_ms": max(values_ms),
    }


def propagation(
    a: Replica, b: Replica, headers: dict[str, str], refs: tuple[str, str], rounds: int
) -> list[float]:
    delays = []
    with httpx.Client(timeout=30) as client:
        for i in range(rounds):
            target = refs[i % 2]
            started = time.perf_counter()
            put = client.put(
                f"{a.url}/admin/traffic/classify", json={"weights": {target: 100}}, headers=headers
            )
            put.raise_for_status()
            while (
                client.post(f"{b.url}/classify", json={"text": "a text"}).headers["x-kdgate-model"] != target
            ):
                if time.perf_counter() - started > 30:
                    raise RuntimeError(f"the split to {target} did not reach {b.url} in 30 s")
            delays.append((time.perf_counter() - started) * 1000)
    return delays


def failover(
    replicas: list[Replica], state_dir: Path, env: dict[str, str], headers: dict[str, str], rounds: int
) -> list[float]:
    times = []
    for _ in range(rounds):
        status = httpx.get(f"{replicas[0].url}/admin/rollouts/classify", headers=headers).json()
        holder = next(r for r in replicas if r.proc.pid == (status["controller"] or {}).get("pid"))
        survivor = next(r for r in replicas if r is not holder)
        holder.kill()
        started = time.perf_counter()
        while True:
            found = httpx.get(f"{survivor.url}/admin/rollouts/classify", headers=headers).json()
            if (found["controller"] or {}).get("pid") == survivor.proc.pid:
                break
            if time.perf_counter() - started > 60:
                raise RuntimeError("no survivor took the controller lease in 60 s")
            time.sleep(0.01)
        times.append((time.perf_counter() - started) * 1000)
        replicas[replicas.index(holder)] = Replica(state_dir, env)
    return times


def measure(
    state_dir: Path, store: str | None, refs: tuple[str, str], rounds: int, failovers: int
) -> dict[str, Any]:
    env = {"KDGATE_STORE": store} if store else {}
    with scratch_copy(state_dir) as scratch:
        replicas = [Replica(scratch, env), Replica(scratch, env)]
        try:
            headers = {"Authorization": f"Bearer {(scratch / 'admin.token').read_text().strip()}"}
            delays = propagation(replicas[0], replicas[1], headers, refs, rounds)
            # The split back to the teacher, then a rollout that waits: something for a controller to hold.
            httpx.put(
                f"{replicas[0].url}/admin/traffic/classify", json={"weights": {refs[0]: 100}}, headers=headers
            ).raise_for_status()
            body = {"task": "classify", "baseline": refs[0], "candidate": refs[1], **ROLLOUT}
            httpx.post(f"{replicas[0].url}/admin/rollouts", json=body, headers=headers).raise_for_status()
            times = failover(replicas, scratch, env, headers, failovers)
        finally:
            for replica in replicas:
                replica.kill()
    return {"propagation": summary(delays), "failover": summary(times)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"), help="holds the two models")
    parser.add_argument(
        "--store", help="a PostgreSQL URL, measured beside the local files (an empty database)"
    )
    parser.add_argument("--teacher", default="classify-teacher@1")
    parser.add_argument("--student", default="classify-student@1")
    parser.add_argument("--rounds", type=int, default=40, help="split changes timed per store")
    parser.add_argument("--failovers", type=int, default=5, help="lease holders killed per store")
    parser.add_argument("--note", default="", help="what the figures were taken on, kept with them")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_replicas.json"))
    args = parser.parse_args()
    refs = (args.teacher, args.student)
    result: dict[str, Any] = {"local": measure(args.state_dir, None, refs, args.rounds, args.failovers)}
    if args.store:
        result["postgresql"] = measure(args.state_dir, args.store, refs, args.rounds, args.failovers)
    result["setup"] = {"rounds": args.rounds, "failovers": args.failovers, "note": args.note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
