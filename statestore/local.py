"""The state store as files under `<state_dir>`, shared by the processes of one machine.

`<name>.json` per document (`traffic.json`, `shadow_rates.json`, `distill/loop.json`),
`rollout/<task>.json` and `rollout/events.jsonl` for rollouts, the controller lease as an flock on
`rollout/` (rollout/lease.py) and the continual loop's on `continual-lease/`. The layout is the one
kdgate has always written, so a state dir moves between versions as it is.
"""

from __future__ import annotations

import threading
from pathlib import Path

from durablefs.shared import SharedDocument
from rollout.lease import FileLease, Lease
from rollout.store import AuditLog, RolloutStore
from statestore import LeaseName

ROLLOUT_DIR = "rollout"
LEASE_DIRS: dict[LeaseName, str] = {"controller": ROLLOUT_DIR, "continual": "continual-lease"}


class LocalStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.rollouts = RolloutStore(state_dir / ROLLOUT_DIR)
        self.audit = AuditLog(state_dir / ROLLOUT_DIR)
        self._documents: dict[str, SharedDocument] = {}
        self._lock = threading.Lock()

    def document(self, name: str) -> SharedDocument:
        with self._lock:
            if name not in self._documents:
                path = self.state_dir / f"{name}.json"  # a name may hold a folder: `distill/loop`
                path.parent.mkdir(parents=True, exist_ok=True)
                self._documents[name] = SharedDocument(path)
            return self._documents[name]

    def lease(self, identity: str, name: LeaseName = "controller") -> Lease:
        return FileLease(self.state_dir / LEASE_DIRS[name], identity, holder_file=f"{name}.lease")

    def up(self) -> bool:
        return True

    def close(self) -> None:
        pass
