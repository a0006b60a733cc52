"""The Triton implicit-GEMM sparse convolution (``sparse_conv: triton``, CUDA), registered on import.

``plan`` (gather plans, launch configurations) is plain PyTorch and imports without Triton; ``kernels``
(the ``@triton.jit`` kernels) and ``conv`` (launches, autograd) need it, and are imported by the first
convolution that runs: importing this package, e.g. for its plans, works on a machine without Triton.
Tested equal to the reference, on CPU through Triton's interpreter (tests/test_triton_conv.py).
"""
from models.sparse.dispatch import register
from models.sparse.triton import plan


def triton_sparse_conv(features, kernel, kernel_map, num_out):
    from models.sparse.triton.conv import triton_sparse_conv as run  # deferred: needs Triton (see above)
    return run(features, kernel, kernel_map, num_out)


register('triton', triton_sparse_conv, plan.prepare)
