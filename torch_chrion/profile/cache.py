"""On-disk cache of per-device profiles.

One JSON file per (graph hash, input shapes and dtypes, device name, torch version): the
measurements of one physical device (all CPU lanes of one thread count share one), so a graph
profiled once on CPU reuses that CPU profile when a GPU lane is added, and a second load of the
same model and shapes measures nothing. A corrupt file is ignored and measured again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..errors import PlanError
from .profile import Profile

log = logging.getLogger(__name__)


# Bumped whenever how nodes are measured changes, so profiles measured the old way are not reused.
METHOD_VERSION = 2


def cache_key(graph_hash: str, input_signature: list, device_name: str, torch_version: str) -> str:
    """File name of a device profile in the cache."""
    text = json.dumps([graph_hash, input_signature, device_name, torch_version, METHOD_VERSION])
    return f"{graph_hash}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


class ProfileCache:
    """Device profiles in ``directory``, read and written by key."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def get(self, key: str) -> Profile | None:
        path = self.directory / key
        if not path.exists():
            return None
        try:
            return Profile.load(path)
        except PlanError as exc:
            log.warning("ignoring unreadable cached profile %s: %s", path, exc)
            return None

    def put(self, key: str, profile: Profile) -> None:
        try:
            profile.save(self.directory / key)
        except OSError as exc:  # a read-only cache slows the next start, nothing more
            log.warning("could not cache the profile in %s: %s", self.directory, exc)
