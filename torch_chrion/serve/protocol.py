"""The Open Inference Protocol (KServe v2) REST codec: requests to numpy arrays, arrays to
responses, JSON tensors and the binary tensor extension. No model and no server here.

A request body is JSON, or, with the ``Inference-Header-Content-Length: N`` header, N bytes of
JSON followed by the raw little-endian bytes of each input whose ``parameters.binary_data_size``
says how many. Outputs are answered as JSON unless the request asks for binary
(``parameters.binary_data_output`` on the request, or ``parameters.binary_data`` on an output).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

HEADER_LENGTH = "inference-header-content-length"

# v2 datatype <-> numpy dtype (BYTES, strings, is not a tensor type a recurrent model takes)
DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def datatype_of(dtype: np.dtype) -> str:
    """The v2 datatype name of a numpy dtype."""
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise RequestError(f"dtype {dtype} has no Open Inference Protocol datatype") from None


@dataclasses.dataclass
class InferRequest:
    """A decoded request: input arrays by name, in the order they came."""

    inputs: dict[str, np.ndarray]
    id: str | None
    binary_outputs: set[str]
    all_binary: bool


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object with an 'inputs' list")
    return body


def _shape(entry: Mapping[str, Any], name: str) -> list[int]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise RequestError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return shape


def _array(entry: Mapping[str, Any], binary: memoryview | None, name: str) -> np.ndarray:
    shape = _shape(entry, name)
    datatype = entry.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(
            f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}"
        )
    dtype = DATATYPES[datatype].newbyteorder("<")
    count = int(np.prod(shape))
    if binary is not None:
        if len(binary) != count * dtype.itemsize:
            raise RequestError(
                f"input {name!r}: {len(binary)} binary bytes for shape {shape} of {datatype} "
                f"({count * dtype.itemsize} expected)"
            )
        return np.frombuffer(binary, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)
    if "data" not in entry:
        raise RequestError(f"input {name!r} has neither 'data' nor binary data")
    try:
        array = np.asarray(entry["data"], dtype=DATATYPES[datatype])
    except (TypeError, ValueError) as exc:
        raise RequestError(f"input {name!r}: data does not read as {datatype}: {exc}") from None
    if array.size != count:
        raise RequestError(f"input {name!r}: {array.size} values for shape {shape}")
    return array.reshape(shape)


def decode_request(raw: bytes, headers: Mapping[str, str]) -> InferRequest:
    """Decode an infer request body.

    Raises:
        RequestError: malformed JSON or binary layout, a bad shape or datatype, naming the input.
    """
    header_length = headers.get(HEADER_LENGTH)
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise RequestError(
                f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
            ) from None
        if not 0 < split <= len(raw):
            raise RequestError(f"{HEADER_LENGTH} {split} is outside the {len(raw)}-byte body")
        body, rest = _json_object(raw[:split]), memoryview(raw)[split:]
    else:
        body, rest = _json_object(raw), memoryview(b"")
    entries = body.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise RequestError("the request must have a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise RequestError("every input must be an object with a 'name'")
        name = entry["name"]
        if name in inputs:
            raise RequestError(f"input {name!r} is given twice")
        size = (entry.get("parameters") or {}).get("binary_data_size")
        binary = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise RequestError(f"input {name!r}: binary_data_size {size!r} overruns the body")
            binary, offset = rest[offset : offset + size], offset + size
        inputs[name] = _array(entry, binary, name)
    if offset != len(rest):
        raise RequestError(f"{len(rest) - offset} binary bytes after the last input")
    outputs = body.get("outputs") or []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise RequestError("'outputs' must be a list of objects with a 'name'")
    request_id = body.get("id")
    return InferRequest(
        inputs=inputs,
        id=str(request_id) if request_id is not None else None,
        binary_outputs={
            o["name"] for o in outputs if (o.get("parameters") or {}).get("binary_data")
        },
        all_binary=bool((body.get("parameters") or {}).get("binary_data_output")),
    )


def encode_response(
    model_name: str, request: InferRequest, outputs: Sequence[tuple[str, np.ndarray]]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (content type, and the JSON length for binary)."""
    entries, chunks = [], []
    for name, array in outputs:
        array = np.ascontiguousarray(array)
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype_of(array.dtype),
        }
        if request.all_binary or name in request.binary_outputs:
            data = array.astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    header = json.dumps(body).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def encode_binary_request(
    inputs: Mapping[str, np.ndarray], *, binary_output: bool = True, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A client-side helper (tests, bench): a binary-extension infer request."""
    entries, chunks = [], []
    for name, array in inputs.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        entries.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array.dtype),
                "parameters": {"binary_data_size": len(data)},
            }
        )
        chunks.append(data)
    body: dict[str, Any] = {"inputs": entries, "parameters": {"binary_data_output": binary_output}}
    if request_id is not None:
        body["id"] = request_id
    header = json.dumps(body).encode()
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def decode_response(raw: bytes, headers: Mapping[str, str]) -> dict[str, np.ndarray]:
    """A client-side helper: output arrays by name from a response (JSON or binary)."""
    length = headers.get(HEADER_LENGTH)
    split = int(length) if length is not None else len(raw)
    body = json.loads(raw[:split])
    rest, offset, outputs = memoryview(raw)[split:], 0, {}
    for entry in body["outputs"]:
        dtype = DATATYPES[entry["datatype"]]
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data = np.frombuffer(rest[offset : offset + size], dtype=dtype.newbyteorder("<"))
            offset += size
        else:
            data = np.asarray(entry["data"], dtype=dtype)
        outputs[entry["name"]] = data.astype(dtype).reshape(entry["shape"])
    return outputs
