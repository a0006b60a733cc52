"""Sparse convolution as Triton kernels: an implicit GEMM over the kernel map (``SPARSE_CONV_IMPL=triton``).

Same contract as the pure-PyTorch reference in ``functional.py`` (which stays the CPU path and the oracle
these kernels are tested against, on CPU through Triton's interpreter, ``TRITON_INTERPRET=1``):

    forward   out[j]  = sum_k  F[nb[k, j]] @ W[k]          nb[k, j]: input row that offset k brings to output j
    grad F    dF[i]   = sum_k  dOut[nbT[k, i]] @ W[k]^T     nbT[k, i]: output row input i feeds through offset k
    grad W    dW[k]   = sum_{(i, j) in M_k} F[i]^T dOut[j]

The first two are one kernel, "output-stationary": a program owns a tile of output rows x output channels,
walks the K offsets, gathers its input rows through the neighbour table (absent neighbours read as 0 and
offsets no row of the tile uses are skipped), multiplies with ``tl.dot`` and writes its tile once: no
atomics, no [pairs x C] gathered copy in memory, deterministic. Rows are tiled in the order of their
neighbour masks (``mask_order``), so a tile's rows share offsets and skipped offsets are many: on ScanNet-scale
rooms 90 % of the executed multiply-adds are useful, against 49 % in memory order (bench/tile_occupancy.py).
The grad-W kernel reduces over the pairs of each offset in a fixed number of slices whose partial products
are summed afterwards (deterministic too). A 1x1x1 conv is a dense matmul and goes to cuBLAS, as does the
weight gradient of a submanifold conv's identity offset. Inputs are computed in the autocast dtype
(fp16 / bf16) or float32 (IEEE, unless TF32 is allowed), accumulation is float32.

The row-sorted neighbour tables ("gather plans") are cached on the kernel map: the forward one is built with
the map (``prepare``), the feature-gradient one by the first backward pass that needs it. Tile shapes come from a fixed rule, or from Triton's autotuner (SPARSE_CONV_TRITON_AUTOTUNE=1).
bench/triton_kernels.py compiles every variant for sm_80 / sm_90 without a GPU (registers, spills).
Status: tested for equality with the reference (outputs and both gradients) on CPU; its speed against
spconv on a GPU is what ``bench/sparse_unet.py --impl triton`` measures, so the default implementation
stays ``torch`` until a measurement says otherwise.
"""
import os
import time

import torch
import triton
import triton.language as tl

from models.sparse import functional


@triton.jit
def _mma(acc, a, b, DOT: tl.constexpr):
    """acc + a @ b. DOT: 'ieee' (exact float32 products), 'native' (tensor cores: fp16 / bf16, or TF32 for
    float32 when PyTorch allows it) or 'upcast' (bf16 tiles widened to float32 first: Triton's interpreter
    multiplies bf16 tiles wrongly, numpy having no bf16; widening is exact, so CPU tests still check bf16)."""
    if DOT == 'ieee':
        acc += tl.dot(a, b, input_precision='ieee')
    elif DOT == 'upcast':
        acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision='ieee')
    else:
        acc += tl.dot(a, b)
    return acc


