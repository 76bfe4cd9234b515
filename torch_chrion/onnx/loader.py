"""Read an ONNX model from a path, bytes or ModelProto, check it and normalise its opsets."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx.checker
import onnx.defs
import onnx.external_data_helper
from google.protobuf.message import DecodeError

from ..errors import ModelError
from .opsets import default_opset, normalise_opsets

# onnx.checker.check_model refuses in-memory protos above protobuf's 2 GiB limit
_CHECK_IN_MEMORY_LIMIT = 2**31 - 1


def _read(model: str | os.PathLike | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The ModelProto with external data loaded, and a name for messages (the path for
    files)."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)  # never mutate the caller's proto
        if _uses_external_data(proto):
            raise ModelError(
                "the ModelProto references external data files that were not loaded; "
                "pass the model's path instead so they are read from its folder"
            )
        return proto, "<ModelProto>"
    if isinstance(model, (bytes, bytearray, memoryview)):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"the bytes given are not a valid ONNX model: {exc}") from exc
        if _uses_external_data(proto):
            raise ModelError(
                "the model bytes reference external data files; pass the model's path instead"
            )
        return proto, "<bytes>"
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such ONNX file")
        try:
            proto = onnx.load_model(str(path), load_external_data=False)
        except (
            DecodeError,
            ValueError,
            RuntimeError,
            OSError,
            onnx.checker.ValidationError,
        ) as exc:
            raise ModelError(f"{path}: not a readable ONNX model: {exc}") from exc
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
            raise ModelError(
                f"{path}: cannot read its external data (looked in {path.parent}): {exc}"
            ) from exc
        return proto, str(path)
    raise ModelError(f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(
        onnx.external_data_helper.uses_external_data(t)
        for t in onnx.external_data_helper._get_all_tensors(proto)
    )


def check_model(proto: onnx.ModelProto, name: str, path: Path | None = None) -> None:
    """onnx.checker with shape inference (full_check), no stricter than onnxruntime.

    The checker wants a ``shape`` on every main-graph input, output and value_info tensor
    type; onnxruntime reads a missing one as "rank unknown", and so do we: those are checked
    with an empty shape put in (a copy), and strict shape inference then runs on the model as
    it is. A model past protobuf's 2 GiB limit is checked through its file (the checker reads
    the external data itself, as strictly as it does) where there is one, else without shape
    inference.

    Raises:
        ModelError: the checker's message, prefixed by the model's name.
    """
    fits = proto.ByteSize() < _CHECK_IN_MEMORY_LIMIT
    try:
        if not fits and path is not None:
            onnx.checker.check_model(str(path), full_check=True)
            return
        onnx.checker.check_model(_with_declared_shapes(proto), full_check=False)
        if fits:
            onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"{name}: onnx.checker rejected the model: {exc}") from exc


def _with_declared_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model, or a copy in which every main-graph tensor type without a shape has an
    empty one (for the structural checker only: an empty shape means rank 0)."""
    graph = proto.graph
    bare = [
        i
        for i, value in enumerate((*graph.input, *graph.output, *graph.value_info))
        if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape")
    ]
    if not bare:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    values = (*copy.graph.input, *copy.graph.output, *copy.graph.value_info)
    for i in bare:
        values[i].type.tensor_type.shape.SetInParent()
    return copy


def _check_opset(proto: onnx.ModelProto, name: str) -> None:
    """Refuse a default-domain opset newer than the installed onnx defines (as onnxruntime
    refuses opsets newer than it supports): its operators' meaning is not known yet."""
    known = onnx.defs.onnx_opset_version()
    opset = default_opset(proto)
    if opset > known:
        raise ModelError(
            f"{name}: the model imports ONNX opset {opset}, newer than the latest this "
            f"installation knows (opset {known}, onnx {onnx.__version__}); export it at "
            f"opset {known} or lower"
        )


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Read, check and opset-normalise an ONNX model.

    Args:
        model: a path to an ``.onnx`` file (external data files are read relative to its
            folder), the serialised bytes, or a ModelProto (left unchanged; a copy is returned).

    Returns:
        A checked ModelProto whose default-domain opset torch_chrion can convert, brought
        down with ``onnx.version_converter`` where a converter for the model's own opset is
        missing.

    Raises:
        ModelError: the model cannot be read, fails onnx.checker, or imports an opset newer
            than the installed onnx knows.
        UnsupportedOperatorError: see :func:`torch_chrion.onnx.opsets.normalise_opsets`.
    """
    proto, name = _read(model)
    path = Path(name) if isinstance(model, (str, os.PathLike)) else None
    _check_opset(proto, name)
    check_model(proto, name, path)
    return normalise_opsets(proto, name)
