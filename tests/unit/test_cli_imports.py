"""The operator CLI starts without the model libraries: `kdgate rollout status` must not pay the ~3 s
that importing torch, transformers and the gateway costs (commands that need them import them)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "onnxruntime", "fastapi", "pyarrow")


def test_importing_the_cli_loads_no_model_library() -> None:
    probe = f"import sys, gateway.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == ""