@triton.jit
def _implicit_gemm_kernel(x_ptr, w_ptr, nb_ptr, rows_ptr, out_ptr, num_out, c_out, num_offsets,
                          stride_wk, stride_wi, stride_wo, C_IN: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          DOT: tl.constexpr):
    """out[rows[t]] = sum_k x[nb[k, t]] @ W_k for the tile's positions t (nb's columns are in tile order).

    C_IN is a compile-time constant (a network has a handful of widths): when BLOCK_K divides it the channel
    loop needs no bounds masks, and the gather pointers advance by increments. That halves the registers of
    a 64 x 64 fp16 tile (bench/triton_kernels.py reports them) and removes spills.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pos = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = pos < num_out
    col_ok = cols < c_out
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, num_offsets):
        src = tl.load(nb_ptr + k * num_out + pos, mask=row_ok, other=-1)
        has = src >= 0
        if tl.max(has.to(tl.int32), axis=0) > 0:  # some row of the tile has this neighbour
            a_ptrs = x_ptr + tl.where(has, src, 0).to(tl.int64)[:, None] * C_IN + tl.arange(0, BLOCK_K)[None, :]
            b_ptrs = w_ptr + k * stride_wk + tl.arange(0, BLOCK_K)[:, None] * stride_wi + cols[None, :] * stride_wo
            for c0 in range(0, C_IN, BLOCK_K):
                if C_IN % BLOCK_K == 0:
                    a = tl.load(a_ptrs, mask=has[:, None], other=0.0)
                    b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
                else:
                    k_ok = c0 + tl.arange(0, BLOCK_K) < C_IN
                    a = tl.load(a_ptrs, mask=has[:, None] & k_ok[None, :], other=0.0)
                    b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                acc = _mma(acc, a, b, DOT)
                a_ptrs += BLOCK_K
                b_ptrs += BLOCK_K * stride_wi
    rows = tl.load(rows_ptr + pos, mask=row_ok, other=0)
    out_offsets = rows.to(tl.int64)[:, None] * c_out + cols[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _weight_grad_kernel(x_ptr, g_ptr, in_idx_ptr, out_idx_ptr, bounds_ptr, partial_ptr, c_in, c_out, skip_k,
                        NUM_SLICES: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr,
                        BLOCK_O: tl.constexpr, DOT: tl.constexpr):
    """partial[k, s] = sum over slice s of offset k's pairs of x[in]^T g[out] (tile BLOCK_I x BLOCK_O); offset
    ``skip_k`` (the identity offset, done by cuBLAS) gets zeros."""
    pid_ks = tl.program_id(0)
    k = pid_ks // NUM_SLICES
    s = pid_ks % NUM_SLICES
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    oo = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    i_ok = ii < c_in
    o_ok = oo < c_out
    start = tl.load(bounds_ptr + k)
    stop = tl.where(k == skip_k, start, tl.load(bounds_ptr + k + 1))
    per_slice = tl.cdiv(stop - start, NUM_SLICES)
    lo = start + s * per_slice
    hi = tl.minimum(lo + per_slice, stop)
    acc = tl.zeros((BLOCK_I, BLOCK_O), dtype=tl.float32)
    for p0 in range(lo, hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < hi
        src = tl.load(in_idx_ptr + p, mask=p_ok, other=0).to(tl.int64)
        dst = tl.load(out_idx_ptr + p, mask=p_ok, other=0).to(tl.int64)
        a = tl.load(x_ptr + src[None, :] * c_in + ii[:, None], mask=i_ok[:, None] & p_ok[None, :], other=0.0)
        b = tl.load(g_ptr + dst[:, None] * c_out + oo[None, :], mask=p_ok[:, None] & o_ok[None, :], other=0.0)
        acc = _mma(acc, a, b, DOT)
    base = pid_ks.to(tl.int64) * c_in * c_out
    tl.store(partial_ptr + base + ii[:, None] * c_out + oo[None, :], acc, mask=i_ok[:, None] & o_ok[None, :])


# ----------------------------------------------------------------------------- neighbour tables
def neighbour_table(kernel_map, transposed=False):
    """nb [K, N_out] int32 from the kernel map's pairs, -1 where absent: nb[k, j] is the input row that offset
    k brings to output j; ``transposed``: nbT [K, N_in], nbT[k, i] the output row input i feeds through k."""
    km = kernel_map
    device = km.in_idx.device
    src, dst, n = (km.out_idx, km.in_idx, km.num_in) if transposed else (km.in_idx, km.out_idx, km.num_out)
    k_of_pair = torch.repeat_interleave(torch.arange(km.kernel_volume, device=device), km.offset_ptr.diff())
    nb = torch.full((km.kernel_volume, n), -1, dtype=torch.int32, device=device)
    nb[k_of_pair, dst.long()] = src
    return nb


ROW_ORDERS = ('mask', 'none')
_row_order = os.environ.get('SPARSE_CONV_ROW_ORDER', 'mask')
if _row_order not in ROW_ORDERS:
    raise ValueError(f'SPARSE_CONV_ROW_ORDER={_row_order!r}: expected one of {ROW_ORDERS}')


def set_row_order(name):
    """How the implicit GEMM groups output rows into tiles: ``mask`` (rows sorted by their neighbour mask,
    the default) or ``none`` (memory order). Takes effect for kernel maps built afterwards."""
    global _row_order
    if name not in ROW_ORDERS:
        raise ValueError(f'unknown row order {name!r}; have {ROW_ORDERS}')
    _row_order = name


def mask_order(nb):
    """Rows [N] int64 sorted by their neighbour mask (bit k set where nb[k, row] >= 0), ties in memory order.

    A tile of the implicit GEMM runs every offset that any of its rows has; rows with equal masks side by side
    let tiles skip the offsets none of them has. On 2 cm surface voxels this halves the multiply-adds of a
    3x3x3 conv and quarters those of a kernel-2 transposed conv; over a MinkUNet18A training step on ScanNet-
    scale rooms it cuts the executed multiply-adds 1.8x (``tile_occupancy``; bench/tile_occupancy.py).
    Masks wider than 62 bits (a 5x5x5 kernel) are compared word by word: stable sorts from the least
    significant word up (LSD radix), so the order is lexicographic over the whole mask.
    """
    has = nb >= 0
    order = None  # memory order until the first (least significant) word is sorted
    for w0 in reversed(range(0, nb.shape[0], 62)):
        key = torch.zeros(nb.shape[1], dtype=torch.int64, device=nb.device)
        for k in range(w0, min(w0 + 62, nb.shape[0])):  # offset w0 is the word's most significant bit
            key = torch.bitwise_or(key << 1, has[k] if order is None else has[k].index_select(0, order))
        step = torch.argsort(key, stable=True)
        order = step if order is None else order[step]
    return order


def tile_occupancy(nb, order=None, block_m=64):
    """Useful / executed multiply-adds of the implicit GEMM over ``nb`` with rows tiled in ``order``: a tile
    of ``block_m`` rows executes every offset any of its rows has, for all of its rows."""
    has = nb >= 0 if order is None else (nb >= 0).index_select(1, order)
    k, n = has.shape
    pairs = int(has.sum())
    if pairs == 0:
        return 1.0
    tiles = torch.nn.functional.pad(has, (0, (-n) % block_m)).view(k, -1, block_m).any(2)
    return pairs / (int(tiles.sum()) * block_m)


def gather_plan(kernel_map, transposed=False):
    """(table [K, N] int32 with columns in tile order, rows [N] int32: the output row of each column) for
    out = conv(x), or for dx = conv^T(dout) if ``transposed``; built on first use and cached on the map."""
    key = ('gather_plan', transposed, _row_order)
    plan = kernel_map.cache.get(key)
    if plan is None:
        nb = neighbour_table(kernel_map, transposed)
        if _row_order == 'mask' and nb.shape[0] > 1:
            order = mask_order(nb)
            plan = (nb.index_select(1, order), order.to(torch.int32))
        else:
            plan = (nb, torch.arange(nb.shape[1], dtype=torch.int32, device=nb.device))
        kernel_map.cache[key] = plan
    return plan


def prepare(kernel_map):
    """Build a new kernel map's forward gather plan as the map is built (``functional.prepare_kernel_map``).
    The feature-gradient plan waits for a backward pass that needs it: the stem's input has no gradient."""
    if not (kernel_map.kernel_volume == 1 and kernel_map.identity_offset == 0):  # else a dense matmul
        gather_plan(kernel_map)


