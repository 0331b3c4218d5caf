"""The controller loop around the pure state machine: observe → step → persist → apply → record.

Narrow interfaces to the outside (as in Flagger): a `MetricSource` that turns a rollout into an
`Observation`, a `WeightSetter` that applies a split, an `EvidenceSink` that exports the judge's
evidence. The state is re-read from the store on every tick, so a restart resumes where it was, and
the new state is persisted *before* weights are applied: after a crash in between, `resync()` on start
re-asserts the persisted weights. With a `lease` (rollout/lease.py), only the holder ticks: the others
follow, and the one that takes the lease over resyncs first, as a restart does.

Example::

    controller = Controller(store.rollouts, store.audit, source, setter)  # a statestore.StateStore's
    controller.tick()          # every second (local source) or five (Prometheus)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from rollout import machine
from rollout.lease import Lease
from rollout.model import (
    Emit,
    Event,
    Evidence,
    Observation,
    Phase,
    RecordEvidence,
    RolloutConfig,
    RolloutState,
    SetWeights,
)
from rollout.store import EventLog, RolloutStates

log = logging.getLogger("kdgate.rollout")


class MetricSource(Protocol):
    def observe(self, state: RolloutState) -> Observation:
        """What the candidate did since `state.step_started_at`; raise if the source cannot be read."""
        ...


class WeightSetter(Protocol):
    def set_weights(self, task: str, weights: dict[str, int]) -> None: ...


class EvidenceSink(Protocol):
    def record(self, state: RolloutState, evidence: tuple[Evidence, ...]) -> None: ...

    def transition(self, event: Event, state: RolloutState) -> None: ...


class NoRollout(LookupError):
    """No rollout has ever been started for the task."""


class Controller:
    def __init__(
        self,
        store: RolloutStates,
        audit: EventLog,
        source: MetricSource,
        setter: WeightSetter,
        sink: EvidenceSink | None = None,
        clock: Callable[[], float] = time.time,
        lease: Lease | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.leading = lease is None  # whether the last look found this controller holding the lease
        self.audit = audit
        self.source = source
        self.setter = setter
        self.sink = sink
        self.clock = clock
        self.last_evidence: dict[str, tuple[Evidence, ...]] = {}
        # The candidates of active rollouts, by task: the shadow scores their requests first (the
        # judge waits on their comparisons). Replaced whole, so the request path reads it unlocked.
        self.candidates: dict[str, str] = {}
        self.active: dict[str, RolloutState] = {}  # the active rollouts as last seen (replaced whole)
        self._lock = threading.RLock()  # ticks and operator commands never interleave

    def resync(self) -> None:
        """Re-apply the persisted weights of every active rollout (after a restart or a crash)."""
        with self._lock:
            for state in self.follow():
                if state.phase.active:
                    self.setter.set_weights(state.task, state.weights())

    def follow(self) -> list[RolloutState]:
        """Re-reads which rollouts are active into `candidates` and returns every stored state: a gateway
        whose rollouts a standalone `kdgate rollout run` drives on the same state dir learns them so."""
        with self._lock:
            stored = (self.store.load(task) for task in self.store.tasks())
            states = [loaded[0] for loaded in stored if loaded is not None]
            for state in states:
                self._track(state)
            return states

    def leads(self) -> bool:
        """Whether this controller acts: always without a lease, else while it holds it. Taking it
        over, it re-asserts the stored weights first (its predecessor may have died between persisting a
        state and applying its weights)."""
        if self.lease is None:
            return True
        held = self.lease.acquire()
        if held and not self.leading:
            log.info("took the controller lease; resuming the stored rollouts")
            self.resync()
        self.leading = held
        return held

    def resign(self) -> None:
        """Lets the lease go (a stopping gateway), so another controller takes over at its next tick."""
        if self.lease is not None:
            self.lease.release()
            self.leading = False

    def tick(self) -> None:
        """One judged step of every progressing rollout, when this controller leads; else it only
        follows which candidates are under rollout."""
        try:
            if not self.leads():
                self.follow()
                return
            tasks = self.store.tasks()
        except Exception as exc:  # the store unreachable: no decision without it; the next tick retries
            log.warning("rollout tick skipped, the rollout store cannot be read: %s", exc)
            return
        for task in tasks:
            try:
                self.tick_task(task)
            except Exception:  # one broken task must not stop the others; the next tick retries
                log.exception("rollout tick failed for %s", task)

    def tick_task(self, task: str) -> RolloutState | None:
        with self._lock:
            loaded = self.store.load(task)
            if loaded is None:
                return None
            state, config = loaded
            self._track(state)  # started through another process: known here from its first tick
            if state.phase is not Phase.PROGRESSING:
                return state
            try:
                observation = self.source.observe(state)
            except Exception as exc:  # "could not measure": counted by the machine, with its own limit
                log.warning("metric source failed for %s: %s", task, exc)
                observation = Observation.could_not_measure(f"{type(exc).__name__}: {exc}")
            new, actions = machine.step(state, observation, config, self.clock())
            self._apply(state, new, config, actions)
            return new

    def state(self, task: str) -> tuple[RolloutState, RolloutConfig]:
        loaded = self.store.load(task)
        if loaded is None:
            raise NoRollout(f"no rollout has been started for task {task!r}")
        return loaded

    def start(
        self, task: str, baseline: str, candidate: str, config: RolloutConfig, actor: str = machine.OPERATOR
    ) -> RolloutState:
        with self._lock:
            loaded = self.store.load(task)
            current = loaded[0] if loaded is not None else None
            new, actions = machine.start(task, baseline, candidate, config, self.clock(), current, actor)
            self._apply(current or RolloutState.idle(task), new, config, actions)
            return new

    def command(self, task: str, name: str, reason: str = "", actor: str = machine.OPERATOR) -> RolloutState:
        """`pause`, `resume`, `promote` or `abort`; raises machine.InvalidTransition when not allowed."""
        commands = {
            "pause": machine.pause,
            "resume": machine.resume,
            "promote": machine.promote,
            "abort": machine.abort,
        }
        if name not in commands:
            raise ValueError(f"unknown command {name!r}; one of {sorted(commands)}")
        with self._lock:
            state, config = self.state(task)
            new, actions = commands[name](state, self.clock(), reason, actor)
            self._apply(state, new, config, actions)
            return new

    def _apply(self, old: RolloutState, new: RolloutState, config: RolloutConfig, actions: list) -> None:
        # The evidence first: a status read between the two must not pair the new state (say, rolled
        # back) with the evidence of the tick before (which did not fail yet).
        for action in actions:
            if isinstance(action, RecordEvidence):
                self.last_evidence[action.task] = action.evidence
        if new != old:
            self.store.save(new, config, replaces=old)  # another process may have acted meanwhile
            self._track(new)
        for action in actions:
            if isinstance(action, SetWeights):
                self.setter.set_weights(action.task, action.weights)
            elif isinstance(action, Emit):
                self.audit.append(action.event)
                if self.sink is not None:
                    self.sink.transition(action.event, new)
            elif isinstance(action, RecordEvidence) and self.sink is not None:
                self.sink.record(new, action.evidence)

    def _track(self, state: RolloutState) -> None:
        others = {task: ref for task, ref in self.candidates.items() if task != state.task}
        self.candidates = others | ({state.task: state.candidate} if state.phase.active else {})
        rest = {task: s for task, s in self.active.items() if task != state.task}
        self.active = rest | ({state.task: state} if state.phase.active else {})
