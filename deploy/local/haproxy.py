"""haproxy (the Debian `haproxy` binary) balancing gateway replicas, as a Kubernetes Service would.

Round robin over the replicas; a replica is taken out after two failed `GET /readyz` checks one second
apart and put back after one good one, like a readiness probe. A request whose connection to a replica
fails is retried on another (`option redispatch`), so a replica going away costs no client error. A
stats page (`/stats`, `/stats;csv`) shows each replica's state. It runs in the foreground (`-db`) as a
child of this process; a missing binary raises `MissingBinary`.

Example::

    with Haproxy.start(["127.0.0.1:8001", "127.0.0.1:8002"], tmp / "haproxy") as proxy:
        httpx.post(f"{proxy.url}/classify", json={"text": "hello"})
"""

from __future__ import annotations

import contextlib
import csv
import io
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx

from deploy.local.processes import free_port, log_tail, require_binary, stop_process


def haproxy_config(port: int, stats_port: int, servers: list[str]) -> str:
    """The configuration: a frontend on 127.0.0.1:`port`, the replicas `servers` (host:port) behind it."""
    backends = "\n".join(
        f"    server replica-{i} {address} check" for i, address in enumerate(servers, start=1)
    )
    return f"""\
global
    maxconn 2048

defaults
    mode http
    option redispatch
    retries 2
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s

frontend kdgate
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 1
{backends}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


class Haproxy:
    def __init__(self, process: subprocess.Popen[bytes], port: int, stats_port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.stats_port = stats_port
        self.log = log

    @classmethod
    def start(cls, servers: list[str], home: Path) -> Haproxy:
        """Started, its configuration checked (`haproxy -c`) first so a bad one fails with its message."""
        binary = require_binary("haproxy", "haproxy")
        home.mkdir(parents=True, exist_ok=True)
        port, stats_port = free_port(), free_port()
        config = home / "haproxy.cfg"
        config.write_text(haproxy_config(port, stats_port, servers))
        checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy refused {config}:\n{checked.stdout}{checked.stderr}")
        log = home / "haproxy.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [binary, "-f", str(config), "-db"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(process, port, stats_port, log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server_states(self) -> dict[str, str]:
        """Each replica's state as haproxy's checks see it (`UP`, `DOWN`, ...), from the stats page."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2).text.lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            r["svname"]: r["status"]
            for r in rows
            if r["pxname"] == "replicas" and r["svname"].startswith("replica-")
        }

    def wait_all_up(self, timeout: float = 30.0) -> None:
        """Until every replica passes its health check (haproxy sends it no traffic before)."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{log_tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                states = self.server_states()
            if states and all(s == "UP" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy's replicas were not all UP within {timeout:g} s: {states}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> Haproxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
