"""How much CPU the /classify shadow teacher may use: a floor while serving is busy, more when it is not.

A fixed budget (0.25 of a core by default) bounds what the shadow costs a busy gateway's p99, but on a
quieter one it leaves cores idle while a canary waits for compared samples. So the budget grows with
the share of time the gateway has no request in flight: `idle` when serving is idle, falling linearly
to the floor as serving gets busy all the time. It follows request activity, not idle CPU: a busy
gateway has idle CPU between requests too, and a shadow that fills it costs served p99 as much as no
budget. SCHED_IDLE still applies on top. Opt-in (settings.shadow_idle_cpu): a busy share over a 1 s
interval does not see all of what serving needs, so a busy gateway pays more p99 than with the fixed
floor (loadtests/bench_shadow.py measures it); the default is the fixed floor.

    >>> shadow_budget(busy_share=0.0, floor=0.25, idle=1.0)  # quiet: a whole core
    1.0
    >>> shadow_budget(busy_share=1.0, floor=0.25, idle=1.0)  # a request always in flight: the floor
    0.25
"""

from __future__ import annotations


def pause_for_budget(cpu_seconds: float, max_cpu: float | None) -> float:
    """Seconds to wait after a batch that took `cpu_seconds` of CPU so the shadow averages at most
    `max_cpu` cores: busy for c, idle for c·(1/max_cpu − 1). No budget, or one of a core or more for a
    one-threaded teacher: no pause."""
    if max_cpu is None or max_cpu >= 1.0 or cpu_seconds <= 0.0:
        return 0.0
    return cpu_seconds * (1.0 / max_cpu - 1.0)


def shadow_budget(busy_share: float | None, floor: float | None, idle: float | None) -> float | None:
    """Cores the shadow may average over its next batches: `idle` (at most one core: the teacher is
    one-threaded) when serving was idle over the last interval, the `floor` when it was busy all of it,
    linear in between. No floor: no budget at all. No `idle` or no measurement yet: the floor."""
    if floor is None:
        return None
    if idle is None or busy_share is None:
        return floor
    top = max(floor, min(1.0, idle))
    budget = top - (top - floor) * min(1.0, max(0.0, busy_share))
    return max(floor, budget)  # rounding must not take a busy gateway's budget below its floor
