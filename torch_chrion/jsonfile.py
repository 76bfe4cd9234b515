"""The one reader and writer of torch_chrion's JSON files (plans, profiles, cached profiles).

Reading is bounded and typed, so a hostile or damaged file is a PlanError naming the file and
the field, never a KeyError, UnicodeDecodeError or RecursionError from deep inside:

- only a regular file is opened (a FIFO or device at the path would block or have effects);
- at most ``MAX_BYTES``, strict UTF-8, at most ``MAX_DEPTH`` nested arrays/objects (checked
  before parsing, so the parser never recurses deeply);
- every field checked against a small type spec (``check_fields``) before anyone reads it.

Writing is atomic (a temporary file in the same folder, then a rename) and follows the umask,
as any other file the user's tools write would: a plan built by one user can be read by the
service account that runs it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from .errors import PlanError

# Plans of 10k-node graphs are a few MB; a cached profile is smaller still.
MAX_BYTES = 256 * 2**20
# The deepest document written here nests 3 levels (node -> lane -> cost); leave room to grow.
MAX_DEPTH = 16

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]")


@dataclasses.dataclass(frozen=True)
class Nullable:
    """Type spec: ``inner`` or JSON null."""

    inner: Any


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of the regular file ``path``; PlanError naming ``what`` and the path."""

    def refuse(reason: str) -> PlanError:
        return PlanError(f"cannot read the {what} {path}: {reason}")

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise refuse("not a regular file")
        # O_NONBLOCK: if a FIFO replaced the file since the stat, open returns instead of waiting
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise refuse("not a regular file")
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from exc
    if len(data) > MAX_BYTES:
        raise refuse(f"larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def parse(text: str, source: str, what: str) -> dict[str, Any]:
    """The JSON object in ``text``, nested at most MAX_DEPTH deep; PlanError otherwise."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            raise PlanError(f"{source}: not a JSON {what}: nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PlanError(f"{source}: not a JSON {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a {what} is a JSON object, got {type(data).__name__}")
    return data


def load(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """``parse(read_text(path))``: the checked JSON object of the file ``path``."""
    return parse(read_text(path, what), str(path), what)


def write_atomic(path: str | os.PathLike[str], text: str, what: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0666 less the umask.

    Raises:
        PlanError: the file cannot be written, naming ``path`` (not the temporary file).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        # 0o666 through open(2), so the kernel applies the umask (mkstemp would force 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise PlanError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PlanError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_document(
    data: Mapping[str, Any],
    schema: Mapping[str, Any],
    version: int,
    source: str,
    what: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Check a document's ``schema_version`` is ``version``, then its fields (``check_fields``).

    Raises:
        PlanError: naming ``source``, the version found and the one read, or the misfit field.
    """
    found = data.get("schema_version")
    if found != version:
        raise PlanError(
            f"{source}: {what} schema_version {found!r} is not supported (this torch_chrion "
            f"reads {version}); write the {what} again"
        )
    check_fields(data, schema, source, what, optional)


class Document:
    """A dataclass kept as one JSON document: ``from_json`` and ``load`` parse it (bounded, see
    above) and hand the object to the subclass's ``_from_data``, which checks and builds it."""

    WHAT: ClassVar[str]  # what the document is, in messages ("plan", "profile")

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> Self:
        """Parse and check a document written by ``to_json``; ``source`` names it in errors.

        Raises:
            PlanError: naming ``source`` and what is wrong.
        """
        return cls._from_data(parse(text, source, cls.WHAT), source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read and check the document saved at ``path`` (a regular file only).

        Raises:
            PlanError: a missing, non-regular or bad file, naming it.
        """
        return cls._from_data(load(path, cls.WHAT), str(path))

    @classmethod
    def _from_data(cls, data: dict[str, Any], source: str) -> Self:
        raise NotImplementedError


# -- typed fields ----------------------------------------------------------------------------
def check_fields(
    data: Mapping[str, Any],
    schema: Mapping[str, Any],
    source: str,
    what: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Check that ``data`` has exactly the keys of ``schema`` (less absent ``optional`` ones)
    and that each value fits its spec.

    A spec is ``str``, ``bool``, ``int``, ``float`` (a finite number; int accepted),
    ``Nullable(spec)``, ``[spec]`` (a list of), ``{str: spec}`` (an object of), or a tuple of
    specs (a list of exactly that many).

    Raises:
        PlanError: "<source>: <field> must be <spec>, got <value>" for the first misfit.
    """
    missing = sorted(set(schema) - set(data) - set(optional))
    unknown = sorted(set(data) - set(schema))
    if missing or unknown:
        raise PlanError(f"{source}: {what} fields missing {missing}, unknown {unknown}")
    for name, spec in schema.items():
        if name in data:
            _check(data[name], spec, name, source)


def _check(value: Any, spec: Any, field: str, source: str) -> None:
    if isinstance(spec, Nullable):
        if value is None:
            return
        spec = spec.inner
    if _fits_scalar(value, spec):
        if isinstance(spec, list):
            for k, item in enumerate(value):
                _check(item, spec[0], f"{field}[{k}]", source)
        elif isinstance(spec, tuple):
            for k, (item, inner) in enumerate(zip(value, spec, strict=True)):
                _check(item, inner, f"{field}[{k}]", source)
        elif isinstance(spec, dict):
            (inner,) = spec.values()
            for key, item in value.items():
                _check(item, inner, f"{field}[{key!r}]", source)
        return
    shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
    raise PlanError(f"{source}: {field} must be {_describe(spec)}, got {shown}")


def _fits_scalar(value: Any, spec: Any) -> bool:
    if spec is float:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if spec in (str, bool):
        return isinstance(value, spec)
    if isinstance(spec, list):
        return isinstance(value, list)
    if isinstance(spec, tuple):
        return isinstance(value, list) and len(value) == len(spec)
    if isinstance(spec, dict):
        return isinstance(value, dict)
    raise TypeError(f"not a type spec: {spec!r}")


def _describe(spec: Any) -> str:
    if isinstance(spec, Nullable):
        return f"{_describe(spec.inner)} or null"
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a finite number"}
    if spec in names:
        return names[spec]
    if isinstance(spec, list):
        return f"a list whose items are each {_describe(spec[0])}"
    if isinstance(spec, tuple):
        return f"a list of {len(spec)} items"
    (inner,) = spec.values()
    return f"an object of {_describe(inner)} values"
