"""Builds the C++ extensions at install time when torch is importable in the build environment
(`pip install --no-build-isolation .`); otherwise torch_chrion builds them on first use and caches
them (see torch_chrion/_extension.py).

Every wheel carries the C++ sources (csrc/ copied to torch_chrion/_csrc/), and every sdist carries
csrc/ (MANIFEST.in), so an install on a torch other than the one a wheel was built for rebuilds the
extensions on first use instead of failing. TORCH_CHRION_NO_PREBUILD=1 skips the build at install
time (a wheel with sources only, built in seconds).
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "torch_chrion"))
import _sources  # noqa: E402  (plain module: importing the package would need torch_chrion deps)


class BuildPyWithSources(build_py):
    """build_py that also copies csrc/ into the package as torch_chrion/_csrc/."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads csrc/ where it is
        target = Path(self.build_lib) / "torch_chrion" / _sources.INSTALLED_CSRC
        shutil.rmtree(target, ignore_errors=True)
        for path in _sources.all_source_files(ROOT / "csrc"):
            copy = target / path.relative_to(ROOT / "csrc")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)


def extension_modules() -> tuple[list, dict]:
    if os.environ.get("TORCH_CHRION_NO_PREBUILD") == "1":
        print("torch_chrion: TORCH_CHRION_NO_PREBUILD=1; extensions will build on first use")
        return [], {}
    if importlib.util.find_spec("torch") is None:
        print("torch_chrion: torch is not importable here; extensions will build on first use")
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

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
                extra_link_args=_sources.openmp_flags(name),
            )
        )
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass={**cmdclass, "build_py": BuildPyWithSources})
