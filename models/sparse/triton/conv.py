"""The Triton path's launches and autograd: ``triton_sparse_conv``, same contract as the reference.

Rows are tiled in the order of the gather plan (``plan.gather_plan``). A 1x1x1 conv is a dense matmul and goes
to cuBLAS, as does the weight gradient of a submanifold conv's identity offset. Inputs are computed in the
autocast dtype (fp16 / bf16) or float32 (IEEE, unless TF32 is allowed), accumulation is float32.
"""
import torch
import triton

from models.sparse import settings
from models.sparse.dispatch import make_sparse_conv
from models.sparse.triton import kernels
from models.sparse.triton.plan import gather_plan, gemm_config, is_dense, weight_grad_config, weight_grad_slices


def _use_autotuner(device):
    return settings.current().autotune and (device.type == 'cuda' or kernels.interpreting())


def _dot_mode(dtype):
    """``_mma``'s mode: float32 inputs follow PyTorch's matmul setting (exact unless TF32 is allowed)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return 'ieee'
    if dtype == torch.bfloat16 and kernels.interpreting():
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
        kernels.implicit_gemm_tuned[grid](*args, C_IN=c_in, DOT=_dot_mode(x.dtype))
    else:
        block_m, block_n, block_k, warps, stages = gemm_config(c_in, c_out)
        grid = (triton.cdiv(num_out, block_m), triton.cdiv(c_out, block_n))
        kernels.implicit_gemm_kernel[grid](*args, C_IN=c_in, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                                           DOT=_dot_mode(x.dtype), num_warps=warps, num_stages=stages)
    return out


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
        kernels.weight_grad_tuned[grid](*args, NUM_SLICES=slices, DOT=_dot_mode(x.dtype))
    else:
        block_p, block_i, block_o, warps, stages = weight_grad_config(c_in, c_out)
        grid = (km.kernel_volume * slices, triton.cdiv(c_in, block_i), triton.cdiv(c_out, block_o))
        kernels.weight_grad_kernel[grid](*args, NUM_SLICES=slices, BLOCK_P=block_p, BLOCK_I=block_i,
                                         BLOCK_O=block_o, DOT=_dot_mode(x.dtype), num_warps=warps, num_stages=stages)
    grad = partial.sum(1)
    if ident >= 0:
        grad[ident] = (x.t() @ grad_out).float()
    return grad


# ----------------------------------------------------------------------------- autograd
def _forward(x, w3, kernel_map, num_out):
    if is_dense(kernel_map):
        return x @ w3[0]
    return implicit_gemm(x, w3, gather_plan(kernel_map), num_out)


def _backward(g, x, w3, kernel_map, need_features, need_kernel):
    grad_f = grad_k = None
    dense = is_dense(kernel_map)
    if need_features:
        grad_f = g @ w3[0].t() if dense else implicit_gemm(g, w3, gather_plan(kernel_map, transposed=True),
                                                           kernel_map.num_in, transpose_w=True)
    if need_kernel:
        grad_k = (x.t() @ g)[None] if dense else weight_grad(x, g, kernel_map)
    return grad_f, grad_k


# ``sparse_conv`` through the Triton kernels (CUDA; CPU only under ``TRITON_INTERPRET=1``)
triton_sparse_conv = make_sparse_conv('TritonSparseConvFunction', _forward, _backward,
                                      devices='cuda (or cpu under TRITON_INTERPRET=1)')
