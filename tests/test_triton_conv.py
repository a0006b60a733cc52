"""The Triton implicit-GEMM sparse convolution equals the pure-PyTorch reference (outputs and gradients).

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before Triton compiles
anything); with CUDA they are compiled and run there. The reference itself is checked against dense
conv3d in tests/test_sparse_conv.py, so equality here ties the Triton path to the dense oracle too.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')  # also set by conftest.py, before anything imports triton
triton = pytest.importorskip('triton')
_knobs = getattr(triton, 'knobs', None)  # triton >= 3.3; older releases read the variable directly
_interpreted = _knobs.runtime.interpret if _knobs is not None else os.environ.get('TRITON_INTERPRET') == '1'
if not torch.cuda.is_available() and not _interpreted:
    pytest.skip('no CUDA, and triton was imported before TRITON_INTERPRET=1 was set', allow_module_level=True)

import models.sparse as ME  # noqa: E402
from models.sparse import functional  # noqa: E402
from models.sparse.triton_conv import neighbour_tables, triton_sparse_conv  # noqa: E402
from tests.test_sparse_conv import random_sparse  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def both_paths(kernel_map, feats, kernel, num_out, dtype):
    results = []
    for fn in (functional._torch_sparse_conv, triton_sparse_conv):
        f = feats.detach().to(DEVICE, dtype).requires_grad_()
        w = kernel.detach().to(DEVICE, dtype).requires_grad_()
        out = fn(f, w, kernel_map, num_out)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
        gf, gw = torch.autograd.grad((out.float() * weight.float()).sum(), (f, w))
        results.append((out.float(), gf.float(), gw.float()))
    return results


def layer_map(kind, x):
    """(kernel map, num_out, kernel volume) of one layer kind on the stride-1 tensor x."""
    m = x.coordinate_manager
    if kind == 'transposed':
        m.strided_coordinates(1, 2)
        km = m.kernel_map(2, 1, 2, 1, True)
    elif kind == 'down':
        out_stride = m.strided_coordinates(1, 2)
        km = m.kernel_map(1, out_stride, 2, 1, False)
    else:
        ks, dilation = kind
        km = m.kernel_map(1, 1, ks, dilation, False)
    return km


@pytest.mark.parametrize('kind', [(1, 1), (3, 1), (3, 2), (2, 1), (5, 1), 'down', 'transposed'])
def test_triton_equals_reference_fp32(kind):
    coords, feats = random_sparse(n_per_batch=50, channels=20, seed=3, dtype=torch.float32)
    x = ME.SparseTensor(feats.to(DEVICE), coords.to(DEVICE))
    km = layer_map(kind, x)
    kernel = torch.randn(km.kernel_volume, 20, 24, generator=torch.Generator().manual_seed(4))
    if km.kernel_volume == 1:
        kernel = kernel[0]
    feats_in = feats if kind != 'transposed' else torch.randn(km.num_in, 20, generator=torch.Generator().manual_seed(6))
    (ref, ref_gf, ref_gw), (out, gf, gw) = both_paths(km, feats_in, kernel, km.num_out, torch.float32)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gf, ref_gf, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-4, atol=1e-4)


def test_triton_equals_reference_half_precision():
    coords, feats = random_sparse(n_per_batch=50, channels=32, seed=8, dtype=torch.float32)
    x = ME.SparseTensor(feats.to(DEVICE), coords.to(DEVICE))
    km = layer_map((3, 1), x)
    kernel = torch.randn(27, 32, 16, generator=torch.Generator().manual_seed(9)) * 0.2
    (ref, ref_gf, ref_gw), (out, gf, gw) = both_paths(km, feats, kernel, km.num_out, torch.float16)
    # both accumulate in float32 from the same fp16 inputs; only the summation order differs
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gf, ref_gf, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-2, atol=5e-2)


def test_neighbour_tables_invert_each_other():
    coords, feats = random_sparse(n_per_batch=40, channels=4, seed=2, dtype=torch.float32)
    x = ME.SparseTensor(feats, coords)
    km = layer_map('down', x)
    nb, nbt = neighbour_tables(km)
    assert neighbour_tables(km)[0] is nb  # cached on the kernel map
    assert nb.shape == (8, km.num_out) and nbt.shape == (8, km.num_in)
    # a strided kernel-2 conv sends every input row to exactly one (offset, output) pair
    assert ((nbt >= 0).sum(0) == 1).all()
    for k in range(8):
        i, o = km.pairs(k)
        assert torch.equal(nb[k, o.long()], i) and torch.equal(nbt[k, i.long()], o)
    assert int((nb >= 0).sum()) == km.in_idx.numel()


def test_selected_through_the_layers(monkeypatch):
    """SPARSE_CONV_IMPL / set_implementation switch every layer without touching the model code."""
    coords, feats = random_sparse(n_per_batch=30, channels=4, seed=1, dtype=torch.float32)
    torch.manual_seed(0)
    conv = ME.Convolution(4, 16, kernel_size=3).to(DEVICE)
    x = ME.SparseTensor(feats.to(DEVICE), coords.to(DEVICE))
    ref = conv(x).F
    monkeypatch.setattr(functional, '_selected', 'triton')
    torch.testing.assert_close(conv(x).F, ref, rtol=1e-4, atol=1e-4)
