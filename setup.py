"""Builds the C++ extensions at install time when torch is importable in the build environment
(`pip install --no-build-isolation .`); otherwise torch_chrion builds them on first use and caches
them (see torch_chrion/_extension.py)."""

import importlib.util
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def extension_modules() -> tuple[list, dict]:
    if importlib.util.find_spec("torch") is None:
        print("torch_chrion: torch is not importable here; extensions will build on first use")
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    sys.path.insert(0, str(ROOT / "torch_chrion"))
    import _sources  # noqa: E402  (plain module: importing the package would need torch_chrion deps)

    modules = []
    for name in _sources.EXTENSIONS:
        sources = [
            str(p.relative_to(ROOT)) for p in _sources.source_files(name) if p.suffix == ".cpp"
        ]
        modules.append(
            CppExtension(
                f"torch_chrion._{name}",
                sources,
                extra_compile_args=_sources.compile_flags(name, torch.__version__),
            )
        )
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
