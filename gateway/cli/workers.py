"""`kdgate serve --workers N`: N gateway processes on one port, under a small supervisor.

Each worker is a whole gateway (`create_app`, its own models, event loop and lifespan) that binds its
own socket to the port with `SO_REUSEPORT`: the kernel spreads incoming connections over the workers'
sockets, and a worker that dies takes only its own socket (and the connections queued on it) along.
The workers share the state dir as replicas do: the split and shadow rates (statestore/), one rollout
controller (rollout/lease.py), one shadow teacher (gateway/shadow/lease.py), and the judge sums every
worker's live window (gateway/rollouts/published.py).

Why our own supervisor rather than uvicorn's `workers=`: uvicorn shares one listening socket (a busy
worker's accept queue is not balanced) and spawns workers with multiprocessing, which re-imports the
whole CLI in each; here each worker is a plain child (`python -m gateway.cli.workers SPEC`) that joins
the port only once its models are loaded, so a replacement never answers 503 while the others could
answer, and the supervisor's whole job is the few lines below.

The workers' metrics live in files under one `PROMETHEUS_MULTIPROC_DIR` the supervisor makes for them
(gateway/serving/metrics.py), so `/metrics` on any worker reports the whole machine once; a dead
worker's counters stay counted, its live gauges are dropped.

The supervisor binds the port first without listening (it reserves the port, so `--port 0` works and a
busy port is refused before any worker starts), starts the workers, restarts one that dies (with a log
line, and with a growing pause when one dies young over and over), and forwards SIGTERM/SIGINT to
them, waits for their graceful stop, and exits. Workers watch their parent: if the supervisor is killed
(-9), they stop on their own.

Example::

    kdgate serve --workers 2 --port 8000    # or KDGATE_WORKERS=2
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from gateway.serving.metrics import MULTIPROC_ENV

log = logging.getLogger("kdgate.workers")

POLL_S = 0.2  # how often the supervisor looks at its workers
YOUNG_S = 10.0  # a worker that dies younger than this is restarted after a growing pause...
MAX_YOUNG_DEATHS = 5  # ...and after this many such deaths in a row the supervisor gives up
STOP_GRACE_S = 30.0  # a worker told to stop gets this long (uvicorn's 10 s, the shadow's drain) before -9


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (not listening yet)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class WorkerSpec:
    """What a worker needs to build the settings its supervisor validated (the environment it inherits
    does the rest)."""

    state_dir: str
    host: str
    port: int
    workers: int
    build: bool  # build missing default models (the first worker only: one build per machine)
    config: str | None = None
    supervisor: int = 0  # the supervisor's pid: a worker whose parent changes stops

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway.cli.workers", json.dumps(self.__dict__)]


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    young_deaths: int = 0


def supervise(spec: WorkerSpec) -> int:
    """Runs `spec.workers` workers on `spec.host:spec.port` until SIGTERM/SIGINT; the exit code."""
    try:
        reserve = reuseport_socket(spec.host, spec.port)
    except OSError as exc:
        log.error("cannot bind %s:%d: %s", spec.host, spec.port, exc)
        return 1
    port = reserve.getsockname()[1]
    base = WorkerSpec(**{**spec.__dict__, "port": port, "supervisor": os.getpid()})
    stop: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Fresh per start, as a single process's counters are: a restarted machine starts from zero.
    metrics_dir = tempfile.mkdtemp(prefix="kdgate-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}

    def spawn(index: int) -> subprocess.Popen[bytes]:
        worker = WorkerSpec(**{**base.__dict__, "build": base.build and index == 0})
        # A process group of its own: a Ctrl-C reaches the supervisor alone, which stops the workers once.
        return subprocess.Popen(worker.command(), process_group=0, env=env)

    workers = [Worker(i, spawn(i), time.monotonic()) for i in range(spec.workers)]
    log.info("%d workers on %s:%d: pids %s", spec.workers, spec.host, port, [w.proc.pid for w in workers])
    code = 0
    restart_at: dict[int, float] = {}
    while not stop:
        time.sleep(POLL_S)
        now = time.monotonic()
        for w in workers:
            if w.index in restart_at:
                if now >= restart_at[w.index] and not stop:
                    del restart_at[w.index]
                    w.proc, w.started = spawn(w.index), now
                    log.warning("worker %d restarted: pid %d", w.index, w.proc.pid)
                continue
            status = w.proc.poll()
            if status is None:
                continue
            why = f"signal {-status}" if status < 0 else f"exit code {status}"
            mark_process_dead(w.proc.pid, metrics_dir)
            w.young_deaths = w.young_deaths + 1 if now - w.started < YOUNG_S else 0
            if w.young_deaths >= MAX_YOUNG_DEATHS:
                log.error(
                    "worker %d died young %d times in a row (%s): giving up", w.index, w.young_deaths, why
                )
                stop.append(signal.SIGTERM)
                code = 1
                break
            pause = 0.0 if not w.young_deaths else min(2.0**w.young_deaths, 30.0)
            log.warning(
                "worker %d (pid %d) died (%s); a replacement starts in %.0f s",
                w.index,
                w.proc.pid,
                why,
                pause,
            )
            restart_at[w.index] = now + pause
    log.info("stopping %d workers", len(workers))
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d (pid %d) did not stop in time: killed", w.index, w.proc.pid)
            w.proc.kill()
            w.proc.wait()
    reserve.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def _watch_parent(supervisor: int) -> None:
    """Stops this worker (as SIGTERM does) once its supervisor is gone."""
    while os.getppid() == supervisor:
        time.sleep(1.0)
    log.warning("the supervisor (pid %d) is gone: stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def run_worker(spec: WorkerSpec) -> None:
    """One worker: the settings as `kdgate serve` builds them, the app on a SO_REUSEPORT socket."""
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import load_settings

    config = Path(spec.config) if spec.config is not None else None
    settings = load_settings(
        config, state_dir=Path(spec.state_dir), host=spec.host, port=spec.port, workers=spec.workers
    )
    if not spec.build:
        settings = settings.model_copy(update={"build_missing_models": False})
    threading.Thread(target=_watch_parent, args=(spec.supervisor,), daemon=True, name="watch-parent").start()
    sock = reuseport_socket(spec.host, spec.port)  # listened on once the lifespan has loaded the models
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            log_level="info",
            access_log=settings.access_log,
            timeout_graceful_shutdown=10,
        )
    )
    server.run(sockets=[sock])


def main(argv: list[str]) -> None:
    from gateway.cli.common import offline

    offline()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(name)s: %(message)s"
    )
    fields: dict[str, Any] = json.loads(argv[1])
    run_worker(WorkerSpec(**fields))


if __name__ == "__main__":
    main(sys.argv)
