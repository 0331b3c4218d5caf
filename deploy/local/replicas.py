"""Gateway replicas: `kdgate serve` child processes, each with its own state dir, port and settings.

Settings go as `KDGATE_*` variables, as a Deployment's env would set them. The child runs the code of
this checkout (PYTHONPATH), not whichever one the venv's `kdgate` script was installed from, and never
builds models (`--no-build`): a replica serves what the registry holds. Its output goes to a log
(`<state_dir>/gateway.log` by default), whose tail is in the error when it does not become ready.

Example::

    replica = start_replica("replica-1", tmp / "r1", {"store": "postgresql://..."}, free_port())
    wait_ready(replica)
    replica.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.local.processes import log_tail, stop_process

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Replica:
    replica_id: str
    port: int
    state_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as haproxy and Prometheus name it."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """A graceful stop (SIGTERM: uvicorn drains, the shadow flushes), SIGKILL if it hangs."""
        stop_process(self.process, timeout=20)


def kdgate_program() -> str:
    """The `kdgate` script beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("kdgate")
    found = str(beside) if beside.exists() else shutil.which("kdgate")
    if found is None:
        raise RuntimeError("the kdgate program is not installed (pip install -e . in this checkout)")
    return found


def setting_value(value: object) -> str:
    """A setting as pydantic-settings reads it from the environment: strings as they are, the rest JSON.

    >>> setting_value(False), setting_value(2.0), setting_value({"a": 1}), setting_value("x")
    ('false', '2.0', '{"a": 1}', 'x')
    """
    return value if isinstance(value, str) else str(value) if isinstance(value, Path) else json.dumps(value)


def start_replica(
    replica_id: str,
    state_dir: Path,
    settings: Mapping[str, object],
    port: int,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Replica:
    """`kdgate serve` on 127.0.0.1:`port`, started (not yet ready: see `wait_ready`). `env`: extra
    variables, e.g. the AWS ones that point s3fs at the object store; `log`: where its output goes
    (default `<state_dir>/gateway.log`)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    variables = {**os.environ, **(env or {})}
    variables |= {f"KDGATE_{name.upper()}": setting_value(v) for name, v in settings.items()}
    variables["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # The port from the environment, as a container gets it: `serve` takes the setting where no flag is given.
    variables["KDGATE_PORT"] = str(port)
    command = [kdgate_program(), "serve", "--state-dir", str(state_dir), "--no-build"]
    log = log or state_dir / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=variables, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Replica(replica_id, port, state_dir, process, log)


def wait_ready(replica: Replica, timeout: float = 120.0) -> None:
    """Until its `/readyz` answers 200 (its models are loaded); RuntimeError with its log's tail if it
    exits or time runs out (on 2 shared cores, importing torch and loading the models takes 10-30 s)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if replica.process.poll() is not None:
            raise RuntimeError(
                f"{replica.replica_id} exited with {replica.process.returncode}:\n{log_tail(replica.log)}"
            )
        try:
            answer = httpx.get(f"{replica.url}/readyz", timeout=2)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{replica.replica_id} was not ready within {timeout:g} s (last: {last}):\n"
                + log_tail(replica.log)
            )
        time.sleep(0.2)
