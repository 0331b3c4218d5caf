"""Open Inference Protocol v2 tensors (gateway/http/tensors.py): reading texts from JSON and binary
bodies, writing label and probabilities, and errors naming the field."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from gateway.errors import InvalidInput, MalformedRequest
from gateway.http.tensors import read_bytes_tensor, read_infer, write_bytes_tensor, write_infer

LABELS = ["negative", "neutral", "positive"]


def _json(**tensor: object) -> bytes:
    base = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
    return json.dumps({"inputs": [{**base, **tensor}]}).encode()


def _binary(texts: list[str], size_delta: int = 0, extra: bytes = b"") -> tuple[bytes, int]:
    raw = write_bytes_tensor(texts)
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)]}
    tensor["parameters"] = {"binary_data_size": len(raw) + size_delta}
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + raw + extra, len(head)


def test_texts_from_json_flat_or_as_a_column() -> None:
    assert read_infer(_json())[1] == ["a", "b"]
    assert read_infer(_json(shape=[2, 1], data=[["a"], ["b"]]))[1] == ["a", "b"]


def test_texts_from_the_binary_extension() -> None:
    texts = ["héllo", "", "x" * 300]
    assert read_infer(*_binary(texts))[1] == texts


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_json(name="words"), "inputs[0].name"),
        (_json(datatype="FP32"), "inputs[0].datatype"),
        (_json(shape=[1, 2]), "inputs[0].shape"),
        (_json(shape=[3]), "inputs[0].shape"),
        (_json(data=[1, 2]), "inputs[0].data"),
        (_json(data="a b"), "inputs[0].data"),
        (_json(shape="2"), "inputs[0].shape"),
        (b'{"inputs": []}', "inputs"),
        (b'{"id": 3, "inputs": []}', "id"),
        (b"{}", "inputs"),
    ],
)
def test_bad_json_tensors_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        read_infer(body)
    assert raised.value.field == field


def test_bad_binary_tensors_name_the_field() -> None:
    for body, length, field in (
        (*_binary(["ab"], size_delta=1), "inputs[0].parameters.binary_data_size"),
        (*_binary(["ab"], extra=b"zz"), "inputs[0].parameters.binary_data_size"),
        (_binary(["ab"])[0], 10_000, "header"),
    ):
        with pytest.raises(InvalidInput) as raised:
            read_infer(body, length)
        assert raised.value.field == field
    with pytest.raises(InvalidInput, match="inside an element"):
        read_bytes_tensor(struct.pack("<I", 5) + b"ab", "x")
    with pytest.raises(InvalidInput, match="UTF-8"):
        read_bytes_tensor(struct.pack("<I", 1) + b"\xff", "x")
    with pytest.raises(MalformedRequest):
        read_infer(b"{nope")


def test_outputs_in_json_by_default_and_binary_when_asked() -> None:
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=np.float32)  # (2, 3)
    request, _ = read_infer(_json())
    body, length = write_infer(request, "classify-student", "1", "r1", LABELS, probs)
    assert length is None
    label, probabilities = json.loads(body)["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "negative"]}
    assert probabilities["shape"] == [2, 3] and np.allclose(probabilities["data"], probs.ravel())

    asked = json.loads(_json())
    asked["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    request, _ = read_infer(json.dumps(asked).encode())
    body, length = write_infer(request, "classify-student", "1", "r1", LABELS, probs)
    assert length is not None
    head = json.loads(body[:length])
    [only] = head["outputs"]
    assert only["parameters"] == {"binary_data_size": probs.nbytes}
    assert np.array_equal(np.frombuffer(body[length:], dtype="<f4").reshape(2, 3), probs)