# ----------------------------------------------------------------------------- launch configurations
# Tile shapes and launch parameters: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for the implicit GEMM,
# (BLOCK_P, BLOCK_I, BLOCK_O, num_warps, num_stages) for the weight gradient. By default a fixed rule picks
# one per layer shape (``gemm_config`` / ``weight_grad_config``), so a run is bitwise reproducible; with
# SPARSE_CONV_TRITON_AUTOTUNE=1 Triton's autotuner times the candidates below on the GPU, once per layer
# shape and dtype, and keeps the fastest (``tuned_configs()`` lists its choices, e.g. to update the rule).
# bench/triton_kernels.py compiles every candidate for sm_80 / sm_90 without a GPU and reports registers,
# shared memory and spills.
GEMM_CANDIDATES = (  # none spills more than 32 bytes on sm_90 at 96 channels (bench/triton_kernels.py)
    (64, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 64, 32, 8, 3), (128, 128, 32, 8, 3),
    (32, 64, 32, 4, 4), (64, 32, 32, 4, 4), (32, 32, 32, 4, 4), (64, 32, 16, 4, 3),
)
WEIGHT_GRAD_CANDIDATES = (
    (32, 32, 32, 4, 3), (32, 64, 64, 4, 3), (64, 64, 64, 4, 3), (64, 32, 32, 4, 3), (128, 64, 64, 8, 3),
    (64, 128, 128, 8, 3),
)
_autotune = os.environ.get('SPARSE_CONV_TRITON_AUTOTUNE', '0')
if _autotune not in ('0', '1'):
    raise ValueError(f'SPARSE_CONV_TRITON_AUTOTUNE={_autotune!r}: expected 0 or 1')
