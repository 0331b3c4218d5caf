"""INT8 quantization keeps ONNX Runtime's per-node chatter out of the logs (`kdgate serve`'s output)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from distill.classify.export import quantize_int8


def test_quantizing_logs_nothing_below_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, dst = tmp_path / "linear.onnx", tmp_path / "linear.int8.onnx"
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    torch.onnx.export(model, (torch.zeros(1, 64),), str(src), dynamo=False)
    caplog.set_level(logging.DEBUG)
    quantize_int8(src, dst)
    assert dst.exists()
    assert [r.getMessage() for r in caplog.records if "onnxruntime" in r.pathname] == []
    logging.getLogger().info("after quantizing")  # the filter is gone again: others still log
    assert caplog.records[-1].getMessage() == "after quantizing"
