"""Open Inference Protocol v2 (KServe, Triton) bodies for classification: the pydantic schemas, the
reading of a request's text tensor (JSON `data` or the binary tensor extension), and the writing of the
`label` and `probabilities` outputs. Pure: bytes and arrays in, bytes and arrays out; errors are
`InvalidInput` naming the field at fault.

The binary tensor extension: the body is the JSON header (its length in the `Inference-Header-Content-
Length` header) followed by the tensors' raw bytes, each tensor's size in its `parameters.binary_data_size`.
A BYTES tensor is its elements, each a 4-byte little-endian length then the bytes; FP32 is little-endian.

Example::

    >>> body = b'{"id": "7", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}'
    >>> request, texts = read_infer(body)
    >>> request.id, texts
    ('7', ['hi'])
    >>> read_bytes_tensor(write_bytes_tensor(["a", "bé"]), "x")
    ['a', 'bé']
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, StrictStr, ValidationError

from gateway.errors import InvalidInput, MalformedRequest

INPUT = "text"
LABEL, PROBABILITIES = "label", "probabilities"
OUTPUTS = (LABEL, PROBABILITIES)
MAX_ID_CHARS = 256
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class InputTensor(BaseModel):
    name: StrictStr
    datatype: StrictStr
    shape: list[int]
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(BaseModel):
    name: StrictStr
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """An inference request. Fields v2 defines and this model does not use are accepted and ignored."""

    # Echoed in the `x-request-id` header too: printable ASCII only, as a header value must be.
    id: StrictStr | None = Field(None, max_length=MAX_ID_CHARS, pattern=r"^[\x20-\x7e]*$")
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None

    def binary_output(self, output: str) -> bool:
        """Whether `output` goes in binary: its own `binary_data` parameter, else the request's
        `binary_data_output` (tritonclient sets one or the other; plain JSON clients neither)."""
        default = bool(self.parameters.get("binary_data_output", False))
        for requested in self.outputs or []:
            if requested.name == output:
                return bool(requested.parameters.get("binary_data", default))
        return default


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]


def model_metadata(name: str, versions: list[str], labels: list[str]) -> ModelMetadata:
    """What a classify model (or the task alias) takes and gives; `parameters.labels` orders the
    columns of `probabilities`."""
    return ModelMetadata(
        name=name,
        versions=versions,
        platform="kdgate",
        inputs=[TensorMetadata(name=INPUT, datatype="BYTES", shape=[-1])],
        outputs=[
            TensorMetadata(name=LABEL, datatype="BYTES", shape=[-1]),
            TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, len(labels)]),
        ],
        parameters={"labels": labels},
    )


def _field(location: tuple[int | str, ...]) -> str:
    """('inputs', 0, 'shape') -> 'inputs[0].shape'"""
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def read_infer(body: bytes, header_length: int | None = None) -> tuple[InferRequest, list[str]]:
    """The request and its texts: one BYTES input `text` of shape [N] or [N, 1]. `header_length` is the
    JSON header's size when the body carries binary tensors."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InvalidInput(f"{header_length} is not within the body's {len(body)} bytes", field="header")
    head, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        request = InferRequest.model_validate_json(head)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise MalformedRequest(f"not valid JSON: {first['msg']}", field="body") from None
        raise InvalidInput(first["msg"], field=_field(tuple(first["loc"]))) from None
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected one input '{INPUT}', got {len(request.inputs)}", field="inputs")
    for i, output in enumerate(request.outputs or []):
        if output.name not in OUTPUTS:
            raise InvalidInput(
                f"unknown output {output.name!r}; outputs are {list(OUTPUTS)}", f"outputs[{i}].name"
            )
    return request, _texts(request.inputs[0], binary)


def _texts(tensor: InputTensor, binary: bytes) -> list[str]:
    where = "inputs[0]"
    if tensor.name != INPUT:
        raise InvalidInput(f"unknown input {tensor.name!r}; the input is '{INPUT}'", f"{where}.name")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"must be BYTES (texts), got {tensor.datatype}", f"{where}.datatype")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
        raise InvalidInput(f"must be [N] or [N, 1], got {shape}", f"{where}.shape")
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise InvalidInput(
                f"{size!r} does not match the {len(binary)} bytes after the JSON header",
                f"{where}.parameters.binary_data_size",
            )
        texts = read_bytes_tensor(binary, where)
    else:
        if binary:
            raise InvalidInput(
                f"{len(binary)} bytes follow the JSON header but no tensor claims them", "body"
            )
        texts = _json_texts(tensor.data, f"{where}.data")
    if len(texts) != shape[0]:
        raise InvalidInput(f"shape {shape} holds {shape[0]} texts, the data {len(texts)}", f"{where}.shape")
    return texts


def _json_texts(data: Any, where: str) -> list[str]:
    """JSON `data` of [N] or [N, 1]: flat (v2's row-major form) or nested one level."""
    if not isinstance(data, list):
        raise InvalidInput("must be a list of strings", where)
    flat = [item for row in data for item in (row if isinstance(row, list) else [row])]
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidInput(f"must be a list of strings; element {i} is {type(item).__name__}", where)
    return flat


def read_bytes_tensor(raw: bytes, where: str) -> list[str]:
    """The elements of a binary BYTES tensor, decoded as UTF-8."""
    texts, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise InvalidInput("binary data ends inside an element's length", where)
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise InvalidInput("binary data ends inside an element", where)
        try:
            texts.append(raw[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"element {len(texts)} is not UTF-8 text", where) from None
        offset += length
    return texts


def write_bytes_tensor(texts: list[str]) -> bytes:
    return b"".join(_LENGTH.pack(len(b)) + b for b in (t.encode("utf-8") for t in texts))


def write_infer(
    request: InferRequest,
    model_name: str,
    model_version: str,
    request_id: str,
    labels: list[str],
    probs: np.ndarray,
) -> tuple[bytes, int | None]:
    """The response body for `probs` (N, C), with the requested outputs (all when none are named), and
    the JSON header's length when binary tensors follow it (else None: the body is JSON)."""
    names = [o.name for o in request.outputs] if request.outputs else list(OUTPUTS)
    n = probs.shape[0]
    predicted = [labels[int(i)] for i in probs.argmax(axis=1)]  # (N,)
    outputs, chunks = [], []
    for name in names:
        if name == LABEL:
            datatype, shape, values, raw = "BYTES", [n], predicted, write_bytes_tensor(predicted)
        else:
            fp32 = np.ascontiguousarray(probs, dtype="<f4")  # (N, C)
            datatype, shape, values, raw = "FP32", list(fp32.shape), fp32.ravel().tolist(), fp32.tobytes()
        if request.binary_output(name):
            outputs.append(
                OutputTensor(
                    name=name, datatype=datatype, shape=shape, parameters={"binary_data_size": len(raw)}
                )
            )
            chunks.append(raw)
        else:
            outputs.append(OutputTensor(name=name, datatype=datatype, shape=shape, data=values))
    response = InferResponse(
        model_name=model_name, model_version=model_version, id=request_id, outputs=outputs
    )
    head = response.model_dump_json(exclude_none=True).encode()
    return (head + b"".join(chunks), len(head)) if chunks else (head, None)
