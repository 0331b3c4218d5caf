"""The gateway's Prometheus metrics (names shared with dashboards, alert rules and the rollout judge).

Under `kdgate serve --workers N` the supervisor gives its workers one `PROMETHEUS_MULTIPROC_DIR`:
prometheus_client then keeps every value in a file per process, and `/metrics` on any worker reads them
all (`exposition`), so a scrape sees the machine's counters once, whichever worker answers it. Each gauge
says how the workers' values combine (`multiprocess_mode`; ignored by a single process).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
TOKEN_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
ACCEPTED_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
KL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    """One set per app, on its own registry (several apps in one test process must not collide)."""

    def __init__(self) -> None:
        # Read once, as prometheus_client did when it chose where values live (in memory or in files).
        self.shared_dir = os.environ.get(MULTIPROC_ENV) or None
        self._store_up: Callable[[], bool] | None = None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kdgate_requests",
            "Requests answered, by serving model and status code",
            ["task", "model", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kdgate_request_seconds",
            "Time to answer, by serving model",
            ["task", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "kdgate_fallbacks",
            "Student failures answered by the teacher instead",
            ["task", "model", "reason"],
            registry=r,
        )
        # Workers' values: the store is up when every live worker reaches it; the rest are one setting
        # (the latest write wins) or sums (queues, budgets).
        self.store_up = Gauge(
            "kdgate_store_up",
            "Whether the state store answers (1) or not (0)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.traffic_weight = Gauge(
            "kdgate_traffic_weight",
            "Configured traffic weight (0-100)",
            ["task", "model"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.batch_size = Histogram(
            "kdgate_batch_size",
            "Texts per model call of the micro-batcher",
            ["task", "model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        # reason, of a drop: queue_full (teacher capacity), shutdown (past the drain time), storage (the
        # shadow log's store failed for longer than its buffer holds); "" for the other outcomes.
        self.shadow = Counter(
            "kdgate_shadow",
            "Shadow items by outcome (compared, dropped, error) and why dropped",
            ["task", "model", "outcome", "reason"],
            registry=r,
        )
        self.shadow_eligible = Counter(
            "kdgate_shadow_eligible",
            "Student-served texts that could be shadowed",
            ["task", "model"],
            registry=r,
        )
        self.shadow_compared = Counter(
            "kdgate_shadow_compared", "Texts compared with the teacher", ["task", "model"], registry=r
        )
        self.shadow_disagreed = Counter(
            "kdgate_shadow_disagreed", "Compared texts whose top-1 differs", ["task", "model"], registry=r
        )
        self.shadow_kl = Histogram(
            "kdgate_shadow_kl",
            "KL(teacher ‖ student) per compared text, nats",
            ["task", "model"],
            buckets=KL_BUCKETS,
            registry=r,
        )
        self.shadow_rate = Gauge(
            "kdgate_shadow_rate",
            "Shadow rate per student: configured vs observed",
            ["task", "model", "kind"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.shadow_queued = Gauge(
            "kdgate_shadow_queued",
            "Items waiting in the /classify shadow: `score` for the teacher, `log` teacher-served",
            ["queue"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shadow_budget = Gauge(
            "kdgate_shadow_budget_cores",
            "Cores the shadow teacher may use now: its floor, or more when cores are idle",
            ["task"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # /generate: tokens, latency per token, how completions end; shadow counts above are in tokens.
        self.tokens = Counter(
            "kdgate_generate_tokens",
            "Tokens by kind (prompt, completion)",
            ["task", "model", "kind"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "kdgate_time_to_first_token_seconds",
            "Time from request to the first generated token",
            ["task", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "kdgate_time_per_output_token_seconds",
            "Mean time per generated token after the first, per request",
            ["task", "model"],
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            "kdgate_generate_finished",
            "Generations by how they ended (stop, length, cancelled, error)",
            ["task", "model", "reason"],
            registry=r,
        )
        self.shadow_accepted = Histogram(
            "kdgate_shadow_accepted_tokens",
            "Tokens the teacher accepts before its first disagreement, per shadowed completion",
            ["task", "model"],
            buckets=ACCEPTED_BUCKETS,
            registry=r,
        )
        self.shadow_completions = Counter(
            "kdgate_shadow_completions", "Shadowed completions", ["task", "model"], registry=r
        )
        self.shadow_degenerate = Counter(
            "kdgate_shadow_degenerate",
            "Shadowed completions that are repetition loops (see distill/generate/degeneracy.py)",
            ["task", "model"],
            registry=r,
        )
        self.shadow_distinct2 = Histogram(
            "kdgate_shadow_distinct2",
            "Distinct 2-grams / all 2-grams per shadowed completion",
            ["task", "model"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.rejected = Counter(
            "kdgate_rejected", "Requests refused before routing, by reason", ["reason"], registry=r
        )
        # Rollout state and the judge's evidence (labels: task; candidate model where it applies).
        self.rollout_phase = Gauge(
            "kdgate_rollout_phase",
            "1 for the rollout's current phase, 0 for the others",
            ["task", "phase"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rollout_weight = Gauge(
            "kdgate_rollout_weight",
            "Candidate weight set by the rollout",
            ["task", "model"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rollout_step = Gauge(
            "kdgate_rollout_step",
            "Index of the current rollout step",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rollout_transitions = Counter(
            "kdgate_rollout_transitions",
            "Rollout phase transitions, by target phase",
            ["task", "to"],
            registry=r,
        )
        self.judge_bound = Gauge(
            "kdgate_judge_bound",
            "Judge evidence per guarded metric: estimate and confidence bounds",
            ["task", "model", "metric", "bound"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.judge_threshold = Gauge(
            "kdgate_judge_threshold",
            "Threshold the judge compares each metric with",
            ["task", "model", "metric"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )

    def track_store(self, up: Callable[[], bool]) -> None:
        """`kdgate_store_up` follows `up()`: read at each scrape by a single process; written by
        `refresh` when the scrape reads the workers' files."""
        if self.shared_dir is None:
            self.store_up.set_function(lambda: float(up()))
        else:
            self._store_up = up
            self.refresh()

    def refresh(self) -> None:
        """Writes the values a scrape of the workers' files cannot compute (called every second and at
        each scrape, so a worker nobody scrapes is at most a second behind)."""
        if self._store_up is not None:
            self.store_up.set(float(self._store_up()))

    def exposition(self) -> bytes:
        """The text `/metrics` answers: this process's registry, or every worker's values once."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        self.refresh()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.shared_dir)
        return generate_latest(merged)

    def set_weights(self, task: str, weights: dict[str, int], models: list[str]) -> None:
        for model in models:
            self.traffic_weight.labels(task, model).set(weights.get(model, 0))
