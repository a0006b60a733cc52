"""The reference sparse convolution: gather -> matmul -> scatter-add, one kernel offset at a time.

The default implementation (``sparse_conv: reference``), on CPU and CUDA, and the oracle the other
implementations are tested against. The identity offset of a submanifold conv (pairs (i, i) for every row)
is one dense matmul.

Memory: the backward pass re-gathers ``F[in_idx]`` and ``dOut[out_idx]`` per offset instead of
saving one gathered copy per offset in the forward (that would cost sum_k |M_k| x C floats, ~27x the
features for a 3x3x3 conv), and the saved features are kept in the compute dtype.
"""
import torch

from models.sparse.dispatch import make_sparse_conv, register


def _accumulate_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _offsets(kernel_map):
    """[(k, in_rows, out_rows)] of the offsets that have pairs, the identity offset left out, as views of the
    map's index arrays, once per map. On CPU the arrays are int64 copies: ``index_add_`` is 2-3x faster with
    int64 than with int32 indices there (on CUDA it is not, and the int32 arrays save the memory)."""
    table = kernel_map.cache.get('reference')
    if table is None:
        rows_in, rows_out = kernel_map.in_idx, kernel_map.out_idx
        if not rows_in.is_cuda:
            rows_in, rows_out = rows_in.long(), rows_out.long()
        ptr = kernel_map.bounds
        table = [(k, rows_in[ptr[k]:ptr[k + 1]], rows_out[ptr[k]:ptr[k + 1]]) for k in range(kernel_map.kernel_volume)
                 if k != kernel_map.identity_offset and ptr[k + 1] > ptr[k]]
        kernel_map.cache['reference'] = table
    return table


def _forward(features, kernel3, kernel_map, num_out):
    acc = _accumulate_dtype(features.dtype)
    ident = kernel_map.identity_offset
    if ident >= 0:
        out = (features @ kernel3[ident]).to(acc)
    else:
        out = features.new_zeros((num_out, kernel3.shape[2]), dtype=acc)
    for k, in_rows, out_rows in _offsets(kernel_map):
        out.index_add_(0, out_rows, (features.index_select(0, in_rows) @ kernel3[k]).to(acc))
    return out


def _backward(grad_out, features, kernel3, kernel_map, need_features, need_kernel):
    acc = _accumulate_dtype(features.dtype)
    ident = kernel_map.identity_offset
    grad_f = grad_k = None
    if need_features:
        if ident >= 0:
            grad_f = (grad_out @ kernel3[ident].t()).to(acc)
        else:
            grad_f = features.new_zeros(features.shape, dtype=acc)
    if need_kernel:
        grad_k = torch.zeros(kernel3.shape, dtype=acc, device=kernel3.device)
        if ident >= 0:
            grad_k[ident] = (features.t() @ grad_out).to(acc)
    for k, in_rows, out_rows in _offsets(kernel_map):
        g = grad_out.index_select(0, out_rows)  # recomputed gathers: nothing per offset was saved
        if need_features:
            grad_f.index_add_(0, in_rows, (g @ kernel3[k].t()).to(acc))
        if need_kernel:
            grad_k[k] = features.index_select(0, in_rows).t() @ g
    return grad_f, grad_k


# ``sparse_conv`` through the reference path (no shape checks: ``dispatch.sparse_conv`` makes them)
reference_sparse_conv = make_sparse_conv('SparseConvFunction', _forward, _backward)


register('reference', reference_sparse_conv)
