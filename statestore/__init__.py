"""The state store: what every gateway process and controller of one deployment must agree on.

Traffic weights, shadow-rate overrides, every process's published live window (for the judge), rollout
state and the rollout audit log live behind one interface, `StateStore`, with two backends:

- **local files** (`statestore/local.py`, the embedded default): the files under `<state_dir>` as
  before, safe for several processes on one machine (flocks, atomic renames, mtime polling);
- **PostgreSQL** (`statestore/postgres.py`, `KDGATE_STORE=postgresql://…`): replicas on many
  machines, changes pushed with LISTEN/NOTIFY, the controller lease an advisory lock.

Model files, shadow segments and the loop's runs stay on the filesystem (fsspec URLs are the next
step: the Kubernetes issue).

Example::

    store = open_store(settings.store_url(), settings.state_dir)
    traffic = TrafficStore(store.document("traffic"))
    controller = Controller(store.rollouts, store.audit, source, setter, lease=store.lease(identity))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from rollout.lease import Lease
from rollout.store import EventLog, RolloutStates

__all__ = [
    "Doc",
    "Document",
    "EventLog",
    "Lease",
    "LeaseName",
    "RolloutStates",
    "StateStore",
    "StoreUnavailable",
    "open_store",
]

Doc = dict[str, Any]
# What a lease elects one process of all those sharing a store for: the rollout controller, and the
# continual loop (one re-distillation per window, whichever gateway hosts it).
LeaseName = Literal["controller", "continual"]


class Document(Protocol):
    """One JSON object that every process reads and changes (a task's weights, the shadow rates)."""

    def read(self) -> Doc:
        """The document as last seen: served from memory, refreshed when another process changed it
        (within a second). Callers must not change it."""
        ...

    def update(self, change: Callable[[Doc], Doc]) -> Doc:
        """Applies `change` to the current document atomically with respect to every other process
        (read-modify-write under a lock), stores the result and returns it."""
        ...


class StateStore(Protocol):
    @property
    def rollouts(self) -> RolloutStates: ...

    @property
    def audit(self) -> EventLog: ...

    def document(self, name: str) -> Document:
        """The shared document `name` (`traffic`, `shadow_rates`); one object per name and store."""
        ...

    def lease(self, identity: str, name: LeaseName = "controller") -> Lease:
        """The lease `name`, held under `identity` (`process_identity(...)`); each name is a lease of
        its own."""
        ...

    def up(self) -> bool:
        """Whether the store answers now (local files always do)."""
        ...

    def close(self) -> None: ...


def open_store(url: str | None, state_dir: Path) -> StateStore:
    """The store at `url` (`postgresql://…`), or the local files under `state_dir` when `url` is
    None. An unreachable database raises `StoreUnavailable` at once rather than hanging."""
    if url is None:
        from statestore.local import LocalStore

        return LocalStore(state_dir)
    if url.startswith(("postgresql://", "postgres://")):
        from statestore.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported state store {url!r}: expected postgresql://… or unset (local files)")


class StoreUnavailable(RuntimeError):
    """The store cannot be reached; the message says where and why (never the password)."""
