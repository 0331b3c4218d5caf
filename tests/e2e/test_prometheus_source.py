"""The Prometheus metric source against a real Prometheus scraping a real gateway every second.

Also: the admin client that the standalone controller applies weights with, and how `run_query` reads
empty / NaN / error answers (from a tiny stdlib HTTP server replaying canned Prometheus JSON).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from rollout.admin_client import AdminClient, AdminError
from rollout.model import Phase, RolloutState
from rollout.prometheus import MetricSourceUnavailable, PrometheusSource
from tests.support import free_port, metric_sum, send_keyed

TEACHER, STUDENT = "classify-teacher@1", "classify-student@1"


def rollout_state(candidate: str, started_at: float) -> RolloutState:
    return RolloutState(Phase.PROGRESSING, "classify", TEACHER, candidate, 2, 50, started_at)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


# --- against a real gateway and a real Prometheus ----------------------------------------------------


def test_observation_matches_the_gateways_own_counters(serve, prometheus_server) -> None:
    server = serve(shadow_flush_rows=64)
    prom = prometheus_server([server.url.removeprefix("http://")])
    with PrometheusSource(prom, min_window_s=2.0) as source:
        wait_until(lambda: source.run_query('up{job="kdgate"}') == 1.0, 20, "the first scrape of the gateway")

        with AdminClient(server.url, server.token) as admin:
            admin.set_weights("classify", {STUDENT: 50, TEACHER: 50})
        traffic = httpx.get(f"{server.url}/admin/traffic", headers=server.admin_headers()).json()["traffic"]
        assert traffic["classify"] == {STUDENT: 50, TEACHER: 50}

        started_at = time.time() - 0.5
        responses = asyncio.run(send_keyed(server.url, 200, "prom"))
        assert all(r.status_code == 200 for r in responses)
        n_student = [r.headers["x-kdgate-model"] for r in responses].count(STUDENT)
        assert 40 < n_student < 160

        def gateway_text() -> str:
            return httpx.get(f"{server.url}/metrics").text

        wait_until(
            lambda: metric_sum(gateway_text(), "kdgate_shadow_total", model=STUDENT) >= n_student,
            30,
            "the shadow worker to score every student request",
        )
        text = gateway_text()
        requests = metric_sum(text, "kdgate_requests_total", model=STUDENT) + metric_sum(
            text, "kdgate_fallbacks_total", model=STUDENT
        )
        compared = metric_sum(text, "kdgate_shadow_compared_total", model=STUDENT)
        kl_sum = metric_sum(text, "kdgate_shadow_kl_sum", model=STUDENT)
        assert requests == n_student and compared > 0

        # Wait until Prometheus has scraped the gateway after the traffic: its latest raw values are the
        # gateway's final ones.
        selector = f'{{model="{STUDENT}"}}'
        wait_until(
            lambda: (
                source.run_query(f"sum(kdgate_requests_total{selector})") == requests
                and source.run_query(f"sum(kdgate_shadow_compared_total{selector})") == compared
            ),
            20,
            "a scrape after the traffic",
        )

        obs = source.observe(rollout_state(STUDENT, started_at))
        assert not obs.unreadable
        assert obs.requests == pytest.approx(requests, rel=0.15)
        assert obs.compared == pytest.approx(compared, rel=0.15)
        assert 0 <= obs.disagreed <= obs.compared * 1.0001
        assert obs.kl_sum == pytest.approx(kl_sum, rel=0.15, abs=1e-6)
        assert obs.errors == 0
        assert obs.p99_ms is not None and math.isfinite(obs.p99_ms) and obs.p99_ms > 0
        assert (
            obs.baseline_p99_ms is not None and math.isfinite(obs.baseline_p99_ms) and obs.baseline_p99_ms > 0
        )

        # A candidate that served nothing: no data (zero counts, no latency), never a healthy zero p99.
        idle = source.observe(rollout_state("classify-student@9", started_at))
        assert (idle.compared, idle.disagreed, idle.kl_sum, idle.requests, idle.errors) == (0, 0, 0, 0, 0)
        assert idle.p99_ms is None and not idle.unreadable


def test_admin_client_reports_the_gateways_refusal(serve) -> None:
    server = serve()
    with AdminClient(server.url, server.token) as client, pytest.raises(AdminError) as refused:
        client.set_weights("classify", {STUDENT: 60, TEACHER: 60})
    assert refused.value.status == 422 and "100" in str(refused.value)
    with AdminClient(server.url, "not-the-token") as stranger, pytest.raises(AdminError) as forbidden:
        stranger.set_weights("classify", {TEACHER: 100})
    assert forbidden.value.status == 403 and "wrong admin token" in str(forbidden.value)
    traffic = httpx.get(f"{server.url}/admin/traffic", headers=server.admin_headers()).json()["traffic"]
    assert traffic["classify"].get(STUDENT, 0) != 60  # nothing changed


def test_unreachable_prometheus_is_unavailable_not_no_data() -> None:
    with (
        PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=2.0, min_window_s=2.0) as source,
        pytest.raises(MetricSourceUnavailable, match="unreachable"),
    ):
        source.observe(rollout_state(STUDENT, time.time() - 10))
    with (
        AdminClient(f"http://127.0.0.1:{free_port()}", "t") as admin,
        pytest.raises(AdminError, match="unreachable"),
    ):
        admin.set_weights("classify", {TEACHER: 100})


# --- parsing of canned Prometheus answers ------------------------------------------------------------


@dataclass
class CannedPrometheus:
    """A real HTTP server answering every /api/v1/query with `status` and `body`, recording the params."""

    url: str
    status: int = 200
    body: str = ""
    delay_s: float = 0.0
    seen: list[dict[str, str]] = field(default_factory=list)
    sources: list[PrometheusSource] = field(default_factory=list)

    def reply(self, status: int, body: object) -> None:
        self.status, self.body = status, body if isinstance(body, str) else json.dumps(body)

    def source(self, **options: Any) -> PrometheusSource:
        """A source reading this server, closed with it (its client holds a keep-alive connection)."""
        self.sources.append(PrometheusSource(self.url, **options))
        return self.sources[-1]


def vector(*values: str) -> dict[str, object]:
    result = [{"metric": {"le": str(i)}, "value": [1700000000.0, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def canned() -> Iterator[CannedPrometheus]:
    state = CannedPrometheus(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            state.seen.append({k: v[0] for k, v in query.items()})
            time.sleep(state.delay_s)
            payload = state.body.encode()
            try:
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first (the timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    for source in state.sources:
        source.close()
    httpd.shutdown()
    httpd.server_close()


def test_values_empty_and_nan_results(canned: CannedPrometheus) -> None:
    source = canned.source(min_window_s=2.0)
    canned.reply(200, vector("12.5"))
    assert source.run_query("q") == 12.5
    canned.reply(200, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}})
    assert source.run_query("q") == 3.0
    canned.reply(200, vector())
    assert source.run_query("q") is None
    canned.reply(200, vector("NaN"))
    assert source.run_query("q") is None
    canned.reply(200, vector("+Inf"))
    assert source.run_query("q") == math.inf


@pytest.mark.parametrize("answer", [vector(), vector("NaN")])
def test_no_data_observes_zero_counts_and_no_latency(canned: CannedPrometheus, answer: object) -> None:
    canned.reply(200, answer)
    obs = canned.source(min_window_s=2.0).observe(rollout_state(STUDENT, time.time() - 30))
    assert obs == type(obs)()  # zero counts, None latencies, readable


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}, "parse error"),
        (422, {"status": "error", "errorType": "execution", "error": "query too slow"}, "execution"),
        (200, {"status": "error", "errorType": "internal", "error": "odd"}, "odd"),
        (503, "Service Unavailable", "without a JSON object"),
        (200, vector("1", "2"), "expected one series, got 2"),
        (200, {"status": "success", "data": {"resultType": "matrix", "result": []}}, "result type"),
        (200, {"status": "success", "data": {"resultType": "vector", "result": [{}]}}, "unreadable"),
    ],
)
def test_failed_or_unusable_answers_raise(
    canned: CannedPrometheus, status: int, body: object, match: str
) -> None:
    canned.reply(status, body)
    with pytest.raises(MetricSourceUnavailable, match=match):
        canned.source().run_query("q")


def test_slow_prometheus_times_out(canned: CannedPrometheus) -> None:
    canned.reply(200, vector("1"))
    canned.delay_s = 1.0
    with pytest.raises(MetricSourceUnavailable, match="timed out"):
        canned.source(timeout=0.2).run_query("q")


def test_window_and_evaluation_time_follow_the_clock(canned: CannedPrometheus) -> None:
    canned.reply(200, vector("1"))
    source = canned.source(min_window_s=2.0, clock=lambda: 1_700_000_100.0)
    source.observe(rollout_state(STUDENT, 1_700_000_089.2))  # 10.8 s ago -> [11s]
    assert len(canned.seen) == 7
    assert {q["time"] for q in canned.seen} == {"1700000100.000"}
    assert all("[11s]" in q["query"] and "offset 11s" in q["query"] for q in canned.seen)
    assert any(f'model="{TEACHER}"' in q["query"] for q in canned.seen)  # the baseline's p99
    canned.seen.clear()
    source.observe(rollout_state(STUDENT, 1_700_000_099.5))  # 0.5 s ago -> the 2 s minimum
    assert all("[2s]" in q["query"] for q in canned.seen)
