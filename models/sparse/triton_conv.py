"""Sparse convolution as Triton kernels: an implicit GEMM over the kernel map (``SPARSE_CONV_IMPL=triton``).

Same contract as the pure-PyTorch reference in ``functional.py`` (which stays the CPU path and the oracle
these kernels are tested against, on CPU through Triton's interpreter, ``TRITON_INTERPRET=1``):

    forward   out[j]  = sum_k  F[nb[k, j]] @ W[k]          nb[k, j]: input row that offset k brings to output j
    grad F    dF[i]   = sum_k  dOut[nbT[k, i]] @ W[k]^T     nbT[k, i]: output row input i feeds through offset k
    grad W    dW[k]   = sum_{(i, j) in M_k} F[i]^T dOut[j]

The first two are one kernel, "output-stationary": a program owns a tile of output rows x output channels,
walks the K offsets, gathers its input rows through the neighbour table (absent neighbours read as 0 and
offsets no row of the tile uses are skipped), multiplies with ``tl.dot`` and writes its tile once: no
atomics, no [pairs x C] gathered copy in memory, deterministic. The grad-W kernel reduces over the pairs
of each offset in a fixed number of slices whose partial products are summed afterwards (deterministic
too). Inputs are computed in the autocast dtype (fp16 / bf16) or float32, accumulation is float32.

The neighbour tables are derived from the kernel map's pairs once and cached on it. Status: tested for
equality with the reference (outputs and both gradients) on CPU; on GPU its speed against spconv is what
``bench/sparse_unet.py --impl triton`` measures, so the default implementation stays ``torch`` until a
measurement says otherwise.
"""
import torch
import triton
import triton.language as tl

from models.sparse import functional