_autotune = _autotune == '1'


def set_autotune(enabled):
    """Autotune the tile shapes on CUDA (as SPARSE_CONV_TRITON_AUTOTUNE=1); False: the fixed rule."""
    global _autotune
    _autotune = bool(enabled)


def _block(n, lo=16, hi=64):
    """A power-of-two tile size for a dimension of size n (tl.dot needs >= 16)."""
    return max(lo, min(hi, triton.next_power_of_2(int(n))))


def gemm_config(c_in, c_out):
    """The implicit GEMM's (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for a layer shape: tiles of at
    most 64 x 64 outputs, 32 input channels per step. On sm_90 at 96 input channels that is 130 registers per
    thread in fp16 and 192 in IEEE fp32 with no spills (at 64-256 channels fp32 keeps 8-16 bytes of stack); a
    64 x 128 tile needs 235 in fp16."""
    return 64, _block(c_out, hi=64), _block(c_in, hi=32), 4, 3


def weight_grad_config(c_in, c_out):
    """The weight-gradient kernel's (BLOCK_P, BLOCK_I, BLOCK_O, num_warps, num_stages) for a layer shape."""
    return 32, _block(c_in), _block(c_out), 4, 3


def _fits(configs, named_args, tile_dims):
    """Drop candidates whose tiles are wider than the (power-of-two) channel counts; keep at least one."""
    need = [_block(named_args[name], hi=1 << 30) for name in tile_dims.values()]
    kept = [c for c in configs if all(c.kwargs[b] <= n for b, n in zip(tile_dims, need))]
    return kept or [min(configs, key=lambda c: [c.kwargs[b] for b in tile_dims])]


def _interpreting():
    knobs = getattr(triton, 'knobs', None)  # triton >= 3.3; older releases read the variable directly
    return knobs.runtime.interpret if knobs is not None else os.environ.get('TRITON_INTERPRET') == '1'


def _benchmark(kernel_call, quantiles):
    """The autotuner's timer: Triton's GPU benchmark; in the interpreter (CPU tests), one timed call."""
    if _interpreting():
        t0 = time.perf_counter()
        kernel_call()
        return [(time.perf_counter() - t0) * 1e3] * len(quantiles)
    return triton.testing.do_bench(kernel_call, quantiles=quantiles)


