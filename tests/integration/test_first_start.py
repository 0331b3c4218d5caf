"""A fresh gateway answers before its default models exist: it listens at once, builds them in a child
below serving (teachers first), answers a task with no model yet 503 + Retry-After, and serves each model
as its build step registers it. A second gateway on the same state dir (a worker of `serve --workers 2`)
builds nothing itself: it follows the first one's build and serves the same models as they come."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support import TINY, start_server


def wait_until(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout  # bounds a failure only
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.5)
    return result


def test_a_fresh_gateway_listens_at_once_and_serves_each_model_as_it_is_built(tmp_path: Path) -> None:
    settings = {
        "build_missing_models": True,
        "build_generate": False,  # the tiny classify models stand for all: the mechanism is one
        # Two batches of training each, figures on 50 texts: the test is about when each model is served.
        "build_recipe": TINY | {"teacher_examples": 64, "student_examples": 64, "eval_examples": 50},
    }
    server = start_server(tmp_path / "fresh", wait_ready=False, **settings)
    other = start_server(tmp_path / "fresh", wait_ready=False, **settings)
    try:
        wait_until(
            lambda: httpx.get(f"{server.url}/readyz").json()["status"] != "loading", 60, "the first load"
        )
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "building"
        assert ready.json()["tasks"] == {"classify": "building", "generate": "missing"}
        wait_until(
            lambda: httpx.get(f"{other.url}/readyz").json()["status"] != "loading",
            60,
            "the other's first load",
        )
        assert httpx.get(f"{other.url}/readyz").json()["status"] == "building"
        early = httpx.post(f"{server.url}/classify", json={"text": "what a day"})
        assert early.status_code == 503, early.text
        assert int(early.headers["retry-after"]) > 0
        assert early.json()["error"]["type"] in {"model_unavailable", "not_ready"}
        build = httpx.get(f"{server.url}/admin/build", headers=server.admin_headers()).json()
        assert build["running"] is True
        assert [(s["task"], s["role"]) for s in build["steps"]] == [
            ("classify", "teacher"),
            ("classify", "student"),
        ]

        # The teacher is served as soon as it is registered, while the student is still being built.
        answer = wait_until(
            lambda: (r := httpx.post(f"{server.url}/classify", json={"text": "what a day"})).is_success and r,
            timeout=600,
            what="an answer from the classify teacher",
        )
        assert answer.json()["model"] == "classify-teacher@1"
        assert httpx.get(f"{server.url}/readyz").json()["tasks"]["classify"] == "ready"

        wait_until(
            lambda: (
                not httpx.get(f"{server.url}/admin/build", headers=server.admin_headers()).json()["running"]
            ),
            timeout=600,
            what="the end of the build",
        )
        build = httpx.get(f"{server.url}/admin/build", headers=server.admin_headers()).json()
        assert [s["state"] for s in build["steps"]] == ["done", "done"], build
        assert [s["ref"] for s in build["steps"]] == ["classify-teacher@1", "classify-student@1"]
        models = httpx.get(f"{server.url}/admin/models", headers=server.admin_headers()).json()["models"]
        assert {m["ref"] for m in models} == {"classify-teacher@1", "classify-student@1"}
        pinned = httpx.post(
            f"{server.url}/classify",
            json={"text": "what a day"},
            headers={"x-kdgate-model": "classify-student@1"},
        )
        assert pinned.status_code == 200 and pinned.json()["model"] == "classify-student@1", pinned.text

        # The other gateway built nothing (one child ran each step), waited, and serves the same models.
        log = (tmp_path / "fresh" / "build" / "build.log").read_text()
        assert log.count("building the classify teacher") == 1, log
        wait_until(
            lambda: (
                not httpx.get(f"{other.url}/admin/build", headers=other.admin_headers()).json()["running"]
            ),
            timeout=60,
            what="the other gateway's end of the build",
        )
        for model in ("classify-teacher@1", "classify-student@1"):
            served = httpx.post(
                f"{other.url}/classify", json={"text": "a"}, headers={"x-kdgate-model": model}
            )
            assert served.status_code == 200 and served.json()["model"] == model, served.text
    finally:
        try:
            server.stop()
        finally:
            other.stop()