@triton.jit
def _implicit_gemm_kernel(x_ptr, w_ptr, nb_ptr, out_ptr, num_out, c_in, c_out, num_offsets,
                          stride_wk, stride_wi, stride_wo,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          IEEE_FP32: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < num_out
    col_ok = cols < c_out
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, num_offsets):
        src = tl.load(nb_ptr + k * num_out + rows, mask=row_ok, other=-1)
        has = src >= 0
        if tl.max(has.to(tl.int32), axis=0) > 0:  # some row of the tile has this neighbour
            src64 = tl.where(has, src, 0).to(tl.int64)
            for c0 in range(0, c_in, BLOCK_K):
                ks = c0 + tl.arange(0, BLOCK_K)
                k_ok = ks < c_in
                a = tl.load(x_ptr + src64[:, None] * c_in + ks[None, :], mask=has[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(w_ptr + k * stride_wk + ks[:, None] * stride_wi + cols[None, :] * stride_wo,
                            mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                if IEEE_FP32:
                    acc += tl.dot(a, b, input_precision='ieee')
                else:
                    acc += tl.dot(a, b)
    out_offsets = rows.to(tl.int64)[:, None] * c_out + cols[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _weight_grad_kernel(x_ptr, g_ptr, in_idx_ptr, out_idx_ptr, bounds_ptr, partial_ptr, c_in, c_out,
                        NUM_SLICES: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr,
                        BLOCK_O: tl.constexpr, IEEE_FP32: tl.constexpr):
    """partial[k, s] = sum over slice s of offset k's pairs of x[in]^T g[out] (tile BLOCK_I x BLOCK_O)."""
    pid_ks = tl.program_id(0)
    k = pid_ks // NUM_SLICES
    s = pid_ks % NUM_SLICES
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    oo = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    i_ok = ii < c_in
    o_ok = oo < c_out
    start = tl.load(bounds_ptr + k)
    stop = tl.load(bounds_ptr + k + 1)
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
        if IEEE_FP32:
            acc += tl.dot(a, b, input_precision='ieee')
        else:
            acc += tl.dot(a, b)
    base = pid_ks.to(tl.int64) * c_in * c_out
    tl.store(partial_ptr + base + ii[:, None] * c_out + oo[None, :], acc, mask=i_ok[:, None] & o_ok[None, :])


# ----------------------------------------------------------------------------- neighbour tables
def neighbour_tables(kernel_map):
    """(nb [K, N_out], nbT [K, N_in]) int32, -1 where absent; built from the pairs once and cached."""
    tables = kernel_map.cache.get('neighbour_tables')
    if tables is None:
        km = kernel_map
        k_of_pair = torch.repeat_interleave(torch.arange(km.kernel_volume, device=km.in_idx.device),
                                            km.offset_ptr.diff())
        nb = torch.full((km.kernel_volume, km.num_out), -1, dtype=torch.int32, device=km.in_idx.device)
        nbt = torch.full((km.kernel_volume, km.num_in), -1, dtype=torch.int32, device=km.in_idx.device)
        nb[k_of_pair, km.out_idx.long()] = km.in_idx
        nbt[k_of_pair, km.in_idx.long()] = km.out_idx
        tables = km.cache['neighbour_tables'] = (nb, nbt)
    return tables


def _block(n, lo=16, hi=64):
    """A power-of-two tile size for a dimension of size n (tl.dot needs >= 16)."""
    return max(lo, min(hi, triton.next_power_of_2(int(n))))


def _ieee_fp32(dtype):
    # float32 inputs follow PyTorch's matmul setting: exact fp32 unless TF32 is allowed globally
    return dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


def implicit_gemm(x, w3, nb, num_out, transpose_w=False):
    """out[j] = sum_k x[nb[k, j]] @ W_k, with W_k = w3[k] ([C_in, C_out]) or w3[k]^T if ``transpose_w``."""
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
    block_m, block_n, block_k = 64, _block(c_out, hi=128), _block(c_in, hi=32)
    grid = (triton.cdiv(num_out, block_m), triton.cdiv(c_out, block_n))
    _implicit_gemm_kernel[grid](x, w3, nb, out, num_out, c_in, c_out, num_offsets, *strides,
                                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE_FP32=_ieee_fp32(x.dtype))
    return out


def weight_grad(x, grad_out, kernel_map, num_slices=8):
    """dW [K, C_in, C_out] float32 = per offset sum over its pairs of x[in]^T grad_out[out]."""
    km = kernel_map
    c_in, c_out = x.shape[1], grad_out.shape[1]
    partial = torch.empty((km.kernel_volume, num_slices, c_in, c_out), dtype=torch.float32, device=x.device)
    block_i, block_o = _block(c_in), _block(c_out)
    grid = (km.kernel_volume * num_slices, triton.cdiv(c_in, block_i), triton.cdiv(c_out, block_o))
    _weight_grad_kernel[grid](x, grad_out, km.in_idx, km.out_idx, km.offset_ptr, partial, c_in, c_out,
                              NUM_SLICES=num_slices, BLOCK_P=32, BLOCK_I=block_i, BLOCK_O=block_o,
                              IEEE_FP32=_ieee_fp32(x.dtype))
    return partial.sum(1)


# ----------------------------------------------------------------------------- autograd
def _forward(x, w3, kernel_map, num_out):
    nb, _ = neighbour_tables(kernel_map)
    return implicit_gemm(x, w3, nb, num_out)


def _backward(g, x, w3, kernel_map, need_features, need_kernel):
    grad_f = grad_k = None
    if need_features:
        _, nbt = neighbour_tables(kernel_map)
        grad_f = implicit_gemm(g, w3, nbt, kernel_map.num_in, transpose_w=True)
    if need_kernel:
        grad_k = weight_grad(x, g, kernel_map)
    return grad_f, grad_k


_FUNCTIONS = functional.make_autograd_functions('TritonSparseConvFunction', _forward, _backward)


def triton_sparse_conv(features, kernel, kernel_map, num_out):
    """``sparse_conv`` through the Triton kernels (CUDA; CPU only under ``TRITON_INTERPRET=1``)."""
    fn = _FUNCTIONS.get(features.device.type)
    if fn is None:
        raise NotImplementedError(f'the triton sparse_conv runs on cuda (or cpu under TRITON_INTERPRET=1), '
                                  f'found {features.device}')
    return fn.apply(features, kernel, kernel_map, num_out)