def _autotuned(kernel, candidates, names, key, tile_dims):
    configs = [triton.Config(dict(zip(names, c[:3])), num_warps=c[3], num_stages=c[4]) for c in candidates]
    return triton.autotune(configs, key=key, do_bench=_benchmark, prune_configs_by={
        'early_config_prune': lambda cfgs, args, **kw: _fits(cfgs, {**args, **kw}, tile_dims)})(kernel)


_implicit_gemm_tuned = _autotuned(_implicit_gemm_kernel, GEMM_CANDIDATES, ('BLOCK_M', 'BLOCK_N', 'BLOCK_K'),
                                  ['C_IN', 'c_out', 'num_offsets', 'DOT'],
                                  {'BLOCK_N': 'c_out', 'BLOCK_K': 'C_IN'})
_weight_grad_tuned = _autotuned(_weight_grad_kernel, WEIGHT_GRAD_CANDIDATES, ('BLOCK_P', 'BLOCK_I', 'BLOCK_O'),
                                ['c_in', 'c_out', 'NUM_SLICES', 'DOT'],
                                {'BLOCK_I': 'c_in', 'BLOCK_O': 'c_out'})


def tuned_configs():
    """{kernel name: {autotuner key: chosen config}} of the configurations the autotuner has picked so far."""
    return {name: {k: str(v) for k, v in fn.cache.items()}
            for name, fn in (('implicit_gemm', _implicit_gemm_tuned), ('weight_grad', _weight_grad_tuned))}


def _use_autotuner(device):
    return _autotune and (device.type == 'cuda' or _interpreting())


