import sys
from pathlib import Path

import pytest
import torch

# tests in sub-folders import the shared models as `from models import StackedLSTM`
sys.path.insert(0, str(Path(__file__).resolve().parent))

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="session", autouse=True)
def private_chrion_cache(tmp_path_factory):
    """Profiles (and anything else torch_chrion caches) written by tests go to a temporary
    $TORCH_CHRION_CACHE, never the user's ~/.cache/torch_chrion. The C++ extensions built there
    are shared through a link, so a test session does not rebuild them."""
    from torch_chrion._extension import cache_root

    shared = cache_root() / "extensions"
    shared.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("chrion-cache")
    (root / "extensions").symlink_to(shared, target_is_directory=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("TORCH_CHRION_CACHE", str(root))
    yield root
    patch.undo()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "tests/gpu/" in item.nodeid or item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.cuda)
            if not HAS_CUDA:
                item.add_marker(skip)
