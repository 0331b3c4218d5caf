"""One shadow teacher per machine: with `kdgate serve --workers N`, only one worker shadows.

Each worker building its own shadow would run N teachers (N processes for /classify, N niced threads
for /generate) on the same cores: the shadow's CPU would grow with N while the traffic does not. So
the workers contend for a machine-wide lease, an `flock` on `<state_dir>/shadow-lease/` (as the
controller's, rollout/lease.py: the kernel drops it when its holder dies, kill -9 too). The holder
starts its shadow pipelines as a single gateway does; the others stand by (`ShadowPipeline.standby`:
`offer` returns at once, no teacher process, no log writer) and try again every `RETRY_S`, so a worker
killed with -9 is replaced as the shadow within about a second.

What that does to the numbers:
- The holder shadows only the share of the traffic the kernel gives it (SO_REUSEPORT spreads
  connections: ~1/N). Its `eligible` and `compared` both count that share only, so the observed
  shadow rate (compared / eligible) still reads true; the workers' windows are summed for the judge
  (gateway/rollouts/published.py), and since the others add no `compared`, the judge's compared count
  is the holder's.
- Comparisons gather up to N times slower than with every worker shadowing, when the traffic (not
  the shadow's CPU budget, `shadow_max_cpu`) is what limits them: a canary waits longer on its
  `min_samples`. Which connection lands on which worker does not depend on what it asks, so the
  sample the judge reads is not biased.
- Teacher-served records reach the shadow log from the holder only: the log (the re-distillation's
  data) grows ~N times slower than the traffic. Forwarding the other workers' items to the holder over
  a local socket would keep them all, at the cost of a hop per item on the request path; not done.
- The request counts, errors and latencies the judge reads come from every worker all the same.

A single process (`--workers 1`, or replicas started one by one) has no shadow lease and shadows its
own traffic as it always has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.shadow.pipeline import ShadowPipeline
from rollout.lease import FileLease, Lease, process_identity

log = logging.getLogger("kdgate.shadow")
LEASE_DIR = "shadow-lease"
HOLDER_FILE = "shadow.lease"
RETRY_S = 1.0


def shadow_lease(state_dir: Path) -> FileLease:
    return FileLease(state_dir / LEASE_DIR, process_identity("shadow"), holder_file=HOLDER_FILE)


def start_or_stand_by(lease: Lease | None, pipelines: Sequence[ShadowPipeline[Any]]) -> bool:
    """Starts the pipelines (on the running loop) if this process may shadow: it has no lease to
    contend for, or it took the lease. Else they stand by; whether they started."""
    if lease is None or lease.acquire():
        for pipeline in pipelines:
            pipeline.standby = False
            pipeline.start()
        return True
    for pipeline in pipelines:
        pipeline.standby = True
    return False


async def take_over_when_free(lease: Lease, pipelines: Sequence[ShadowPipeline[Any]]) -> None:
    """Tries the lease every `RETRY_S` (off the loop) until this process holds it, then shadows."""
    while not await asyncio.to_thread(lease.acquire):
        await asyncio.sleep(RETRY_S)
    log.info("took the shadow lease: this worker shadows now")
    start_or_stand_by(lease, pipelines)
