"""The judge: one observation → a verdict per guarded metric, with its evidence. Pure.

Guards: disagreement with the teacher, mean KL to the teacher, error rate as a burn rate of the error
budget, p99 latency vs the SLO (and optionally vs the baseline's p99). Rates use anytime-valid
confidence sequences, so the driver may look every tick without inflating false rollbacks; latency is
a point comparison once enough requests were seen.

Rules shared by every guard: a FAIL needs the whole confidence interval above the threshold; a PASS
needs it wholly below *and* enough samples; anything else (too few samples, no data, NaN, negative
counts) is INCONCLUSIVE, which holds the step and never promotes.

Example:
    >>> from rollout.model import Observation, RolloutConfig
    >>> cfg = RolloutConfig(offline_disagreement=0.11)
    >>> ev = judge(Observation(compared=4000, disagreed=880, kl_sum=600.0, requests=4000, errors=4,
    ...                        p99_ms=120.0), cfg)
    >>> [(e.metric, e.verdict.value) for e in ev]
    [('disagreement', 'fail'), ('kl', 'pass'), ('error_burn', 'pass'), ('p99_ms', 'pass')]
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rollout.model import Evidence, Observation, RolloutConfig, Verdict

# Prior of the beta-binomial mixture: Jeffreys, Beta(1/2, 1/2). Symmetric and untuned, so the bound
# does not depend on any guess of where the rate lies.
PRIOR_A = 0.5
PRIOR_B = 0.5


# ---------------------------------------------------------------------------------------------------
# Confidence sequence for the mean of [0, 1]-valued samples: the beta-binomial conjugate mixture
# (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic
# confidence sequences", Ann. Statist. 49(2), the beta-binomial mixture for sub-Bernoulli processes).
#
# With S_n = x_1 + … + x_n and a Beta(a, b) mixing distribution over alternatives q,
#
#     M_n(m) = ∫ q^S (1-q)^(n-S) dBeta(q; a, b) / (m^S (1-m)^(n-S))
#            = B(a + S, b + n - S) / (B(a, b) · m^S · (1-m)^(n-S))
#
# is a non-negative supermartingale with M_0 = 1 when the samples have conditional mean m: for
# Bernoulli samples it is a likelihood ratio, and for any x in [0, 1] the factor
# (q/m)^x ((1-q)/(1-m))^(1-x) is convex in x, so its expectation is at most that of a Bernoulli(m),
# i.e. 1. Ville's inequality gives P(∃n: M_n(m) ≥ 1/α) ≤ α, so
#
#     C_n = { m : log M_n(m) < log(1/α) }
#
# contains the true mean at every n simultaneously with probability ≥ 1 − α: checking it every tick
# is as safe as checking it once. log M_n(m) is convex in m with its minimum at S/n, so C_n is an
# interval around S/n; its ends are found by safeguarded Newton. Its width is about
# sqrt(2 p(1-p) (log(1/α) + ½ log(n / (2π p(1-p)))) / n): it adapts to the variance p(1-p), which
# matters because a disagreement rate near 0.1 has variance 0.09, not Hoeffding's worst-case 0.25.
# The sufficient statistics are (S, n) only, which is all a Prometheus counter pair gives; S and n
# may be non-integers (Prometheus increase() extrapolates), the formula holds for real values.
# ---------------------------------------------------------------------------------------------------


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _xlog(x: float, y: float) -> float:
    """x·log(y) with 0·log(0) = 0 and x·log(0) = −inf for x > 0."""
    if x == 0.0:
        return 0.0
    return x * math.log(y) if y > 0.0 else -math.inf


def log_wealth(s: float, n: float, m: float) -> float:
    """log M_n(m) of the beta-binomial mixture for S = s successes out of n, at hypothesised mean m."""
    mixture = _lbeta(PRIOR_A + s, PRIOR_B + n - s) - _lbeta(PRIOR_A, PRIOR_B)
    return mixture - _xlog(s, m) - _xlog(n - s, 1.0 - m)


def _root(f: Callable[[float], float], df: Callable[[float], float], a: float, b: float) -> float:
    """Root of f in (a, b), where f(a) and f(b) have opposite signs (either may be ±inf at an end)."""
    fa_positive = f(a) > 0.0
    x = 0.5 * (a + b)
    for _ in range(100):
        fx = f(x)
        if fx == 0.0 or b - a < 1e-13:
            return x
        if (fx > 0.0) == fa_positive:
            a = x
        else:
            b = x
        d = df(x)
        nxt = x - fx / d if d != 0.0 and math.isfinite(d) else a - 1.0
        # Newton when it stays inside the bracket, bisection otherwise: quadratic where the function is
        # smooth, never worse than halving the bracket.
        x = nxt if a < nxt < b else 0.5 * (a + b)
    return x


def confidence_interval(s: float, n: float, alpha: float) -> tuple[float, float]:
    """Anytime-valid (1 − alpha) confidence interval for the mean of [0, 1] samples summing to s.

    >>> lo, hi = confidence_interval(110, 1000, 0.05)
    >>> 0.07 < lo < 0.11 < hi < 0.16
    True
    """
    if not n > 0.0:
        return 0.0, 1.0
    s = min(max(s, 0.0), n)
    p = s / n
    c = math.log(1.0 / alpha)

    def f(m: float) -> float:
        return log_wealth(s, n, m) - c

    def df(m: float) -> float:
        # At the open ends the slope is infinite; NaN makes _root bisect instead of dividing by zero.
        return -s / m + (n - s) / (1.0 - m) if 0.0 < m < 1.0 else math.nan

    if f(p) >= 0.0:  # cannot happen (the mixture never beats the best fit) — kept for totality
        return p, p
    lower = 0.0 if s == 0.0 else _root(f, df, 0.0, p)
    upper = 1.0 if s == n else _root(f, df, p, 1.0)
    return lower, upper


def bound_alpha(config: RolloutConfig) -> float:
    """Error level of each confidence sequence: config.alpha split (Bonferroni) over guards and steps.

    Each step starts a fresh sequence and each rate guard has its own, so a false rollback anywhere in
    the rollout from the rate guards has probability at most config.alpha when every rate is truly
    within its threshold. (The p99 guards are point comparisons and are not covered by this budget.)
    """
    guards = 2 + (config.max_kl is not None) + (config.max_degenerate_rate is not None)
    return config.alpha / (guards * len(config.steps))


# ---------------------------------------------------------------------------------------------------


def _amount(x: object) -> float | None:
    """A usable count or sum, else None (NaN, inf, negative, absurdly large, not a number)."""
    # Counts above 1e15 are implausible and would overflow the log-gamma arithmetic.
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or not 0 <= x <= 1e15:
        return None
    return float(x)


def _inconclusive(metric: str, n: float, threshold: float | None, message: str) -> Evidence:
    return Evidence(metric, Verdict.INCONCLUSIVE, None, None, None, int(n), threshold, message)


def _rate_guard(
    metric: str, s: float, n: float, scale: float, threshold: float, alpha: float, min_n: int, what: str
) -> Evidence:
    """Verdict for a mean of [0, scale]-valued samples (sum s·scale over n) against threshold."""
    lo, hi = confidence_interval(s, n, alpha)
    est, lo, hi = s / n * scale, lo * scale, hi * scale
    text = f"{metric} {est:.4g} in [{lo:.4g}, {hi:.4g}] vs max {threshold:.4g} over n={n:.0f} {what}"
    if lo > threshold:
        verdict = Verdict.FAIL
    elif hi < threshold and n >= min_n:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
        text += f" (need n>={min_n})" if hi < threshold else " (interval straddles max)"
    return Evidence(metric, verdict, est, lo, hi, int(n), threshold, f"{verdict.value}: {text}")


def judge_disagreement(obs: Observation, config: RolloutConfig, alpha: float) -> Evidence:
    threshold = config.disagreement_max
    n, k = _amount(obs.compared), _amount(obs.disagreed)
    if threshold is None:
        return _inconclusive("disagreement", n or 0, None, "no disagreement maximum configured")
    if n is None or k is None or k > n:
        return _inconclusive("disagreement", 0, threshold, f"invalid counts {obs.disagreed}/{obs.compared}")
    if n == 0:
        return _inconclusive("disagreement", 0, threshold, "no compared samples yet")
    return _rate_guard("disagreement", k, n, 1.0, threshold, alpha, config.min_samples, "compared")


def judge_kl(obs: Observation, config: RolloutConfig, alpha: float) -> Evidence:
    # Per-sample KL is unbounded (a confidently wrong answer costs many nats), and no confidence
    # sequence exists for the raw mean of an unbounded variable. We bound the mean of min(KL, cap)
    # instead, treating each sample as lying in [0, cap]. That capped mean is at most the raw mean, so
    # a FAIL is conservative for the raw mean too; a PASS says the capped mean is below max, and with
    # cap ≫ max (10 vs 0.5 nats) every sample above the cap still adds cap/n. Sources should clip per
    # sample; with only an unclipped sum we clip the mean, which can only raise the estimate.
    threshold = config.max_kl
    assert threshold is not None
    n, total = _amount(obs.compared), _amount(obs.kl_sum)
    if n is None or total is None:
        return _inconclusive("kl", 0, threshold, f"invalid KL sum {obs.kl_sum} over {obs.compared}")
    if n == 0:
        return _inconclusive("kl", 0, threshold, "no compared samples yet")
    s = min(total, config.kl_cap * n) / config.kl_cap
    return _rate_guard("kl", s, n, config.kl_cap, threshold, alpha, config.min_samples, "compared")


def judge_errors(obs: Observation, config: RolloutConfig, alpha: float) -> Evidence:
    # Burn rate = error rate / budget: 1 spends the budget exactly; the bound is on the rate, scaled.
    n, k, limit = _amount(obs.requests), _amount(obs.errors), config.max_burn_rate
    if n is None or k is None or k > n:
        return _inconclusive("error_burn", 0, limit, f"invalid counts {obs.errors}/{obs.requests}")
    if n == 0:
        return _inconclusive("error_burn", 0, limit, "no candidate requests yet")
    scale = 1.0 / config.error_budget
    return _rate_guard("error_burn", k, n, scale, limit, alpha, config.min_requests, "requests")


def judge_degeneracy(obs: Observation, config: RolloutConfig, alpha: float) -> Evidence:
    threshold = config.max_degenerate_rate
    assert threshold is not None
    n, k = _amount(obs.completions), _amount(obs.degenerate)
    if n is None or k is None or k > n:
        return _inconclusive("degenerate", 0, threshold, f"invalid counts {obs.degenerate}/{obs.completions}")
    if n == 0:
        return _inconclusive("degenerate", 0, threshold, "no shadowed completions yet")
    # Completions are far fewer than compared tokens: judged once there are min_requests/10 of them.
    min_n = max(1, config.min_requests // 10)
    return _rate_guard("degenerate", k, n, 1.0, threshold, alpha, min_n, "completions")


def _point(metric: str, verdict: Verdict, estimate: float, n: float, threshold: float, text: str) -> Evidence:
    return Evidence(metric, verdict, estimate, None, None, int(n), threshold, f"{verdict.value}: {text}")


def judge_p99(obs: Observation, config: RolloutConfig) -> Evidence:
    # A point comparison: a p99 has no cheap sequential bound from a histogram, and below min_requests
    # it is roughly the slowest request, so it is not judged at all there.
    slo, p99, n = config.p99_slo_ms, _amount(obs.p99_ms), _amount(obs.requests)
    if p99 is None or n is None:
        return _inconclusive("p99_ms", n or 0, slo, f"no p99 latency ({obs.p99_ms})")
    text = f"p99 {p99:.1f} ms vs SLO {slo:.1f} ms over n={n:.0f} requests"
    if n < config.min_requests:
        return _point("p99_ms", Verdict.INCONCLUSIVE, p99, n, slo, f"{text} (need n>={config.min_requests})")
    return _point("p99_ms", Verdict.FAIL if p99 > slo else Verdict.PASS, p99, n, slo, text)


def judge_p99_ratio(obs: Observation, config: RolloutConfig) -> Evidence:
    limit = config.max_p99_ratio_vs_baseline
    assert limit is not None
    p99, base, n = _amount(obs.p99_ms), _amount(obs.baseline_p99_ms), _amount(obs.requests)
    if p99 is None or base is None or base == 0.0 or n is None:
        why = f"no p99 pair ({obs.p99_ms} vs baseline {obs.baseline_p99_ms})"
        return _inconclusive("p99_ratio", n or 0, limit, why)
    ratio = p99 / base
    text = f"p99 {p99:.1f} ms is {ratio:.2f}x baseline {base:.1f} ms (max {limit:.2f}x) over n={n:.0f}"
    if n < config.min_requests:
        return _point(
            "p99_ratio", Verdict.INCONCLUSIVE, ratio, n, limit, f"{text} (need n>={config.min_requests})"
        )
    return _point("p99_ratio", Verdict.FAIL if ratio > limit else Verdict.PASS, ratio, n, limit, text)


def judge(obs: Observation, config: RolloutConfig) -> list[Evidence]:
    """Judge every guarded metric of one observation. Pure; never raises for a valid config.

    >>> from rollout.model import Observation, RolloutConfig
    >>> [e.verdict.value for e in judge(Observation(), RolloutConfig(offline_disagreement=0.1))]
    ['inconclusive', 'inconclusive', 'inconclusive', 'inconclusive']
    """
    alpha = bound_alpha(config)
    if obs.unreadable:
        why = f"metric source could not be read: {obs.detail}".rstrip(": ")
        names = ["disagreement", "kl", "degenerate", "error_burn", "p99_ms", "p99_ratio"]
        skip = {"kl"} if config.max_kl is None else set()
        skip |= {"degenerate"} if config.max_degenerate_rate is None else set()
        skip |= {"p99_ratio"} if config.max_p99_ratio_vs_baseline is None else set()
        return [_inconclusive(m, 0, None, why) for m in names if m not in skip]
    out = [judge_disagreement(obs, config, alpha)]
    if config.max_kl is not None:
        out.append(judge_kl(obs, config, alpha))
    if config.max_degenerate_rate is not None:
        out.append(judge_degeneracy(obs, config, alpha))
    out.append(judge_errors(obs, config, alpha))
    out.append(judge_p99(obs, config))
    if config.max_p99_ratio_vs_baseline is not None:
        out.append(judge_p99_ratio(obs, config))
    return out
