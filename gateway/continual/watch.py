"""`kdgate distill watch`: the continual loop (one task) as its own process, beside a running gateway.

It shares the gateway's state dir (registry and shadow log on the same disk, or the same object store)
and talks to the gateway only over its admin API: it reads the split and the rollout, and after a gated
candidate is registered it asks the gateway to load it and start its canary. The decision is the same
pure `should_redistill` the in-process loop uses; drift is measured from the shadow log itself (the
serving student's disagreement on records since the last run). Run this or `redistill_enabled` in the
gateway, not both: they would train twice on the same window.

>>> watch = RedistillWatch(Path(".kdgate"), GatewayClient("http://127.0.0.1:8000", token), WatchConfig())
>>> watch.check_once()            # -> what it did, for the log
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

from distill.registry import Registry
from distill.shadowlog.reader import read_shadow
from distill.trigger import TriggerConfig, should_redistill
from gateway.continual.inprocess import (
    LoopStore,
    below_serving,
    loop_store_path,
    offline_disagreement,
    redistill_command,
)


class GatewayClient:
    """The few admin calls the watch makes; errors carry the gateway's message."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, f"{self.base_url}{path}", **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
        return response.json()

    def rollout_phase(self, task: str) -> str | None:
        response = self._client.get(f"{self.base_url}/admin/rollouts/{task}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return str(response.json()["state"]["phase"])

    def weights(self, task: str) -> dict[str, int]:
        traffic: dict[str, dict[str, int]] = self._call("GET", "/admin/traffic")["traffic"]
        return traffic.get(task, {})

    def reload(self) -> list[str]:
        return list(self._call("POST", "/admin/models/reload")["loaded"])

    def start_rollout(self, task: str, candidate: str, overrides: dict[str, Any]) -> dict[str, Any]:
        body = {"task": task, "candidate": candidate, **overrides}
        result: dict[str, Any] = self._call("POST", "/admin/rollouts", json=body)
        return result


def live_disagreement(table: pa.Table, parent: str) -> tuple[float | None, int]:
    """The parent's disagreement with the teacher in shadow records, and how many comparisons it rests
    on: per request for /classify (`agree`), per token for /generate (`token_agree`)."""
    rows = [r for r in table.to_pylist() if r["served_model"] == parent]
    flags = [r["agree"] for r in rows if r.get("agree") is not None]
    flags += [a for r in rows for a in (r.get("token_agree") or [])]
    return (1.0 - sum(flags) / len(flags) if flags else None), len(flags)


@dataclass(frozen=True)
class WatchConfig:
    task: str = "classify"
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    threads: int = 1  # training threads; the run is also niced below the gateway
    nice: int = 10
    idle_class: bool = False  # SCHED_IDLE as well (see below_serving and the setting's comment)
    auto_rollout: bool = True  # start a canary of every candidate that passes the gate
    rollout: dict[str, Any] = field(default_factory=dict)  # overrides of the canary's RolloutConfig
    gate: dict[str, float] = field(default_factory=dict)  # overrides of distill.gate.GateConfig
    shadow_root: str | None = None  # default <state_dir>/shadow
    budget_minutes: float | None = None  # /generate: KD wall time of a run (default: the recipe's)


class RedistillWatch:
    def __init__(self, state_dir: Path, gateway: GatewayClient, config: WatchConfig) -> None:
        self.state_dir = state_dir
        self.gateway = gateway
        self.config = config
        self.registry = Registry(state_dir)
        self.task = config.task
        self.store = LoopStore(loop_store_path(state_dir, config.task))
        self.root = config.shadow_root or str(state_dir / "shadow")

    def parent(self) -> str | None:
        """The serving student with the largest weight, else the latest registered student."""
        weights = self.gateway.weights(self.task)
        students = {
            m.ref
            for m in self.registry.list()
            if m.role == "student" and m.kind == "model" and m.task == self.task
        }
        serving = [r for r in weights if r in students]
        if serving:
            return max(sorted(serving), key=lambda r: weights[r])
        latest = self.registry.latest(f"{self.task}-student")
        return latest.ref if latest else None

    def check_once(self) -> str:
        """One look: maybe train, gate, register, load, start a canary. Returns what happened."""
        phase = self.gateway.rollout_phase(self.task)
        if phase in ("progressing", "paused"):
            return f"a {self.task} rollout is {phase}: waiting for it to finish"
        parent = self.parent()
        if parent is None:
            return "no student to re-distil"
        since = self.store.last_until()
        until = self.store.interrupted(parent)
        if until is not None:
            reason = "resumed the run stopped before it ended"
        else:
            columns = ["served_model", "agree", "token_agree"]
            table = read_shadow(self.root, self.task, since=since, columns=columns)
            live, compared = live_disagreement(table, parent)
            offline = offline_disagreement(self.registry.get(parent).metrics)
            trigger = should_redistill(table.num_rows, live, compared, offline, self.config.trigger)
            if not trigger.fire:
                return f"no run: {trigger.reason}"
            until, reason = time.time(), trigger.reason
        with self.store.run(until, parent):
            result = self._train(since, until, parent)
        candidate = result.get("registered")
        if candidate is None:
            return f"{reason}; gate refused the candidate: {'; '.join(result['gate']['reasons'])}"
        loaded = self.gateway.reload()
        if not self.config.auto_rollout:
            return f"{reason}; registered {candidate} (loaded: {loaded})"
        self.gateway.start_rollout(self.task, candidate, self.config.rollout)
        return f"{reason}; registered {candidate}; canary started"

    def _train(self, since: float | None, until: float, parent: str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = redistill_command(
                self.state_dir,
                since,
                until,
                parent,
                out,
                self.config.threads,
                self.config.gate,
                self.config.shadow_root,
                self.task,
                self.config.budget_minutes,
            )
            lower = below_serving(self.config.nice, self.config.idle_class)
            done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=lower)
            if not out.exists():
                raise RuntimeError(f"re-distillation exited {done.returncode}: {done.stderr[-2000:]}")
            result: dict[str, Any] = json.loads(out.read_text())
            return result
