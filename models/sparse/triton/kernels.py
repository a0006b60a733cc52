"""The Triton kernels of the implicit-GEMM sparse convolution, and their autotuned variants.

    forward   out[j]  = sum_k  F[nb[k, j]] @ W[k]          nb[k, j]: input row that offset k brings to output j
    grad F    dF[i]   = sum_k  dOut[nbT[k, i]] @ W[k]^T     nbT[k, i]: output row input i feeds through offset k
    grad W    dW[k]   = sum_{(i, j) in M_k} F[i]^T dOut[j]

The first two are one kernel, "output-stationary": a program owns a tile of output rows x output channels,
walks the K offsets, gathers its input rows through the neighbour table (absent neighbours read as 0 and
offsets no row of the tile uses are skipped), multiplies with ``tl.dot`` and writes its tile once: no
atomics, no [pairs x C] gathered copy in memory, deterministic. The grad-W kernel reduces over the pairs of
each offset in a fixed number of slices whose partial products are summed afterwards (deterministic too).
"""
import os
import time

import triton
import triton.language as tl

from models.sparse.triton.plan import GEMM_CANDIDATES, WEIGHT_GRAD_CANDIDATES, fitting_configs


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
def implicit_gemm_kernel(x_ptr, w_ptr, nb_ptr, rows_ptr, out_ptr, num_out, c_out, num_offsets,
                         stride_wk, stride_wi, stride_wo, C_IN: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         DOT: tl.constexpr):
    """out[rows[t]] = sum_k x[nb[k, t]] @ W_k for the tile's positions t (nb's columns are in tile order).

    C_IN is a compile-time constant (a network has a handful of widths): when BLOCK_K divides it the channel
    loop needs no bounds masks, and the gather pointers advance by increments, which saves registers and
    spills (the counts per variant: bench/triton_kernels.py, bench/README.md).
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
def weight_grad_kernel(x_ptr, g_ptr, in_idx_ptr, out_idx_ptr, bounds_ptr, partial_ptr, c_in, c_out, skip_k,
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


# ----------------------------------------------------------------------------- autotuned variants
def interpreting():
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1: the CPU tests)."""
    knobs = getattr(triton, 'knobs', None)  # triton >= 3.3; older releases read the variable directly
    return knobs.runtime.interpret if knobs is not None else os.environ.get('TRITON_INTERPRET') == '1'


def _benchmark(kernel_call, quantiles):
    """The autotuner's timer: Triton's GPU benchmark; in the interpreter (CPU tests), one timed call."""
    if interpreting():
        t0 = time.perf_counter()
        kernel_call()
        return [(time.perf_counter() - t0) * 1e3] * len(quantiles)
    return triton.testing.do_bench(kernel_call, quantiles=quantiles)


def _autotuned(kernel, candidates, names, key, tile_dims):
    configs = [triton.Config(dict(zip(names, c[:3])), num_warps=c[3], num_stages=c[4]) for c in candidates]
    return triton.autotune(configs, key=key, do_bench=_benchmark, prune_configs_by={
        'early_config_prune': lambda cfgs, args, **kw: fitting_configs(cfgs, {**args, **kw}, tile_dims)})(kernel)


implicit_gemm_tuned = _autotuned(implicit_gemm_kernel, GEMM_CANDIDATES, ('BLOCK_M', 'BLOCK_N', 'BLOCK_K'),
                                 ['C_IN', 'c_out', 'num_offsets', 'DOT'],
                                 {'BLOCK_N': 'c_out', 'BLOCK_K': 'C_IN'})
weight_grad_tuned = _autotuned(weight_grad_kernel, WEIGHT_GRAD_CANDIDATES, ('BLOCK_P', 'BLOCK_I', 'BLOCK_O'),
                               ['c_in', 'c_out', 'NUM_SLICES', 'DOT'],
                               {'BLOCK_I': 'c_in', 'BLOCK_O': 'c_out'})


def tuned_configs():
    """{kernel name: {autotuner key: chosen config}} of the configurations the autotuner has picked so far."""
    return {name: {k: str(v) for k, v in fn.cache.items()}
            for name, fn in (('implicit_gemm', implicit_gemm_tuned), ('weight_grad', weight_grad_tuned))}
