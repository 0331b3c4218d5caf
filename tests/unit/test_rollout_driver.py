"""The controller's bookkeeping around one judged tick (the machine and judge are tested on their own)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rollout.driver import Controller
from rollout.model import Observation, Phase, RolloutConfig, RolloutState, Verdict
from rollout.store import AuditLog, RolloutStore, StaleRollout


class ErroringSource:
    """Every request the candidate served was an error: the error-burn guard fails at once."""

    def observe(self, state: RolloutState) -> Observation:
        return Observation(requests=500, errors=500, compared=0)


class Weights:
    def set_weights(self, task: str, weights: dict[str, int]) -> None:
        self.last = (task, weights)


class WatchedStore(RolloutStore):
    """Records what a status read would pair with each saved state: the controller's evidence then."""

    controller: Controller

    def save(self, state: RolloutState, config: RolloutConfig, replaces: RolloutState | None = None) -> None:
        super().save(state, config, replaces)
        evidence = self.controller.last_evidence.get(state.task, ())
        self.seen = (state.phase, {e.metric: e.verdict for e in evidence})


def test_a_saved_rollback_is_never_paired_with_the_evidence_of_the_tick_before(tmp_path: Path) -> None:
    store = WatchedStore(tmp_path / "rollout")
    controller = Controller(store, AuditLog(tmp_path / "rollout"), ErroringSource(), Weights())
    store.controller = controller
    config = RolloutConfig(steps=(5, 100), min_dwell_s=0.0, min_requests=30, max_disagreement=0.5)
    controller.start("classify", "s@1", "s@2", config)
    assert store.seen == (Phase.PROGRESSING, {})  # nothing judged yet
    controller.tick_task("classify")
    phase, verdicts = store.seen
    assert phase is Phase.ROLLED_BACK
    assert verdicts["error_burn"] is Verdict.FAIL  # the evidence of this tick, already in place


class SilentSource:
    def observe(self, state: RolloutState) -> Observation:
        return Observation(requests=0, errors=0, compared=0)


def test_candidates_of_active_rollouts_are_known_and_survive_a_restart(tmp_path: Path) -> None:
    """The shadow favours these models: a started rollout adds its candidate, an ended one removes
    it, and a controller that resyncs over the same store (a restarted gateway) knows it again."""
    store, audit = RolloutStore(tmp_path / "rollout"), AuditLog(tmp_path / "rollout")
    controller = Controller(store, audit, SilentSource(), Weights())
    config = RolloutConfig(steps=(5, 100), min_dwell_s=0.0, min_requests=30, max_disagreement=0.5)
    controller.start("classify", "s@1", "s@2", config)
    controller.start("generate", "g@1", "g@2", config)
    assert controller.candidates == {"classify": "s@2", "generate": "g@2"}
    controller.command("classify", "pause")
    assert controller.candidates == {"classify": "s@2", "generate": "g@2"}  # paused is still active
    restarted = Controller(store, audit, SilentSource(), Weights())
    restarted.resync()
    assert restarted.candidates == {"classify": "s@2", "generate": "g@2"}
    restarted.command("generate", "abort")
    assert restarted.candidates == {"classify": "s@2"}
    # A gateway whose rollouts another process drives (`kdgate rollout run` on the same state dir):
    follower = Controller(store, audit, SilentSource(), Weights())
    restarted.start("generate", "g@1", "g@3", config)
    follower.follow()
    assert follower.candidates == {"classify": "s@2", "generate": "g@3"}
    restarted.command("classify", "promote")
    follower.follow()
    assert follower.candidates == {"generate": "g@3"}


class Interleaved(RolloutStore):
    """Another controller's change lands between this controller's read and its save (as when an operator
    command reaches a replica that does not lead, in the instant the leader's tick acts)."""

    meanwhile: Callable[[], object] | None = None

    def save(self, state: RolloutState, config: RolloutConfig, replaces: RolloutState | None = None) -> None:
        if self.meanwhile is not None:
            act, self.meanwhile = self.meanwhile, None
            act()
        super().save(state, config, replaces)


def test_a_change_computed_from_a_state_another_controller_replaced_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "rollout"
    config = RolloutConfig(steps=(5, 100), min_dwell_s=0.0, min_requests=30, max_disagreement=0.5)
    leader = Controller(RolloutStore(directory), AuditLog(directory), ErroringSource(), Weights())
    leader.start("classify", "s@1", "s@2", config)
    store = Interleaved(directory)
    operator = Controller(store, AuditLog(directory), ErroringSource(), Weights())
    store.meanwhile = lambda: leader.command("classify", "pause")
    with pytest.raises(StaleRollout, match="changed meanwhile"):
        operator.command("classify", "abort")
    assert RolloutStore(directory).load("classify")[0].phase is Phase.PAUSED  # type: ignore[index]
    assert operator.command("classify", "abort").phase is Phase.ROLLED_BACK  # looked again: it applies
