"""The shadow log holds of running re-distillations, on the local store's shared document: what one
process holds, another process's retention keeps; a hold nobody released expires."""

from __future__ import annotations

from pathlib import Path

from durablefs.shared import SharedDocument
from gateway.shadow.protection import ShadowProtection


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_holds_are_shared_and_the_earliest_live_one_is_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "shadow_protection.json"
    loop = ShadowProtection(SharedDocument(path, poll_seconds=0), clock)
    retention = ShadowProtection(SharedDocument(path, poll_seconds=0), clock)  # another gateway
    assert retention() is None

    loop.hold("loop on gw-1", since=500.0, ttl_s=60.0)
    loop.hold("watch on gw-2", since=200.0, ttl_s=10.0)
    assert retention() == 200.0
    clock.now += 30.0  # the watch's hold expired (its process died mid-run): the loop's still counts
    assert retention() == 500.0
    loop.hold("loop on gw-1", since=700.0, ttl_s=60.0)  # its next run replaces its hold
    assert retention() == 700.0 and set(retention.holds()) == {"loop on gw-1"}  # the expired one dropped
    loop.release("loop on gw-1")
    assert retention() is None and retention.holds() == {}
