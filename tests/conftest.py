import os

import pytest
import torch

# Tests never reach a model hub: an open_clip pretrained tag must fail at once, not after retries.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
# Without a GPU the Triton kernels run in Triton's interpreter (tests/test_triton_conv.py). Triton reads this
# when it decorates a kernel, including its own library functions when triton is first imported, which
# open_clip already does: so it is set here, before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture
def kernel_map_builds(monkeypatch):
    """The calls to ``kmap.build_kernel_map`` during the test: the coordinate managers' cache misses."""
    from models.sparse import kmap
    calls = []
    build = kmap.build_kernel_map
    monkeypatch.setattr(kmap, 'build_kernel_map', lambda *args: calls.append(args) or build(*args))
    return calls


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: skipped, saying so, on a machine without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (marker cuda)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
