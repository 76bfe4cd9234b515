import sys
from pathlib import Path

import pytest
import torch

# tests in sub-folders import the shared models as `from models import StackedLSTM`
sys.path.insert(0, str(Path(__file__).resolve().parent))

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "tests/gpu/" in item.nodeid or item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.cuda)
            if not HAS_CUDA:
                item.add_marker(skip)
