"""The floor control for the gateway-overhead benchmark: no framework at all.

An asyncio protocol on a bare socket reads just enough HTTP/1.1 (request line, content-length) to take
`{"text": ...}`, runs the same model on one worker thread and writes the label and probabilities. No
uvicorn, ASGI, routing or validation: what is left over in-process figures is the machine's own cost
of a request over loopback to a process that sleeps while its model runs (and its client, which does
too). It is not a server to use; it is the lowest overhead any Python HTTP wrapper can have here.

    .venv/bin/python -m loadtests.raw_wrapper --state-dir .kdgate --ref classify-teacher@1 --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from distill.classify.runner import Runner, load_runner
from distill.registry import Registry

HEALTHY = b'{"status":"ok"}'


class RawHTTP(asyncio.Protocol):
    def __init__(self, runner: Runner, worker: ThreadPoolExecutor) -> None:
        self.runner, self.worker = runner, worker
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.pending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return  # the body is still on its way
            body, self.buffer = rest[:length], rest[length:]
            if head.startswith(b"GET"):
                self._send(HEALTHY)
            else:
                task = asyncio.ensure_future(self._classify(body))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)

    async def _classify(self, body: bytes) -> None:
        text = json.loads(body)["text"]
        loop = asyncio.get_running_loop()
        (probs,) = await loop.run_in_executor(self.worker, self.runner.predict_batch, [text])
        labels = self.runner.manifest.labels
        self._send(
            json.dumps(
                {
                    "label": labels[int(probs.argmax())],
                    "probabilities": {label: float(p) for label, p in zip(labels, probs, strict=True)},
                }
            ).encode()
        )

    def _send(self, payload: bytes) -> None:
        assert self.transport is not None
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        self.transport.write(head % len(payload) + payload)


async def serve(state_dir: Path, ref: str, port: int) -> None:
    runner = load_runner(Registry(state_dir), ref, threads=1, prefer_onnx=True)  # as kdgate serves it
    worker = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawHTTP(runner, worker), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".kdgate"))
    parser.add_argument("--ref", required=True, help="model ref, e.g. classify-teacher@1")
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(serve(args.state_dir, args.ref, args.port))


if __name__ == "__main__":
    main()
