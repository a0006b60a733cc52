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
from models.sparse.triton.kernels import interpreting  # noqa: E402

if not torch.cuda.is_available() and not interpreting():
    pytest.skip('no CUDA, and triton was imported before TRITON_INTERPRET=1 was set', allow_module_level=True)

from helpers import random_sparse  # noqa: E402

import models.sparse as ME  # noqa: E402
from models.sparse import dispatch, settings  # noqa: E402
from models.sparse.reference import reference_sparse_conv  # noqa: E402
from models.sparse.triton import kernels, plan  # noqa: E402
from models.sparse.triton.conv import triton_sparse_conv  # noqa: E402
from models.sparse.triton.plan import mask_order, neighbour_table, tile_occupancy  # noqa: E402

pytestmark = pytest.mark.triton

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture
def conv_settings():
    """``settings.configure`` for the test; the previous settings come back after it."""
    with settings.using():
        yield settings.configure


def both_paths(kernel_map, feats, kernel, num_out, dtype):
    results = []
    for fn in (reference_sparse_conv, triton_sparse_conv):
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


@pytest.mark.parametrize('row_order', settings.ROW_ORDERS)
@pytest.mark.parametrize('kind', [(1, 1), (3, 1), (3, 2), (2, 1), (5, 1), 'down', 'transposed'])
def test_triton_equals_reference_fp32(kind, row_order, conv_settings):
    conv_settings(row_order=row_order)
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