def _dot_mode(dtype):
    """``_mma``'s mode: float32 inputs follow PyTorch's matmul setting (exact unless TF32 is allowed)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return 'ieee'
    if dtype == torch.bfloat16 and _interpreting():
        return 'upcast'
    return 'native'


# ----------------------------------------------------------------------------- launches
def implicit_gemm(x, w3, plan, num_out, transpose_w=False):
    """out[rows[t]] = sum_k x[table[k, t]] @ W_k for ``plan = (table, rows)``, with W_k = w3[k] ([C_in, C_out])
    or w3[k]^T if ``transpose_w``."""
    table, rows = plan
    num_offsets = w3.shape[0]
    if transpose_w:  # logical [K, C_out, C_in] view of the stored [K, C_in, C_out]
        c_in, c_out = w3.shape[2], w3.shape[1]
        strides = (w3.stride(0), w3.stride(2), w3.stride(1))
    else:
        c_in, c_out = w3.shape[1], w3.shape[2]
        strides = (w3.stride(0), w3.stride(1), w3.stride(2))
    out = torch.empty((num_out, c_out), dtype=x.dtype, device=x.device)
    if num_out == 0:
        return out
    args = (x, w3, table, rows, out, num_out, c_out, num_offsets, *strides)
    if _use_autotuner(x.device):
        grid = lambda meta: (triton.cdiv(num_out, meta['BLOCK_M']), triton.cdiv(c_out, meta['BLOCK_N']))  # noqa: E731
        _implicit_gemm_tuned[grid](*args, C_IN=c_in, DOT=_dot_mode(x.dtype))
    else:
        block_m, block_n, block_k, warps, stages = gemm_config(c_in, c_out)
        grid = (triton.cdiv(num_out, block_m), triton.cdiv(c_out, block_n))
        _implicit_gemm_kernel[grid](*args, C_IN=c_in, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                                    DOT=_dot_mode(x.dtype), num_warps=warps, num_stages=stages)
    return out


def weight_grad_slices(max_pairs, kernel_volume, c_in, c_out, budget_bytes=1 << 26):
    """How many slices the pairs of each offset are split into: enough programs to fill a GPU on large maps
    (one slice per ~4k pairs, at most 32), within a float32 partial-sum buffer of ``budget_bytes``."""
    by_work = min(32, max(1, max_pairs // 4096))
    by_memory = max(1, budget_bytes // (kernel_volume * c_in * c_out * 4))
    return int(min(by_work, by_memory))


def weight_grad(x, grad_out, kernel_map):
    """dW [K, C_in, C_out] float32 = per offset sum over its pairs of x[in]^T grad_out[out]: each offset's pairs
    are cut into a fixed number of slices whose partial products are summed afterwards (no atomics, so the
    result is deterministic). The identity offset of a submanifold conv (pairs (i, i) for every row, the most
    pairs of any offset) is the dense product x^T grad_out and goes to cuBLAS."""
    km = kernel_map
    c_in, c_out = x.shape[1], grad_out.shape[1]
    ident = km.identity_offset
    max_pairs = max([b - a for k, (a, b) in enumerate(zip(km.bounds[:-1], km.bounds[1:])) if k != ident] or [0])
    slices = weight_grad_slices(max_pairs, km.kernel_volume, c_in, c_out)
    partial = torch.empty((km.kernel_volume, slices, c_in, c_out), dtype=torch.float32, device=x.device)
    args = (x, grad_out, km.in_idx, km.out_idx, km.offset_ptr, partial, c_in, c_out, ident)
    if _use_autotuner(x.device):
        grid = lambda meta: (km.kernel_volume * slices, triton.cdiv(c_in, meta['BLOCK_I']),  # noqa: E731
                             triton.cdiv(c_out, meta['BLOCK_O']))
        _weight_grad_tuned[grid](*args, NUM_SLICES=slices, DOT=_dot_mode(x.dtype))
    else:
        block_p, block_i, block_o, warps, stages = weight_grad_config(c_in, c_out)
        grid = (km.kernel_volume * slices, triton.cdiv(c_in, block_i), triton.cdiv(c_out, block_o))
        _weight_grad_kernel[grid](*args, NUM_SLICES=slices, BLOCK_P=block_p, BLOCK_I=block_i, BLOCK_O=block_o,
                                  DOT=_dot_mode(x.dtype), num_warps=warps, num_stages=stages)
    grad = partial.sum(1)
    if ident >= 0:
        grad[ident] = (x.t() @ grad_out).float()
    return grad


# ----------------------------------------------------------------------------- autograd
def _is_dense(w3, kernel_map):
    # a 1x1x1 conv on one coordinate set is a dense matmul: cuBLAS does it better than a gather
    return w3.shape[0] == 1 and kernel_map.identity_offset == 0


def _forward(x, w3, kernel_map, num_out):
    if _is_dense(w3, kernel_map):
        return x @ w3[0]
    return implicit_gemm(x, w3, gather_plan(kernel_map), num_out)


def _backward(g, x, w3, kernel_map, need_features, need_kernel):
    grad_f = grad_k = None
    dense = _is_dense(w3, kernel_map)
    if need_features:
        grad_f = g @ w3[0].t() if dense else implicit_gemm(g, w3, gather_plan(kernel_map, transposed=True),
                                                           kernel_map.num_in, transpose_w=True)
    if need_kernel:
        grad_k = (x.t() @ g)[None] if dense else weight_grad(x, g, kernel_map)
    return grad_f, grad_k


_FUNCTIONS = functional.make_autograd_functions('TritonSparseConvFunction', _forward, _backward)


def triton_sparse_conv(features, kernel, kernel_map, num_out):
    """``sparse_conv`` through the Triton kernels (CUDA; CPU only under ``TRITON_INTERPRET=1``)."""
    fn = _FUNCTIONS.get(features.device.type)
    if fn is None:
        raise NotImplementedError(f'the triton sparse_conv runs on cuda (or cpu under TRITON_INTERPRET=1), '
                                  f'found {features.device}')
    return fn.apply(features, kernel, kernel_map, num_out)
