"""Wheels and sdists carry the C++ sources, so an install on any torch can build the extensions
on first use; the loader refuses a prebuilt extension made for another torch without importing
it. Built in subprocesses from a copy of the source tree, with pip and python -m build."""

import importlib.machinery
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from torch_chrion import _sources

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.so", "__pycache__", "*.egg-info", ".*cache", ".hypothesis"
)


def run(*args, cwd, env=None):
    result = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A source-only wheel (TORCH_CHRION_NO_PREBUILD=1: no compiler run) and an sdist."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=SKIP)
    env = {**os.environ, "TORCH_CHRION_NO_PREBUILD": "1"}
    out = work / "dist"
    run("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, source,
        cwd=work, env=env)  # fmt: skip
    run("-m", "build", "--sdist", "--no-isolation", "-o", out, source, cwd=work, env=env)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return work, wheel, sdist


def sources():
    csrc = ROOT / "csrc"
    return {p.relative_to(csrc).as_posix(): p.read_bytes() for p in _sources.all_source_files(csrc)}


@pytest.mark.slow
def test_wheel_carries_the_cpp_sources_and_honest_metadata(built):
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = {
            name.removeprefix("torch_chrion/_csrc/"): archive.read(name)
            for name in names
            if name.startswith("torch_chrion/_csrc/")
        }
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert shipped == sources()
    assert "torch_chrion/data/demo_speech_lstm.onnx" in names
    assert not [n for n in names if n.endswith(".so")]  # source-only: built on first use
    assert wheel.name.endswith("-py3-none-any.whl")
    assert "Requires-Dist: torch>=2.6" in metadata.splitlines()
    assert "chrion = torch_chrion.dynamo:chrion_backend" in entry_points


@pytest.mark.slow
def test_sdist_carries_csrc_and_setup(built):
    _, _, sdist = built
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if "/" in m.name}
        shipped = {
            name.removeprefix("csrc/"): archive.extractfile(m).read()
            for name, m in members.items()
            if name.startswith("csrc/") and m.isfile()
        }
        pkg_info = archive.extractfile(members["PKG-INFO"]).read().decode()
    assert shipped == sources()
    assert {"setup.py", "pyproject.toml", "MANIFEST.in", "torch_chrion/_sources.py"} <= set(members)
    assert "Requires-Dist: torch>=2.6" in pkg_info.splitlines()


@pytest.mark.slow
def test_an_installed_wheel_finds_its_sources(built):
    """Installed outside any checkout, the loader reads the sources the wheel carries: the same
    files, hence the same source hash as a build from the checkout."""
    work, wheel, _ = built
    target = work / "site"
    run("-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel, cwd=work)
    script = (
        "from torch_chrion import _sources; print(_sources.CSRC); "
        "print(*(_sources.source_hash(n) for n in _sources.EXTENSIONS))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    csrc, hashes = run("-c", script, cwd=work, env=env).splitlines()
    assert Path(csrc) == target / "torch_chrion" / "_csrc"
    assert hashes.split() == [_sources.source_hash(n) for n in _sources.EXTENSIONS]


def test_a_prebuilt_extension_for_another_torch_is_rebuilt_not_imported(tmp_path):
    """A wheel's prebuilt .so next to another torch: the loader must not import it (importing
    the kernels registers the chrion:: operators, and the fresh build could not register them
    again). The prebuilt here is a stand-in carrying the build tags of the current sources and
    of torch 2.14.1, while the running torch says 2.99.0."""
    package = tmp_path / "torch_chrion"
    shutil.copytree(ROOT / "torch_chrion", package, ignore=SKIP)
    (tmp_path / "csrc").symlink_to(ROOT / "csrc")
    tags = [_sources.build_tag(_sources.source_hash("kernels")), _sources.build_tag("2.14.1")]
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / f"_kernels{suffix}").write_bytes(b"\0".join(t.encode() for t in tags) + b"\0")
    script = (
        "import importlib, torch\n"
        "from torch_chrion import _extension, _sources\n"
        "torch.__version__ = '2.99.0'\n"
        "imported = []\n"
        "def record(name):\n"
        "    imported.append(name)\n"
        "    raise ImportError('a stand-in')\n"
        "_extension.importlib.import_module = record\n"
        "assert _extension._prebuilt('kernels', _sources.source_hash('kernels')) is None\n"
        "assert imported == [], imported\n"
        "torch.__version__ = '2.14.1'  # the stand-in's own torch: now it would be imported\n"
        "_extension._prebuilt('kernels', _sources.source_hash('kernels'))\n"
        "assert imported == ['torch_chrion._kernels'], imported\n"
    )
    run("-c", script, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
