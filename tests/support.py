"""Helpers shared by the tests: a real gateway on 127.0.0.1 (in this process or as `kdgate serve`), client
traffic, a fake clock and the stepping of a rollout on it, the tiny recipes and models the fixtures build,
reading /metrics text, killing a training run mid-way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from deploy.local.processes import free_port
from deploy.local.replicas import start_replica, wait_ready
from distill.classify.io import base_encoder_dir
from distill.classify.recipe import ClassifyRecipe
from distill.generate.build import TINY_GENERATE_RECIPE, ensure_default_generate_models
from distill.generate.targets import TargetSet
from distill.generate.topk import topk_targets
from distill.registry import Registry
from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import GatewayState
from rollout.model import Observation, RolloutState

ROOT = Path(__file__).resolve().parents[1]

# Small enough to build in ~20 s on 2 cores, real in every other respect. 32 tokens, not the default
# 64, halves the cost of every step and every inference of the models built from it (the tests train and
# score many); tweets are short, and a BBC paragraph's first 32 tokens still name its topic.
TINY = {
    "teacher_examples": 320,
    "student_examples": 320,
    "eval_examples": 200,
    "max_length": 32,
    "threads": 2,
}
TINY_RECIPE = ClassifyRecipe(**TINY)

# Rollout settings for the e2e scenarios on the tiny models.
TEACHER, STUDENT = "classify-teacher@1", "classify-student@1"
FAST = {
    "steps": [5, 25, 50, 100],
    "min_dwell_s": 1.0,
    "min_samples": 30,
    "min_requests": 30,
    # The tiny student disagrees with its tiny teacher on ~25% of texts; its mean KL is ~0.005 nats (each
    # sample bounded by kl_cap, 10). At these thresholds the judge's confidence sequences pass a step on
    # ~30 compared samples (the min_samples floor); a disagreement bound of 0.45 would take ~95, which a 5%
    # step gathers slowly. The guards' own behaviour is tested in tests/unit/test_rollout_judge.py; these
    # tests are about the steps.
    "max_disagreement": 0.6,
    "error_budget": 0.1,
    "p99_slo_ms": 1000.0,
    "max_kl": 3.0,
}


KDGATE = str(Path(sys.executable).with_name("kdgate"))


def kdgate(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The installed `kdgate` program in a child process: for what must outlive or be apart from the test
    process (a server, a run to kill)."""
    return subprocess.run([KDGATE, *args], capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def kdgate_in_process(*args: str) -> CliResult:
    """The same CLI run in this process (typer's runner): a fresh interpreter would spend seconds
    importing torch, transformers and onnxruntime before doing anything. A build sets torch's thread
    count for its run; the test process gets its own back."""
    import torch
    from typer.testing import CliRunner

    from gateway.cli import app

    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        torch.set_num_threads(threads)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def shadow_record(
    i: int, *, model: str = "student@1", teacher_served: bool = False, **over: Any
) -> dict[str, Any]:
    """Classify shadow record number `i` (one the teacher served carries no comparison), `over` replacing
    or adding fields."""
    rec: dict[str, Any] = {
        "request_id": f"r{i}",
        "served_model": "teacher@1" if teacher_served else model,
        "teacher_model": "teacher@1",
        "input_text": f"input number {i}",
        "served_label": "pos",
        "served_probs": [0.1, 0.2, 0.7],
        "teacher_logits": None if teacher_served else [-1.0, 0.5, 2.0],
        "agree": None if teacher_served else i % 4 != 0,
        "kl": None if teacher_served else 0.01 * (i % 5),
        "latency_ms": 3.5,
    }
    rec.update(over)
    return rec


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the exposition lines of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def send_keyed(url: str, n: int, prefix: str, concurrency: int = 4) -> list[httpx.Response]:
    """`n` single-text /classify requests, each with its own routing key `<prefix>-<i>`."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> httpx.Response:
            async with limit:
                body, headers = {"text": f"{prefix} number {i} is great"}, {"x-kdgate-key": f"{prefix}-{i}"}
                return await client.post("/classify", json=body, headers=headers)

        return await asyncio.gather(*(one(i) for i in range(n)))


def kill_at_first_checkpoint(script: str, state_dir: Path) -> float:
    """Runs `script` (a re-distillation) in a child process, kill -9s it as soon as its first checkpoint
    is on disk, and returns the window end the run pinned before training."""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    checkpoints = state_dir / "distill" / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("*.pt")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    (until,) = json.loads((state_dir / "distill" / "inflight.json").read_text()).values()
    return float(until)


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after "(comm)" (which may hold spaces): [state, ppid, …]; OSError once it is gone."""
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    children = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            if int(_stat_fields(entry.name)[1]) == pid:
                children.append(int(entry.name))
    return children


def is_alive(pid: int) -> bool:
    """Running, not exited (an exited child nobody has reaped yet is a zombie: state Z)."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


class FakeClock:
    """Epoch seconds that move only when told (`advance`). It starts at the wall clock's now, so what it
    stamps sits beside what real clocks stamp (shadow records, logs)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class RunningServer:
    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    gateway: GatewayState  # the app's parts: a test that drives rollouts ticks `gateway.controller`

    @property
    def token(self) -> str:
        return (self.settings.state_dir / "admin.token").read_text().strip()

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_server(
    state_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
    drive_rollouts: bool = True,
    wait_ready: bool = True,
    **overrides: Any,
) -> RunningServer:
    """A gateway on 127.0.0.1 (port 0) in a thread, ready (or only listening, without `wait_ready`);
    `clock` and `drive_rollouts` go to `create_app`.

    Its stop scores what the shadow has queued for 1 s, not 10: a test that ends under load leaves a
    backlog it does not read. It builds no missing default model unless asked: the fixtures build the
    (tiny) models a test serves."""
    defaults = {"shadow_drain_seconds": 1.0, "build_missing_models": False}
    settings = Settings(state_dir=state_dir, **{**defaults, **overrides})
    app = create_app(settings, clock=clock, drive_rollouts=drive_rollouts)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    running = RunningServer(f"http://127.0.0.1:{port}", settings, server, thread, app.state.gw)
    while wait_ready and httpx.get(f"{running.url}/readyz").status_code != 200:
        if time.monotonic() > deadline:
            running.stop()
            raise RuntimeError("models did not load")
        time.sleep(0.05)
    return running


def poll(check, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    """`check()` once it is truthy; `timeout` bounds a failure only."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.1)
    return found


def start_gateway(state_dir: Path, **settings: object) -> tuple[subprocess.Popen[bytes], str]:
    """`kdgate serve` as a process of its own (a test may kill -9 it), ready; settings as KDGATE_* vars
    (`workers=2`: a supervisor and its two workers on the port). Its output goes beside the state dir
    (`gateway-<port>.log`): gateways may share a state dir, and tests look at what is in it."""
    port = free_port()
    replica = start_replica(
        "gateway", state_dir, settings, port, log=state_dir.parent / f"gateway-{port}.log"
    )
    try:
        wait_ready(replica, timeout=90)
    except BaseException:
        replica.stop()  # a gateway that never became ready is not left running after the test
        raise
    return replica.process, replica.url


# --- rollout controller parts for tests that drive a `Controller` directly ---


class ErroringSource:
    """Every request the candidate served was an error: a leading controller rolls back at its tick."""

    def observe(self, state: RolloutState) -> Observation:
        return Observation(requests=500, errors=500, compared=0)


class RecordedWeights:
    def __init__(self) -> None:
        self.applied: list[dict[str, int]] = []

    def set_weights(self, task: str, weights: dict[str, int]) -> None:
        self.applied.append(weights)


ENDED = frozenset({"promoted", "rolled_back", "paused"})


def rollout_status(server: RunningServer, task: str) -> dict[str, Any]:
    """GET /admin/rollouts/<task>: state, config and the judge's latest evidence."""
    r = httpx.get(f"{server.url}/admin/rollouts/{task}", headers=server.admin_headers())
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def step_rollout(
    server: RunningServer,
    clock: FakeClock,
    task: str,
    until: frozenset[str] = ENDED,
    timeout: float = 900.0,
    pause_s: float = 0.2,
) -> dict[str, Any]:
    """Drives the rollout of `task` through the gateway's own controller on a fake clock, tick by tick,
    until its phase is in `until`; returns its status then (as the admin API shows it).

    At the start of every step the clock jumps over the step's dwell: the only thing waited for is the
    evidence, the compared samples the shadow scores from the caller's real traffic. Between ticks that
    left the step as it was the wall clock waits `pause_s`. `timeout` (wall seconds) bounds a failure only."""
    deadline = time.monotonic() + timeout
    dwelt: tuple[int, float] | None = None
    while True:
        current = rollout_status(server, task)
        state = current["state"]
        if state["phase"] in until:
            return current
        assert time.monotonic() < deadline, f"the rollout of {task} did not end: {current}"
        step = (state["step_index"], state["step_started_at"])
        if step != dwelt:  # a new step: its dwell passes at once
            clock.advance(current["config"]["min_dwell_s"])
            dwelt = step
        server.gateway.controller.tick()
        after = rollout_status(server, task)["state"]
        if (after["phase"], after["step_index"]) == (state["phase"], state["step_index"]):
            time.sleep(pause_s)


TOPICS = ["business", "entertainment", "politics", "sport", "tech"]


def save_foreign_classifier(folder: Path) -> Path:
    """A user's BERT-family topic classifier, as `save_pretrained` writes it (weights, config with
    id2label, the fast tokenizer): MiniLM from its package with a seeded 5-topic head. Not trained: the
    tests that use it are about files and serving, not accuracy."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_encoder_dir(),
        num_labels=len(TOPICS),
        id2label=dict(enumerate(TOPICS)),
        label2id={t: i for i, t in enumerate(TOPICS)},
        local_files_only=True,
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_encoder_dir(), local_files_only=True).save_pretrained(folder)
    return folder


def build_generate_state(state: Path) -> None:
    """generate-teacher@1 (SmolLM2 from the packaged GGUF) and generate-student@1 distilled from it with
    TINY_GENERATE_RECIPE: the real build path, at a budget that makes a poor but real student."""
    ensure_default_generate_models(Registry(state), TINY_GENERATE_RECIPE, log=lambda _: None)


# --- tiny causal LMs for the /generate KD unit tests ---

V, K, EOS, PAD = 64, 5, 2, 2


def tiny_llama(seed: int, tied: bool = True) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


class CharTokenizer:
    """Just enough of a Hugging Face tokenizer for `teacher_targets`: a chat prompt → ids."""

    pad_token_id = PAD
    eos_token_id = EOS

    def apply_chat_template(self, messages: list[dict[str, str]], **_: object) -> list[int]:
        return [1] + [3 + ord(c) % (V - 3) for c in messages[0]["content"]]


def random_targets(seed: int, n: int = 12, sharpness: float = 1.0) -> TargetSet:
    """Random sequences scored by a tiny random teacher under teacher forcing (logits × sharpness)."""
    teacher = tiny_llama(seed + 100, tied=False)  # tied random Llamas mostly predict their input token
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, V, rng.integers(2, 8)).tolist() for _ in range(n)]
    completions = [rng.integers(3, V, rng.integers(1, 10)).tolist() for _ in range(n)]
    rows = []
    with torch.no_grad():
        for p, c in zip(prompts, completions, strict=True):
            logits = teacher(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : len(p) + len(c) - 1]
            rows.append(topk_targets(logits * sharpness, K))
    return TargetSet.from_sequences(
        prompts, completions, *(np.concatenate([r[j].numpy() for r in rows]) for j in range(3))
    )
