"""Child processes of the local topology: free ports, a program that must be installed, stopping
(terminate, then kill), waiting for an HTTP endpoint, and the tail of a log for error messages.

The children run in sessions of their own (`start_new_session=True`): a Ctrl-C at the terminal reaches
the launcher only, which then stops them in order (haproxy before the replicas it balances)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx


class MissingBinary(RuntimeError):
    """A server program the topology needs is not installed (the message says which package has it)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's pick; a race with another process is possible but rare)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def require_binary(name: str, package: str) -> str:
    """The path of program `name`, or MissingBinary naming the Debian package that installs it."""
    found = shutil.which(name)
    if found is None:
        raise MissingBinary(f"the {name} binary is not installed (Debian package `{package}`)")
    return found


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout` seconds; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def wait_http_ok(
    url: str, process: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30.0
) -> None:
    """Until GET `url` answers 200; RuntimeError with the log's tail if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer 200 at {url} within {timeout:g} s:\n{log_tail(log)}")
        time.sleep(0.1)