@pytest.mark.parametrize('c_in,c_out', [(64, 48), (70, 40)])
def test_triton_equals_reference_over_several_channel_steps(c_in, c_out):
    """C_in wider than one BLOCK_K step (32): the gather pointers advance, divisible (64) or masked (70)."""
    coords, feats = random_sparse(n_per_batch=60, channels=c_in, seed=11, dtype=torch.float32)
    km = layer_map((3, 1), ME.SparseTensor(feats.to(DEVICE), coords.to(DEVICE)))
    kernel = torch.randn(27, c_in, c_out, generator=torch.Generator().manual_seed(12)) * 0.2
    (ref, ref_gf, ref_gw), (out, gf, gw) = both_paths(km, feats, kernel, km.num_out, torch.float32)
    for got, want in ((out, ref), (gf, ref_gf), (gw, ref_gw)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_triton_equals_reference_half_precision(dtype):
    coords, feats = random_sparse(n_per_batch=50, channels=32, seed=8, dtype=torch.float32)
    x = ME.SparseTensor(feats.to(DEVICE), coords.to(DEVICE))
    km = layer_map((3, 1), x)
    kernel = torch.randn(27, 32, 16, generator=torch.Generator().manual_seed(9)) * 0.2
    (ref, ref_gf, ref_gw), (out, gf, gw) = both_paths(km, feats, kernel, km.num_out, dtype)
    # both accumulate in float32 from the same half-precision inputs; the summation order and the final
    # rounding to the half dtype differ (bf16 keeps 8 bits of mantissa: one rounding step is 2^-8 relative)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=2e-2, atol=4e-2)
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(gf, ref_gf, **tol)
    torch.testing.assert_close(gw, ref_gw, rtol=tol['rtol'], atol=5e-2)


def test_neighbour_tables_invert_each_other():
    coords, feats = random_sparse(n_per_batch=40, channels=4, seed=2, dtype=torch.float32)
    x = ME.SparseTensor(feats, coords)
    km = layer_map('down', x)
    nb, nbt = neighbour_table(km), neighbour_table(km, transposed=True)
    assert nb.shape == (8, km.num_out) and nbt.shape == (8, km.num_in)
    # a strided kernel-2 conv sends every input row to exactly one (offset, output) pair
    assert ((nbt >= 0).sum(0) == 1).all()
    for k in range(8):
        i, o = km.pairs(k)
        assert torch.equal(nb[k, o.long()], i) and torch.equal(nbt[k, i.long()], o)
    assert int((nb >= 0).sum()) == km.in_idx.numel()


@pytest.mark.parametrize('num_offsets', [27, 125])
def test_mask_order_sorts_rows_by_their_whole_neighbour_mask(num_offsets):
    """Oracle: Python's stable sort of the rows' masks as tuples (125 offsets: three 62-bit words)."""
    g = torch.Generator().manual_seed(num_offsets)
    has = torch.rand(num_offsets, 300, generator=g) < 0.5
    has[:, 100:200] = has[:, :100]  # repeated masks: ties must keep memory order
    has[-1] = torch.rand(300, generator=g) < 0.5  # differences in the last (least significant) word too
    nb = torch.where(has, torch.arange(300, dtype=torch.int32), torch.tensor(-1, dtype=torch.int32))
    expected = sorted(range(300), key=lambda j: tuple(int(b) for b in has[:, j].tolist()))
    assert mask_order(nb).tolist() == expected


def test_tile_occupancy_exact():
    nb = torch.full((3, 6), -1, dtype=torch.int32)
    nb[0, [0, 2, 4]] = 0  # offset 0 on even rows, offset 2 on odd rows, offset 1 on row 5
    nb[2, [1, 3, 5]] = 0
    nb[1, 5] = 0
    # memory order, tiles of 2 rows: every tile runs offsets 0 and 2 (+1 in the last): 7 x 2 executed for 7 pairs
    assert tile_occupancy(nb, block_m=2) == pytest.approx(7 / 14)
    order = mask_order(nb)  # masks 100 x3, 001 x2, 011: tiles {001,001}, {011,100}, {100,100}
    assert tile_occupancy(nb, order, block_m=2) == pytest.approx(7 / 10)


def test_mask_order_skips_offsets_on_a_surface():
    """On a jittered plane (the shape of 2 cm scans) sorting rows by mask leaves fewer offsets per tile."""
    g = torch.Generator().manual_seed(0)
    xy = torch.cartesian_prod(torch.arange(40), torch.arange(40))
    z = (torch.rand(len(xy), generator=g) < 0.1).int()
    coords = torch.cat([torch.zeros(len(xy), 1, dtype=torch.int32), xy.int(), z[:, None]], 1)
    x = ME.SparseTensor(torch.zeros(len(coords), 1), coords)
    nb = neighbour_table(x.coordinate_manager.kernel_map(1, 1, 3, 1, False))
    before, after = tile_occupancy(nb), tile_occupancy(nb, mask_order(nb))
    assert after > 1.5 * before


def test_gather_plan_is_a_permutation_of_the_table_and_cached():
    coords, feats = random_sparse(n_per_batch=40, channels=4, seed=2, dtype=torch.float32)
    km = layer_map((3, 1), ME.SparseTensor(feats, coords))
    for transposed in (False, True):
        table, rows = plan.gather_plan(km, transposed)
        assert plan.gather_plan(km, transposed)[0] is table
        assert sorted(rows.tolist()) == list(range(table.shape[1]))
        assert torch.equal(table, neighbour_table(km, transposed)[:, rows.long()])


def test_selected_through_the_layers(conv_settings):
    """The sparse_conv setting switches every layer without touching the model code."""
    coords, feats = random_sparse(n_per_batch=30, channels=4, seed=1, dtype=torch.float32)
    torch.manual_seed(0)
    conv = ME.Convolution(4, 16, kernel_size=3).to(DEVICE)
    x = ME.SparseTensor(feats.to(DEVICE), coords.to(DEVICE))
    ref = conv(x).F
    conv_settings(conv='triton')
    torch.testing.assert_close(conv(x).F, ref, rtol=1e-4, atol=1e-4)


def test_kernels_compile_for_a100_and_h100_without_spilling():
    """Every kernel variant the fixed rule launches for MinkUNet18A compiles for sm_80 and sm_90 (ptxas runs
    without a GPU), in all four precisions, using at most 16 bytes of stack per thread. The interpreter runs
    Python, not compiled code, so this is what catches a kernel that only fails to compile. In a subprocess:
    this process has TRITON_INTERPRET=1 set, which compiling excludes."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
    run = subprocess.run([sys.executable, os.path.join(root, 'bench', 'triton_kernels.py'), '--check',
                          '--max-spill', '16'], cwd=root, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count(' wgmma ') > 0  # fp16 / bf16 products became Hopper tensor-core instructions


def test_plans_are_prepared_once_per_kernel_map_when_triton_is_selected(conv_settings, monkeypatch):
    """A kernel map knows no implementation; the first convolution on it lets the selected one prepare it
    (Triton: the forward plan, once per map), the feature-gradient plan comes with a backward pass that needs
    it; the reference path builds none."""
    prepared = []
    monkeypatch.setattr(dispatch, 'prepare', lambda km, impl, real=dispatch.prepare: prepared.append(km) or
                        real(km, impl))
    coords, feats = random_sparse(n_per_batch=30, channels=4, seed=1, dtype=torch.float32)
    for selected in ('triton', 'reference'):
        conv_settings(conv=selected)
        x = ME.SparseTensor(feats.requires_grad_(), coords)
        km = x.coordinate_manager.kernel_map(1, 1, 3, 1, False)
        plans = lambda: {key[1] for key in km.cache if key[0] == 'gather_plan'}  # noqa: E731
        assert plans() == set()
        for _ in range(2):
            out = dispatch.sparse_conv(x.F, torch.randn(27, 4, 8), km, km.num_out)
            assert plans() >= ({False} if selected == 'triton' else set())
            out.sum().backward()
            assert plans() == ({False, True} if selected == 'triton' else set())
        assert sum(p is km for p in prepared) == (1 if selected == 'triton' else 0)


def test_autotuned_path_equals_reference(conv_settings):
    """sparse_conv_autotune True: the autotuner prunes the candidates to the layer's widths, times each (in
    the interpreter: one call), and whichever it keeps gives the reference's outputs and gradients."""
    conv_settings(autotune=True)
    coords, feats = random_sparse(n_per_batch=40, channels=20, seed=3, dtype=torch.float32)
    km = layer_map((3, 1), ME.SparseTensor(feats.to(DEVICE), coords.to(DEVICE)))
    kernel = torch.randn(27, 20, 24, generator=torch.Generator().manual_seed(4))
    (ref, ref_gf, ref_gw), (out, gf, gw) = both_paths(km, feats, kernel, km.num_out, torch.float32)
    for got, want in ((out, ref), (gf, ref_gf), (gw, ref_gw)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    tuned = kernels.tuned_configs()
    assert tuned['implicit_gemm'] and tuned['weight_grad']  # both kernels went through the autotuner
    for config in tuned['implicit_gemm'].values():  # 20 -> 24 channels: no candidate wider than 32
        assert 'BLOCK_N: 64' not in config and 'BLOCK_K: 64' not in config


def test_autotune_pruning_keeps_tiles_within_the_channels():
    configs = [triton.Config({'BLOCK_M': m, 'BLOCK_N': n, 'BLOCK_K': k})
               for m, n, k, *_ in plan.GEMM_CANDIDATES]
    kept = plan.fitting_configs(configs, {'C_IN': 20, 'c_out': 40}, {'BLOCK_N': 'c_out', 'BLOCK_K': 'C_IN'})
    assert kept and all(c.kwargs['BLOCK_N'] <= 64 and c.kwargs['BLOCK_K'] <= 32 for c in kept)
    assert len(kept) < len(configs)
    # channels narrower than every candidate: the smallest candidate is kept, never an empty list
    kept = plan.fitting_configs(configs, {'C_IN': 3, 'c_out': 8}, {'BLOCK_N': 'c_out', 'BLOCK_K': 'C_IN'})
    assert [(c.kwargs['BLOCK_N'], c.kwargs['BLOCK_K']) for c in kept] == [(32, 16)]


def test_weight_grad_slices():
    assert plan.weight_grad_slices(100, 27, 32, 32) == 1  # small maps: one slice per offset
    assert plan.weight_grad_slices(750_000, 27, 96, 96) == 32  # capped at 32
    # the float32 partial sums stay within the 64 MiB budget: 27 x 256 x 256 x 4 B = 6.75 MiB per slice
    assert plan.weight_grad_slices(750_000, 27, 256, 256) == 9
