"""Loads the C++ extensions: the one prebuilt at install time when it matches the sources and
the installed torch, else a build made on first use and cached on disk, never once per process.

The cache lives in ``$TORCH_CHRION_CACHE`` (default ``~/.cache/torch_chrion``)/extensions, one
folder per (extension, source hash, torch version), so a new torch or an edited source gets a
build of its own and an unchanged one is only loaded.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import types
from pathlib import Path

import torch

from . import _sources
from .errors import BuildError


def cache_root() -> Path:
    root = os.environ.get("TORCH_CHRION_CACHE") or Path.home() / ".cache" / "torch_chrion"
    return Path(root)


def _built_for_something_else(name: str, wanted_hash: str | None) -> bool:
    """Whether the prebuilt module was built from other sources or for another torch (a wheel
    installed next to a newer torch), read from its file without importing it: importing the
    kernels extension registers the chrion:: operators, and a second, current build could then
    not register them again (the process aborts)."""
    spec = importlib.util.find_spec(f"torch_chrion._{name}")
    if spec is None or spec.origin is None:
        return False  # absent: the import below says so
    binary = Path(spec.origin).read_bytes()
    wanted = [torch.__version__] + ([wanted_hash] if wanted_hash is not None else [])
    # the tags are C strings: the NUL keeps torch 2.14.1 from matching a build for 2.14.10
    return any(_sources.build_tag(text).encode() + b"\0" not in binary for text in wanted)


def _prebuilt(name: str, wanted_hash: str | None) -> types.ModuleType | None:
    if _built_for_something_else(name, wanted_hash):
        return None  # an editable install whose csrc/ changed, or another torch
    try:
        module = importlib.import_module(f"torch_chrion._{name}")
    except ImportError:  # absent, or built against another torch (undefined symbols)
        return None
    info = module.build_info()
    if info["torch_version"] != _sources.build_tag(torch.__version__):
        return None
    if wanted_hash is not None and info["source_hash"] != _sources.build_tag(wanted_hash):
        return None  # an editable install whose csrc/ changed since the install
    return module


def _compiler() -> str:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BuildError(
            f"torch_chrion must compile its C++ extension once, but no C++ compiler ({compiler!r}) "
            "is on PATH. Install one (Debian/Ubuntu: `apt-get install g++`), or install "
            "torch_chrion with `pip install --no-build-isolation .` on a machine that has one."
        )
    return compiler


@functools.cache
def load(name: str) -> types.ModuleType:
    """The extension ``torch_chrion._<name>`` ("kernels" or "executor"), built if need be."""
    have_sources = _sources.CSRC.is_dir()
    wanted = _sources.source_hash(name) if have_sources else None
    module = _prebuilt(name, wanted)
    if module is not None:
        return module
    if not have_sources:
        raise BuildError(
            f"torch_chrion._{name} was not built for torch {torch.__version__} and its C++ sources "
            "are not installed; reinstall torch_chrion with `pip install --no-build-isolation .`"
        )
    _compiler()
    # cpp_extension warns at import that no CUDA runtime is found: true and irrelevant here,
    # since these extensions are built with g++ alone.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)

    tag = f"{wanted}-torch{torch.__version__}".replace("+", "_").replace(".", "_")
    build_dir = cache_root() / "extensions" / f"{name}-{tag}"
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in _sources.source_files(name) if p.suffix == ".cpp"]
    try:
        module = cpp_extension.load(
            name=f"torch_chrion_{name}",
            sources=sources,
            build_directory=str(build_dir),
            extra_cflags=_sources.compile_flags(name, torch.__version__),
            extra_ldflags=_sources.openmp_flags(name),
            with_cuda=False,
            verbose=os.environ.get("TORCH_CHRION_VERBOSE_BUILD") == "1",
        )
    except (RuntimeError, OSError, ImportError) as exc:
        raise BuildError(
            f"building torch_chrion._{name} in {build_dir} failed: {exc}. "
            "Set TORCH_CHRION_VERBOSE_BUILD=1 to see the compiler's output."
        ) from exc
    sys.modules[f"torch_chrion._{name}"] = module
    return module
