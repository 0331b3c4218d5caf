"""Model pull time from an S3 API into a replica's cache, against copying the same folder on local disk.

    .venv/bin/python -m loadtests.bench_s3_pull --state-dir .kdgate [--models classify-teacher@1 ...]

Each model of the local registry in `--state-dir` is published to a bucket on `moto_server` (a real S3
API over HTTP, its own process on 127.0.0.1), then pulled `--rounds` times into a fresh state dir's
cache (`Registry.path`: download, sha256 of every file, rename into place). The control, in the same
run, is `shutil.copytree` of the model's folder plus the sha256 of its files: what a pull costs beyond
the transfer itself is then the S3 round trips. moto keeps objects in memory and answers from Python,
so a real S3 or MinIO is likely faster; the figure is an upper bound for a same-host store.

Writes loadtests/results/bench_s3_pull.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from distill.modelfiles import MANIFEST, file_digests
from distill.registry import Registry
from loadtests._moto import moto_bucket


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure(local: Registry, url: str, scratch: Path, ref: str, rounds: int) -> dict[str, Any]:
    """Publishes `ref` to `url`, then pulls it `rounds` times into fresh caches, each beside the control."""
    manifest = local.get(ref)
    started = time.perf_counter()
    with Registry(scratch / "publisher", url).stage(manifest.name) as staging:
        shutil.copytree(local.path(ref), staging.path, dirs_exist_ok=True)
        (staging.path / MANIFEST).unlink()
        staging.commit(manifest)
    publish_s = time.perf_counter() - started
    pulls, copies = [], []
    for i in range(rounds):
        replica = Registry(scratch / f"replica-{ref}-{i}", url)
        started = time.perf_counter()
        replica.path(ref)
        pulls.append(time.perf_counter() - started)
        started = time.perf_counter()
        copied = shutil.copytree(local.path(ref), scratch / f"copy-{ref}-{i}")
        file_digests(copied)
        copies.append(time.perf_counter() - started)
        shutil.rmtree(scratch / f"replica-{ref}-{i}")
        shutil.rmtree(copied)
    row = {
        "model": ref,
        "mb": round(size_mb(local.path(ref)), 1),
        "files": len(manifest.sha256) or len(list(local.path(ref).rglob("*"))),
        "publish_s": round(publish_s, 3),
        "pull_s_median": round(statistics.median(pulls), 3),
        "pull_s_all": [round(p, 3) for p in pulls],
        "local_copy_and_sha256_s_median": round(statistics.median(copies), 3),
    }
    row["pull_over_local"] = round(row["pull_s_median"] / row["local_copy_and_sha256_s_median"], 2)
    row["pull_mb_per_s"] = round(row["mb"] / row["pull_s_median"], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--models", nargs="*", help="refs (default: every model of the registry)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_s3_pull.json"))
    args = parser.parse_args()

    local = Registry(args.state_dir)
    scratch = Path(tempfile.mkdtemp(prefix="kdgate-s3-pull-"))
    results: list[dict[str, Any]] = []
    try:
        with moto_bucket("bench") as bucket:
            for ref in args.models or [m.ref for m in local.list() if m.kind == "model"]:
                results.append(measure(local, f"{bucket}/models", scratch, ref, args.rounds))
                print(json.dumps(results[-1]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "models": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
