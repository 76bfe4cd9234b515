"""Runs a test's snippet of Python in a process of its own: another ATEN_CPU_CAPABILITY (the
kernels are picked once per process), or an OpenMP team not grown yet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def run_script(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` run by this Python with ``env`` added, the checkout and the test folders
    importable; its output as text."""
    path = [str(_HERE.parents[1]), str(_HERE), str(_HERE.parent), os.environ.get("PYTHONPATH", "")]
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
