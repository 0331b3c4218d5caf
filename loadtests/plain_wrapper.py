"""The control for the gateway-overhead benchmark: the plainest FastAPI wrapper around the same model.

One endpoint, no router, shadow, metrics or batching: the request's text goes to the model on one worker
thread (never on the event loop, as in kdgate) and the label and probabilities come back. Measured by
the same client in the same rounds as kdgate, it separates what kdgate adds from what any HTTP wrapper
adds on this machine (client, loopback, uvicorn, FastAPI, waking a sleeping process).

    .venv/bin/python -m loadtests.plain_wrapper --state-dir .kdgate --ref classify-teacher@1 --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from distill.classify.runner import load_runner
from distill.registry import Registry


class TextIn(BaseModel):
    text: str


def create_app(state_dir: Path, ref: str) -> FastAPI:
    runner = load_runner(Registry(state_dir), ref, threads=1, prefer_onnx=True)  # as kdgate serves it
    labels = runner.manifest.labels
    worker = ThreadPoolExecutor(max_workers=1)
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/classify")
    async def classify(body: TextIn) -> dict[str, object]:
        (probs,) = await asyncio.get_running_loop().run_in_executor(worker, runner.predict_batch, [body.text])
        return {
            "label": labels[int(probs.argmax())],
            "probabilities": {label: float(p) for label, p in zip(labels, probs, strict=True)},
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--ref", required=True, help="model ref, e.g. classify-teacher@1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    uvicorn.run(
        create_app(args.state_dir, args.ref),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
