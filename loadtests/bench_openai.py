"""What the OpenAI-compatible adapter costs over /generate: the same model, pinned, greedy, the same
number of tokens, at concurrency 1, with a real `kdgate serve` subprocess.

    .venv/bin/python -m loadtests.bench_openai --state-dir .kdgate

Two pairs, each an adapter route and its control on the native route, in alternating rounds so drift of
the machine hits all alike: `POST /v1/completions` against `POST /generate` with the same `prompt`, and
`POST /v1/chat/completions` against `POST /generate` with the same `messages`. Every answer must have
the same completion tokens as its control (greedy, fixed budget), so the difference is the adapter's.
The client is one raw keep-alive connection (`LeanClient`), so the figures are the gateway's.
Writes loadtests/results/bench_openai.json. Client and server share the 2 cores: figures include that.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from loadtests._server import gateway
from loadtests.bench_gateway import LeanClient
from loadtests.bench_v2 import percentiles

PROMPTS = [
    "The capital of France is",
    "Write one sentence about the sea.",
    "List three colours:",
    "A haiku about autumn:",
    "Explain what a neural network is in one line.",
]


def bodies(route: str, ref: str, prompt: str, max_tokens: int) -> tuple[str, bytes, dict[str, str]]:
    """Path, body and headers of one request for `prompt` on `route`."""
    common = {"max_tokens": max_tokens, "temperature": 0}
    messages = [{"role": "user", "content": prompt}]
    pin = {"x-kdgate-model": ref}
    if route == "native-prompt":
        return "/generate", json.dumps({"prompt": prompt, **common}).encode(), pin
    if route == "native-chat":
        return "/generate", json.dumps({"messages": messages, **common}).encode(), pin
    if route == "v1-completions":
        return "/v1/completions", json.dumps({"model": ref, "prompt": prompt, **common}).encode(), {}
    return "/v1/chat/completions", json.dumps({"model": ref, "messages": messages, **common}).encode(), {}


def completion_tokens(route: str, body: bytes) -> int:
    answer = json.loads(body)
    return int(answer["usage"]["completion_tokens"])


def run(url: str, ref: str, rounds: int, per_round: int, max_tokens: int) -> dict[str, Any]:
    pairs = {"v1-completions": "native-prompt", "v1-chat": "native-chat"}
    routes = [r for pair in pairs.items() for r in pair]
    latency: dict[str, list[float]] = {r: [] for r in routes}
    with LeanClient(url) as client:
        for prompt in PROMPTS:  # warm-up
            for route in routes:
                client.request("POST", *bodies(route, ref, prompt, max_tokens))
        for round_ in range(rounds):
            for i in range(per_round):
                prompt = PROMPTS[(round_ * per_round + i) % len(PROMPTS)]
                tokens: dict[str, int] = {}
                for route in routes:
                    started = time.perf_counter()
                    status, headers, body = client.request("POST", *bodies(route, ref, prompt, max_tokens))
                    latency[route].append((time.perf_counter() - started) * 1000)
                    assert status == 200 and headers["x-kdgate-model"] == ref, (route, status, body[:200])
                    tokens[route] = completion_tokens(route, body)
                for adapter, control in pairs.items():
                    assert tokens[adapter] == tokens[control], (adapter, tokens)  # the same work
    out: dict[str, Any] = {route: percentiles(values) for route, values in latency.items()}
    for adapter, control in pairs.items():
        out[f"{adapter}_overhead"] = {p: out[adapter][p] - out[control][p] for p in ("p50_ms", "p99_ms")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--ref", default="generate-teacher@1", help="the model every route is pinned to")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20, help="requests per route per round")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--note", default="", help="what the figures were taken on, kept with them")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_openai.json"))
    args = parser.parse_args()
    with gateway(args.state_dir, shadow_enabled=False) as url:
        result = run(url, args.ref, args.rounds, args.per_round, args.max_tokens)
    setup = {"rounds": args.rounds, "per_round": args.per_round, "max_tokens": args.max_tokens}
    result["setup"] = {"ref": args.ref, **setup, "note": args.note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
