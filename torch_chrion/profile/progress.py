"""The progress bar of a slow profile."""

from __future__ import annotations

import os

from tqdm.auto import tqdm

# at least this many steps to measure before a progress bar is worth drawing
PROGRESS_MIN_STEPS = 8
# seconds a profile must run before its progress bar appears ("more than a moment")
PROGRESS_DELAY_S = 1.0


def progress(total: int, desc: str, unit: str) -> tqdm:
    """A progress bar of ``total`` steps called ``unit`` (what one step is), on a terminal only
    and only for a slow profile; TORCH_CHRION_NO_PROGRESS=1 turns it off."""
    quiet = os.environ.get("TORCH_CHRION_NO_PROGRESS") == "1" or total < PROGRESS_MIN_STEPS
    # disable=None: tqdm's own test, off when stderr is not a terminal; delay: only when slow
    return tqdm(
        total=total, desc=desc, unit=unit, delay=PROGRESS_DELAY_S, disable=True if quiet else None
    )
