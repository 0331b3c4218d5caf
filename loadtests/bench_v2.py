"""What the Open Inference Protocol v2 adapter costs over /classify: the same model, pinned, at
concurrency 1, with a real `kdgate serve` subprocess.

    .venv/bin/python -m loadtests.bench_v2 --state-dir .kdgate

Three ways to ask for one text's label, in alternating rounds so drift of the machine hits all alike:
native `POST /classify` (`x-kdgate-model` pin), v2 JSON (`POST /v2/models/<ref>/infer`, `data` and
outputs in JSON) and v2 binary (the binary tensor extension in and out, what `tritonclient.http` sends by
default). The client is one raw keep-alive connection (`LeanClient`), so the figures are the gateway's.
Overhead is reported two ways: client latency p50/p99 minus the native route's, and the handler's own
time (server-timing `handler` minus `queue` and `model`) minus the native handler's.
Writes loadtests/results/bench_v2.json. Client and server share the 2 cores: figures include that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.classify.build import load_split
from distill.classify.recipe import ClassifyRecipe
from loadtests._server import gateway
from loadtests.bench_gateway import LeanClient, server_timing


def bodies(route: str, ref: str, text: str) -> tuple[str, bytes, dict[str, str]]:
    """Path, body and headers of one request for `text` on `route` (native | v2-json | v2-binary)."""
    if route == "native":
        return "/classify", json.dumps({"text": text}).encode(), {"x-kdgate-model": ref}
    tensor: dict[str, Any] = {"name": "text", "datatype": "BYTES", "shape": [1]}
    if route == "v2-json":
        return f"/v2/models/{ref}/infer", json.dumps({"inputs": [{**tensor, "data": [text]}]}).encode(), {}
    raw = text.encode()
    element = struct.pack("<I", len(raw)) + raw
    tensor["parameters"] = {"binary_data_size": len(element)}
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return f"/v2/models/{ref}/infer", head + element, {"inference-header-content-length": str(len(head))}


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(values), "p99_ms": float(np.percentile(values, 99))}


def run(url: str, ref: str, texts: list[str], rounds: int, per_round: int) -> dict[str, Any]:
    routes = ("native", "v2-json", "v2-binary")
    latency: dict[str, list[float]] = {r: [] for r in routes}
    own: dict[str, list[float]] = {r: [] for r in routes}  # handler time outside queue and model
    with LeanClient(url) as client:
        for text in texts[:30]:  # warm-up
            for route in routes:
                client.request("POST", *bodies(route, ref, text))
        for round_ in range(rounds):
            for route in routes:
                for i in range(per_round):
                    text = texts[(round_ * per_round + i) % len(texts)]
                    started = time.perf_counter()
                    status, headers, _ = client.request("POST", *bodies(route, ref, text))
                    latency[route].append((time.perf_counter() - started) * 1000)
                    assert status == 200 and headers["x-kdgate-model"] == ref, (route, status)
                    timing = server_timing(headers["server-timing"])
                    own[route].append(timing["handler"] - timing["queue"] - timing["model"])
    out: dict[str, Any] = {}
    for route in routes:
        out[route] = {"latency": percentiles(latency[route]), "handler_own": percentiles(own[route])}
    for route in routes[1:]:
        out[f"{route}_overhead"] = {
            kind: {p: out[route][kind][p] - out["native"][kind][p] for p in ("p50_ms", "p99_ms")}
            for kind in ("latency", "handler_own")
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--ref", default="classify-student@1", help="the model every route is pinned to")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=100, help="requests per route per round")
    parser.add_argument("--note", default="", help="what the figures were taken on, kept with them")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_v2.json"))
    args = parser.parse_args()
    texts = load_split(ClassifyRecipe()).test.texts[:500]
    with gateway(args.state_dir, shadow_enabled=False) as url:
        result = run(url, args.ref, texts, args.rounds, args.per_round)
    result["setup"] = {"ref": args.ref, "rounds": args.rounds, "per_round": args.per_round, "note": args.note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
