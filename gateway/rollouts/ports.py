"""What the in-process rollout controller needs from the gateway: a metric source (the live windows, or
a Prometheus scraping every replica), a weight setter (the traffic store), and an evidence sink
(Prometheus gauges)."""

from __future__ import annotations

from gateway.rollouts.published import WindowBoard, combine
from gateway.serving.metrics import GatewayMetrics
from gateway.serving.pool import ModelPool
from gateway.serving.traffic import TrafficStore
from gateway.serving.window import LiveWindow
from gateway.settings import Settings
from rollout.driver import MetricSource
from rollout.model import Event, Evidence, Observation, Phase, RolloutState
from rollout.prometheus import PrometheusSource


def metric_source(settings: Settings, window: LiveWindow, board: WindowBoard | None) -> MetricSource:
    """Prometheus when `rollout_prometheus_url` is set (it reads what every replica served, on the wall
    clock Prometheus keeps), else the windows of the processes on the store.

    >>> settings = Settings(rollout_prometheus_url="http://prometheus:9090")
    >>> type(metric_source(settings, LiveWindow(60.0), None)).__name__
    'PrometheusSource'
    """
    if settings.rollout_prometheus_url is not None:
        return PrometheusSource(
            settings.rollout_prometheus_url, min_window_s=settings.rollout_prometheus_min_window_s
        )
    return LocalSource(window, board)


class LocalSource:
    """The gateway's own window since the step started, plus what the other processes on the store
    published of theirs (`board`, published.py): no Prometheus needed on one machine."""

    def __init__(self, window: LiveWindow, board: WindowBoard | None = None) -> None:
        self.window = window
        self.board = board

    def observe(self, state: RolloutState) -> Observation:
        if state.step_started_at < self.window.oldest_time():
            # The step began before the window's horizon: counts would be silently short.
            raise RuntimeError(
                f"step started {state.step_started_at:.0f}, before the live window's horizon; "
                "raise window_seconds or use the Prometheus source"
            )
        candidate = self.window.totals(state.candidate, since=state.step_started_at)
        baseline = self.window.totals(state.baseline, since=state.step_started_at)
        p99, baseline_p99 = candidate.p99_ms(), baseline.p99_ms()
        others = [] if self.board is None else self.board.others(state)
        if others:  # alone, the figures stay this window's own (exact p99); with others, merged
            candidate, p99 = combine(candidate, [o.get(state.candidate, {}) for o in others])
            baseline, baseline_p99 = combine(baseline, [o.get(state.baseline, {}) for o in others])
        return Observation(
            compared=candidate.compared,
            disagreed=candidate.disagreed,
            kl_sum=candidate.kl_sum,
            requests=candidate.requests,
            errors=candidate.errors,
            completions=candidate.completions,
            degenerate=candidate.degenerate,
            p99_ms=p99,
            baseline_p99_ms=baseline_p99,
        )


class TrafficSetter:
    def __init__(self, traffic: TrafficStore, metrics: GatewayMetrics, pool: ModelPool) -> None:
        self.traffic = traffic
        self.metrics = metrics
        self.pool = pool

    def set_weights(self, task: str, weights: dict[str, int]) -> None:
        self.traffic.set(task, {ref: w for ref, w in weights.items() if w > 0})
        models = [ref for ref, t in self.pool.tasks_of().items() if t == task]
        self.metrics.set_weights(task, weights, models)


class MetricsSink:
    """Exports the rollout's state and the judge's evidence (`kdgate_rollout_*`, `kdgate_judge_*`)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def record(self, state: RolloutState, evidence: tuple[Evidence, ...]) -> None:
        self.state(state)
        for item in evidence:
            for bound, value in (("estimate", item.estimate), ("lower", item.lower), ("upper", item.upper)):
                if value is not None:
                    self.metrics.judge_bound.labels(state.task, state.candidate, item.metric, bound).set(
                        value
                    )
            if item.threshold is not None:
                self.metrics.judge_threshold.labels(state.task, state.candidate, item.metric).set(
                    item.threshold
                )

    def transition(self, event: Event, state: RolloutState) -> None:
        self.metrics.rollout_transitions.labels(event.task, event.to_phase.value).inc()
        self.state(state)

    def state(self, state: RolloutState) -> None:
        for phase in Phase:
            self.metrics.rollout_phase.labels(state.task, phase.value).set(1 if state.phase is phase else 0)
        self.metrics.rollout_weight.labels(state.task, state.candidate).set(state.weight)
        self.metrics.rollout_step.labels(state.task).set(state.step_index)
