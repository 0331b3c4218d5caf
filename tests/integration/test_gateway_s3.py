"""A gateway with its registry and shadow log on a real S3 API (moto in server mode): it serves models
another state dir published, pulled into its own cache; a model whose object is missing is refused by
name while the loaded ones serve; an unreachable bucket costs counted shadow drops, no client error, and
the log resumes when the bucket is back."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx

from deploy.local.s3 import S3Server
from deploy.local.seed import publish_all
from distill.registry import MANIFEST
from distill.shadowlog.reader import read_shadow
from tests.support import metric_sum, poll, send_keyed, start_server

TEACHER, STUDENT = "classify-teacher@1", "classify-student@1"


def logged_ids(url: str) -> set[str]:
    return set(read_shadow(url, "classify", columns=["request_id"])["request_id"].to_pylist())


def test_a_gateway_on_s3_serves_pulled_models_and_survives_a_bucket_outage(
    built_state: Path, s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    registry_url, shadow_url = f"{s3_bucket}/models", f"{s3_bucket}/shadow"
    builder = publish_all(built_state, tmp_path / "builder", registry_url)
    replica = tmp_path / "replica"
    server = start_server(
        replica,
        registry_url=registry_url,
        shadow_url=shadow_url,
        shadow_flush_rows=8,
        shadow_flush_seconds=0.2,
    )
    try:
        assert (replica / "cache" / "models" / "classify-student" / "1" / MANIFEST).exists()
        assert not (replica / "models" / "classify-student").exists()
        headers = server.admin_headers()
        split = {"weights": {STUDENT: 50, TEACHER: 50}}
        assert (
            httpx.put(f"{server.url}/admin/traffic/classify", json=split, headers=headers).status_code == 200
        )
        before = asyncio.run(send_keyed(server.url, 20, "before"))
        assert {r.status_code for r in before} == {200}
        poll(lambda: {r.headers["x-request-id"] for r in before} <= logged_ids(shadow_url), "records in S3")

        # A newer student whose weights object is gone: refused by name, the loaded models serve on.
        with builder.stage("classify-student") as staging:
            shutil.copytree(builder.path(STUDENT), staging.path, dirs_exist_ok=True)
            (staging.path / MANIFEST).unlink()
            newer = staging.commit(builder.get(STUDENT).model_copy(update={"version": 2}))
        missing = next(f for f in newer.files if f.endswith(".onnx"))
        bucket, prefix = s3_bucket.removeprefix("s3://"), "models/classify-student/2"
        s3_server.client().delete_object(Bucket=bucket, Key=f"{prefix}/{missing}")
        reload = httpx.post(f"{server.url}/admin/models/reload", headers=headers, timeout=60)
        assert reload.status_code == 503
        assert f"{s3_bucket}/{prefix}/{missing} is missing" in reload.json()["error"]["message"]
        pinned = httpx.post(
            f"{server.url}/classify", json={"text": "still here"}, headers={"x-kdgate-model": STUDENT}
        )
        assert pinned.status_code == 200

        s3_server.stop()
        try:
            during = asyncio.run(send_keyed(server.url, 240, "outage"))
            assert {r.status_code for r in during} == {200}
            poll(
                lambda: metric_sum(
                    httpx.get(f"{server.url}/metrics").text,
                    "kdgate_shadow_total",
                    outcome="dropped",
                    reason="storage",
                ),
                "shadow records dropped for storage",
            )
        finally:
            s3_server.restart()
        after = asyncio.run(send_keyed(server.url, 20, "after"))
        assert {r.status_code for r in after} == {200}
        poll(lambda: {r.headers["x-request-id"] for r in after} <= logged_ids(shadow_url), "records after")
    finally:
        server.stop()
