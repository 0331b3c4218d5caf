"""Progressive rollouts of /generate on a real gateway: per-token shadow proxies and the degeneracy guard.

The candidates wrap the real SmolLM2 teacher (a fault model with no fault is a student that agrees with
the teacher; with `wrong_rate=1` it falls into a repetition loop on every prompt). The loop is what
on-policy agreement alone can miss — the teacher, reading the loop, predicts more of it — so the test
loosens the disagreement guard and expects the degeneracy guard to catch it. Each scenario steps the
gateway's controller on a fake clock (`step_rollout`): only the evidence is waited for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from deploy.local.traffic import TrafficLoop
from distill.faults import register_fault_model
from distill.registry import FaultSpec, Registry
from tests.support import FakeClock, step_rollout

TEACHER = "generate-teacher@1"
FAST = {
    "steps": [50, 100],
    "min_dwell_s": 1.0,
    "min_samples": 60,  # compared tokens
    "min_requests": 10,
    # Error-free requests pass a budget of 0.3 (burn 2: a rate of 0.6) at the min_requests floor; at 0.1
    # the bound needs ~25 candidate requests per step (~70 generations in all). Unit tests cover the budget.
    "error_budget": 0.3,
    "p99_slo_ms": 5000.0,  # per output token: two engines and the shadow share 2 cores here
}
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "What do bees make?",
    "Summarize: shares fell sharply on Monday after weak earnings.",
    "What is the sentiment of: I love this phone!",
    "Continue: The match ended in a draw after",
]


def chat(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 12}


def start(server: Any, candidate: str, **overrides: Any) -> httpx.Response:
    body = {"task": "generate", "candidate": candidate, **FAST, **overrides}
    return httpx.post(f"{server.url}/admin/rollouts", json=body, headers=server.admin_headers())


def test_agreeing_candidate_is_promoted(serve, generate_state_dir: Path) -> None:
    good = register_fault_model(Registry(generate_state_dir), FaultSpec(wraps=TEACHER), name="gen-copy").ref
    clock = FakeClock()
    server = serve(
        state_dir=generate_state_dir, clock=clock, drive_rollouts=False, shadow_generate_queue_size=8
    )
    # A KL of 2 (cap 20) passes an agreeing candidate on ~50 compared tokens; the default 0.5 takes ~200.
    body = {"max_disagreement": 0.2, "max_degenerate_rate": 0.5, "max_kl": 2.0}
    assert start(server, good, **body).status_code == 201
    with TrafficLoop(server.url, QUESTIONS, threads=3, path="/generate", body=chat) as loop:
        final = step_rollout(server, clock, "generate")
    assert final["state"]["phase"] == "promoted", final
    assert set(loop.codes) == {200}
    verdicts = {e["metric"]: e["verdict"] for e in final["evidence"]}
    assert verdicts["degenerate"] == "pass"


def openai_chat(text: str) -> dict[str, Any]:
    return {"model": "generate", "messages": [{"role": "user", "content": text}], "max_tokens": 12}


def test_repetition_loop_is_rolled_back_by_the_degeneracy_guard(serve, generate_state_dir: Path) -> None:
    """Driven only by OpenAI-API traffic (/v1/chat/completions, the task alias as `model`): the same
    request path as /generate, so the same split, shadow and judge."""
    looping = register_fault_model(
        Registry(generate_state_dir), FaultSpec(wraps=TEACHER, wrong_rate=1.0), name="gen-loop"
    ).ref
    clock = FakeClock()
    server = serve(
        state_dir=generate_state_dir, clock=clock, drive_rollouts=False, shadow_generate_queue_size=8
    )
    # KL per token is clipped at the task's cap (20 nats); a loop's mean may pass any lower bound, so
    # the KL guard may catch it too. The test is about the degeneracy guard catching it.
    assert start(server, looping, max_disagreement=0.95, max_kl=19.0).status_code == 201
    with TrafficLoop(server.url, QUESTIONS, threads=3, path="/v1/chat/completions", body=openai_chat) as loop:
        final = step_rollout(server, clock, "generate")
    assert final["state"]["phase"] == "rolled_back", final
    assert set(loop.codes) == {200} and looping in loop.served
    failed = {e["metric"] for e in final["evidence"] if e["verdict"] == "fail"}
    assert "degenerate" in failed and "disagreement" not in failed, final["evidence"]
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=server.admin_headers()).json()["traffic"]
    assert traffic["generate"] == {TEACHER: 100}
