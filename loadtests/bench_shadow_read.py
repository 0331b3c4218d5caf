"""Reading a shadow log from an S3 API: `read_shadow` (segments fetched whole, a batch at a time,
concurrently) against the control of reading the same segments one by one with `pq.read_table`.

    .venv/bin/python -m loadtests.bench_shadow_read [--replicas 3] [--records 800] [--flush-rows 8]

Each of `--replicas` writers puts `--records` classify records into a bucket on `moto_server` (a real
S3 API over HTTP, its own process on 127.0.0.1), in segments of `--flush-rows` records: the small
segments of a busy gateway with a short flush interval. Then both readers read every record, the two
interleaved over `--rounds` rounds, in this process. moto answers from Python, one request at a time
per connection, so a real S3 serves concurrent requests better: the ratio is a lower bound.

Writes loadtests/results/bench_shadow_read.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distill.shadowlog.reader import FETCH_BATCH, read_shadow
from distill.shadowlog.segments import list_segments, task_dir
from distill.shadowlog.writer import ShadowLogWriter
from loadtests._moto import moto_bucket


def record(i: int) -> dict[str, object]:
    """A classify record as a gateway's shadow writes it: a tweet-sized text, three logits."""
    return {
        "request_id": f"r{i}",
        "ts": time.time(),
        "served_model": "classify-student@1",
        "teacher_model": "classify-teacher@1",
        "input_text": f"a tweet-sized input text, number {i}, about the weather and the trains today",
        "served_label": "positive",
        "served_probs": [0.1, 0.2, 0.7],
        "teacher_logits": [-1.0, 0.5, 2.0],
        "agree": i % 4 != 0,
        "kl": 0.01 * (i % 5),
        "latency_ms": 3.5,
    }


def one_by_one(url: str) -> int:
    """The control: every segment read on its own, as `read_shadow` did before it fetched in batches."""
    fs, directory = task_dir(url, "classify")
    tables = [pq.read_table(seg.path, filesystem=fs) for seg in list_segments(fs, directory)]
    return pa.concat_tables(tables).num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--records", type=int, default=800, help="per replica")
    parser.add_argument("--flush-rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_shadow_read.json"))
    args = parser.parse_args()

    with moto_bucket("bench") as bucket:
        url = f"{bucket}/shadow"
        for replica in range(args.replicas):
            with ShadowLogWriter(url, "classify", replica=f"r{replica}", flush_rows=args.flush_rows) as w:
                for i in range(args.records):
                    w.append(record(i))
        fs, directory = task_dir(url, "classify")
        segments = len(list_segments(fs, directory))
        batched, control = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            rows = read_shadow(url, "classify").num_rows
            batched.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert one_by_one(url) == rows == args.replicas * args.records
            control.append(time.perf_counter() - started)
    result = {
        "segments": segments,
        "records": args.replicas * args.records,
        "fetch_batch": FETCH_BATCH,
        "read_shadow_s_median": round(statistics.median(batched), 3),
        "one_by_one_s_median": round(statistics.median(control), 3),
        "read_shadow_s_all": [round(s, 3) for s in batched],
        "one_by_one_s_all": [round(s, 3) for s in control],
    }
    result["speedup"] = round(result["one_by_one_s_median"] / result["read_shadow_s_median"], 2)
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
