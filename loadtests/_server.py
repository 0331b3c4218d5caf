"""Start `kdgate serve` as a real subprocess on 127.0.0.1 for the benchmarks, and stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gateway(
    state_dir: Path, poll_s: float = 0.2, tree: Path | None = None, **settings: object
) -> Iterator[str]:
    """Yields the base URL of a ready gateway; settings become KDGATE_* environment variables. `tree`:
    the kdgate of another source tree (a git worktree of an older commit), for A/B runs."""
    port = free_port()
    env = {f"KDGATE_{k.upper()}": "none" if v is None else str(v) for k, v in settings.items()}
    kdgate = [str(Path(sys.executable).with_name("kdgate"))]
    if tree is not None:
        kdgate = [sys.executable, "-c", "from gateway.cli import app; app()"]
        env["PYTHONPATH"] = str(tree)
    cmd = [*kdgate, "serve", "--state-dir", str(state_dir), "--port", str(port), "--no-build"]
    with _serving(cmd, env, f"http://127.0.0.1:{port}", "/readyz", poll_s, tree) as url:
        yield url


@contextmanager
def control(module: str, state_dir: Path, ref: str, poll_s: float = 0.2) -> Iterator[str]:
    """Yields the base URL of a benchmark control server serving `ref`: `loadtests.plain_wrapper` (the
    plainest FastAPI wrapper) or `loadtests.raw_wrapper` (no framework at all)."""
    port = free_port()
    cmd = [sys.executable, "-m", module, "--state-dir", str(state_dir), "--ref", ref, "--port", str(port)]
    with _serving(cmd, {}, f"http://127.0.0.1:{port}", "/healthz", poll_s) as url:
        yield url


@contextmanager
def _serving(
    cmd: list[str],
    env: dict[str, str],
    url: str,
    ready_path: str,
    poll_s: float = 0.2,
    cwd: Path | None = None,
) -> Iterator[str]:
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    root = cwd or Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        cmd, env={**base, **env}, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become ready")
            time.sleep(poll_s)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def scratch_copy(state_dir: Path) -> Iterator[Path]:
    """A throwaway copy of a state dir (hard links: instant; the gateway replaces files, never edits)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kdgate-bench-") as tmp:
        target = Path(tmp) / "state"
        shutil.copytree(
            state_dir,
            target,
            copy_function=os.link,
            ignore=shutil.ignore_patterns("shadow", "rollout", "traffic.json"),
        )
        yield target


def admin_headers(state_dir: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {(state_dir / 'admin.token').read_text().strip()}"}
