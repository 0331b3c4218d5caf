"""The operator CLI starts without the model libraries: `kdgate rollout status` must not pay the ~3 s
that importing torch, transformers and the gateway costs (commands that need them import them). The
gateway itself imports torch with its first LM only: serving ONNX classifiers, a process (each of
`--workers N`, each replica) listens in about a second rather than five."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "onnxruntime", "fastapi", "pyarrow")


def _loaded_after(module: str, libraries: tuple[str, ...]) -> str:
    probe = f"import sys, {module}; print(','.join(m for m in {libraries!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_importing_the_cli_loads_no_model_library() -> None:
    assert _loaded_after("gateway.cli", HEAVY) == ""


def test_importing_the_gateway_loads_no_torch_or_training_code() -> None:
    assert _loaded_after("gateway.app", ("torch", "transformers", "distill.classify.build")) == ""
