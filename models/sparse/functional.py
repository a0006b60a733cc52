"""The sparse convolution compute: gather -> matmul -> scatter-add, one kernel offset at a time.

    out[j] = sum_k sum_{(i, j) in M_k} F[i] @ W[k]          (M_k: the kernel map's pairs of offset k)

``sparse_conv(features, kernel, kernel_map, num_out)`` is the single entry point every layer calls.
``_IMPLEMENTATIONS`` maps an implementation name to a function of the same signature: ``torch`` (this
file, the default and the reference) and ``triton`` (``triton_conv.py``: implicit-GEMM Triton kernels for
CUDA). ``set_implementation`` or the ``SPARSE_CONV_IMPL`` environment variable picks one without touching
the layers; ``register_implementation`` adds another.

Memory: the backward pass re-gathers ``F[in_idx]`` and ``dOut[out_idx]`` per offset instead of
saving one gathered copy per offset in the forward, and the features are kept in the compute dtype (that would cost sum_k |M_k| x C floats, ~27x the
features for a 3x3x3 conv). Under autocast the matmuls run in the autocast dtype; sums over offsets
accumulate in float32 and the result is returned in the autocast dtype, as a dense conv would.
"""
import os

import torch


def _compute_dtype(device_type, dtype):
    if device_type in ('cuda', 'cpu') and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def _accumulate_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _as_3d(kernel):
    # A kernel of volume 1 is stored [C_in, C_out] (MinkowskiEngine's layout); treat it as [1, C_in, C_out].
    return kernel.unsqueeze(0) if kernel.dim() == 2 else kernel


def _forward(features, kernel3, kernel_map, num_out):
    acc = _accumulate_dtype(features.dtype)
    ptr = kernel_map.bounds
    ident = kernel_map.identity_offset
    if ident >= 0:
        out = (features @ kernel3[ident]).to(acc)
    else:
        out = features.new_zeros((num_out, kernel3.shape[2]), dtype=acc)
    for k in range(kernel3.shape[0]):
        a, b = ptr[k], ptr[k + 1]
        if k == ident or a == b:
            continue
        rows = features.index_select(0, kernel_map.in_idx[a:b]) @ kernel3[k]
        out.index_add_(0, kernel_map.out_idx[a:b], rows.to(acc))
    return out


def _backward(grad_out, features, kernel3, kernel_map, need_features, need_kernel):
    acc = _accumulate_dtype(features.dtype)
    ptr = kernel_map.bounds
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
    for k in range(kernel3.shape[0]):
        a, b = ptr[k], ptr[k + 1]
        if k == ident or a == b:
            continue
        in_idx, out_idx = kernel_map.in_idx[a:b], kernel_map.out_idx[a:b]
        g = grad_out.index_select(0, out_idx)  # recomputed gathers: nothing per offset was saved
        if need_features:
            grad_f.index_add_(0, in_idx, (g @ kernel3[k].t()).to(acc))
        if need_kernel:
            grad_k[k] = (features.index_select(0, in_idx).t() @ g).to(acc)
    return grad_f, grad_k


def _make_function(device_type):
    class SparseConvFunction(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type=device_type)
        def forward(ctx, features, kernel, kernel_map, num_out):
            dtype = _compute_dtype(device_type, features.dtype)
            f = features.to(dtype)
            w = _as_3d(kernel).to(dtype)
            # Autocast is off inside: the dtypes are chosen explicitly above.
            with torch.autocast(device_type=device_type, enabled=False):
                out = _forward(f, w, kernel_map, int(num_out)).to(dtype)
            # keep the features in the compute dtype (under autocast: half the bytes of the float32 input),
            # which is what the backward multiplies with anyway
            ctx.save_for_backward(f, kernel)
            ctx.kernel_map = kernel_map
            ctx.dtype, ctx.features_dtype = dtype, features.dtype
            return out

        @staticmethod
        @torch.amp.custom_bwd(device_type=device_type)
        def backward(ctx, grad_out):
            f, kernel = ctx.saved_tensors
            need_f, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            dtype = ctx.dtype
            with torch.autocast(device_type=device_type, enabled=False):
                gf, gk = _backward(grad_out.contiguous().to(dtype), f, _as_3d(kernel).to(dtype), ctx.kernel_map,
                                   need_f, need_k)
            if gf is not None:
                gf = gf.to(ctx.features_dtype)
            if gk is not None:
                gk = gk.reshape(kernel.shape).to(kernel.dtype)
            return gf, gk, None, None

    SparseConvFunction.__name__ = f'SparseConvFunction_{device_type}'
    return SparseConvFunction


_FUNCTIONS = {'cpu': _make_function('cpu'), 'cuda': _make_function('cuda')}


def _torch_sparse_conv(features, kernel, kernel_map, num_out):
    fn = _FUNCTIONS.get(features.device.type)
    if fn is None:
        raise NotImplementedError(f'sparse_conv supports cpu and cuda tensors, found {features.device}')
    return fn.apply(features, kernel, kernel_map, num_out)


def _triton_sparse_conv(features, kernel, kernel_map, num_out):
    # imported on first use: CPU-only PyTorch installs have no Triton
    from models.sparse.triton_conv import triton_sparse_conv
    return triton_sparse_conv(features, kernel, kernel_map, num_out)


_IMPLEMENTATIONS = {'torch': _torch_sparse_conv, 'triton': _triton_sparse_conv}
_selected = os.environ.get('SPARSE_CONV_IMPL', 'torch')


def register_implementation(name, fn):
    """Add an implementation with ``sparse_conv``'s signature (e.g. a Triton kernel for CUDA)."""
    _IMPLEMENTATIONS[name] = fn


def set_implementation(name):
    global _selected
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f'unknown sparse_conv implementation {name!r}; have {sorted(_IMPLEMENTATIONS)}')
    _selected = name


def sparse_conv(features, kernel, kernel_map, num_out):
    """Sparse convolution: features [N_in, C_in], kernel [K, C_in, C_out] (or [C_in, C_out] when
    K == 1), a ``KernelMap`` with K offsets -> output features [num_out, C_out]."""
    kv = 1 if kernel.dim() == 2 else kernel.shape[0]
    if kv != kernel_map.kernel_volume:
        raise ValueError(f'kernel has {kv} offsets but the kernel map has {kernel_map.kernel_volume}')
    if features.shape[1] != kernel.shape[-2]:
        raise ValueError(f'features have {features.shape[1]} channels, kernel expects {kernel.shape[-2]}')
    impl = _IMPLEMENTATIONS.get(_selected)
    if impl is None:
        raise ValueError(f'unknown sparse_conv implementation {_selected!r} (SPARSE_CONV_IMPL); have '
                         f'{sorted(_IMPLEMENTATIONS)}')
    return impl(features, kernel, kernel_map, num_out)
