"""Where the C++ sources of each extension live, and the hash that names a build of them.

Shared by setup.py (prebuild at install time) and _extension.py (build on first use), so both
agree on what a build of an extension is.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# where an installed wheel keeps the sources, under the package (setup.py copies them there)
INSTALLED_CSRC = "_csrc"
_PACKAGE = Path(__file__).resolve().parent


def _csrc() -> Path:
    """The source tree's csrc/ (a checkout or an editable install), else the copy a wheel
    installed in the package."""
    checkout = _PACKAGE.parent / "csrc"
    return checkout if checkout.is_dir() else _PACKAGE / INSTALLED_CSRC


CSRC = _csrc()

# extension name -> folder under csrc/ holding its .cpp/.h files
EXTENSIONS = {"kernels": "kernels", "executor": "executor"}


def source_files(name: str, csrc: Path = CSRC) -> list[Path]:
    """The extension's own files plus the headers at the top of csrc/ shared by all."""
    own = (csrc / EXTENSIONS[name]).rglob("*")
    shared = csrc.glob("*.h")
    return sorted(p for p in [*own, *shared] if p.suffix in {".cpp", ".h"})


def all_source_files(csrc: Path = CSRC) -> list[Path]:
    """Every file any extension builds from (what a wheel ships)."""
    return sorted({p for name in EXTENSIONS for p in source_files(name, csrc)})


def build_tag(text: str) -> str:
    """``text`` as a C identifier: compile flags pass through shells and ninja, which eat quotes,
    so build_info.h stringizes identifiers instead."""
    return "t_" + re.sub(r"[^0-9A-Za-z]", "_", text)


def compile_flags(name: str, torch_version: str) -> list[str]:
    return [
        "-O3",
        *openmp_flags(name),
        f"-DCHRION_SOURCE_HASH={build_tag(source_hash(name))}",
        f"-DCHRION_TORCH_VERSION={build_tag(torch_version)}",
    ]


def openmp_flags(name: str) -> list[str]:
    """Compile and link flags: the kernels run a call's threads as the calling thread's OpenMP
    team (Note [Recurrent threads are the caller's team] in csrc/kernels/recurrent_schedule.cpp).
    libgomp.so.1 is the soname of the libgomp that torch ships and loads first, so the extension
    binds to that one at run time: one OpenMP runtime, one team per thread."""
    return ["-fopenmp"] if name == "kernels" else []


def source_hash(name: str) -> str:
    digest = hashlib.sha256()
    for path in source_files(name):
        digest.update(path.relative_to(CSRC).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
