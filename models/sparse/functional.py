"""The sparse convolution compute: gather -> matmul -> scatter-add, one kernel offset at a time.

    out[j] = sum_k sum_{(i, j) in M_k} F[i] @ W[k]          (M_k: the kernel map's pairs of offset k)

``sparse_conv(features, kernel, kernel_map, num_out)`` is the single entry point every layer calls.
``_IMPLEMENTATIONS`` maps an implementation name to a function of the same signature: ``torch`` (this
file, the default and the reference) and ``triton`` (``triton_conv.py``: implicit-GEMM Triton kernels for
CUDA). ``set_implementation`` or the ``SPARSE_CONV_IMPL`` environment variable picks one without touching
the layers; ``register_implementation`` adds another.

Memory: the backward pass re-gathers ``F[in_idx]`` and ``dOut[out_idx]`` per offset instead of
saving one gathered copy per offset in the forward (that would cost sum_k |M_k| x C floats, ~27x the
features for a 3x3x3 conv), and the saved features are kept in the compute dtype. Under autocast the
matmuls run in the autocast dtype; sums over offsets accumulate in float32 and the result is returned in
the autocast dtype, as a dense conv would.
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


def make_autograd_functions(name, forward, backward):
    """{'cpu': Function, 'cuda': Function} around a compute pair with the engine's dtype contract:

        forward(f, w3, kernel_map, num_out) -> out                       (in f's dtype)
        backward(g, f, w3, kernel_map, need_f, need_k) -> (grad_f, grad_w3 or None)

    f, w3 and g arrive in the compute dtype (the autocast dtype, else the input's) with autocast off inside;
    the features are kept in that dtype for backward (under autocast: half the bytes of the float32 input),
    and the gradients go back in the dtypes of the features and the kernel.
    """
    def make(device_type):
        class Function(torch.autograd.Function):
            @staticmethod
            @torch.amp.custom_fwd(device_type=device_type)
            def forward(ctx, features, kernel, kernel_map, num_out):
                dtype = _compute_dtype(device_type, features.dtype)
                f = features.to(dtype).contiguous()
                with torch.autocast(device_type=device_type, enabled=False):
                    out = forward(f, _as_3d(kernel).to(dtype).contiguous(), kernel_map, int(num_out)).to(dtype)
                ctx.save_for_backward(f, kernel)
                ctx.kernel_map, ctx.features_dtype = kernel_map, features.dtype
                return out

            @staticmethod
            @torch.amp.custom_bwd(device_type=device_type)
            def backward(ctx, grad_out):
                f, kernel = ctx.saved_tensors
                with torch.autocast(device_type=device_type, enabled=False):
                    gf, gk = backward(grad_out.to(f.dtype).contiguous(), f, _as_3d(kernel).to(f.dtype).contiguous(),
                                      ctx.kernel_map, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
                gf = gf.to(ctx.features_dtype) if gf is not None else None
                gk = gk.reshape(kernel.shape).to(kernel.dtype) if gk is not None else None
                return gf, gk, None, None

        Function.__name__ = f'{name}_{device_type}'
        return Function

    return {'cpu': make('cpu'), 'cuda': make('cuda')}


_FUNCTIONS = make_autograd_functions('SparseConvFunction', _forward, _backward)


def _torch_sparse_conv(features, kernel, kernel_map, num_out):
    fn = _FUNCTIONS.get(features.device.type)
    if fn is None:
        raise NotImplementedError(f'sparse_conv supports cpu and cuda tensors, found {features.device}')
    return fn.apply(features, kernel, kernel_map, num_out)


def _triton_sparse_conv(features, kernel, kernel_map, num_out):
    # imported on first use: CPU-only PyTorch installs have no Triton
    from models.sparse.triton_conv import triton_sparse_conv
    return triton_sparse_conv(features, kernel, kernel_map, num_out)


def _triton_prepare(kernel_map):
    from models.sparse.triton_conv import prepare
    prepare(kernel_map)


_IMPLEMENTATIONS = {'torch': _torch_sparse_conv, 'triton': _triton_sparse_conv}
_PREPARE = {'triton': _triton_prepare}
_selected = os.environ.get('SPARSE_CONV_IMPL', 'torch')


def register_implementation(name, fn, prepare=None):
    """Add an implementation with ``sparse_conv``'s signature (e.g. a Triton kernel for CUDA); ``prepare``,
    if given, derives its tables from a new kernel map (see ``prepare_kernel_map``)."""
    _IMPLEMENTATIONS[name] = fn
    _PREPARE.pop(name, None)
    if prepare is not None:
        _PREPARE[name] = prepare


def prepare_kernel_map(kernel_map):
    """Let the selected implementation derive what it needs from a kernel map as the map is built (the
    Triton path: its row-sorted forward gather table), so that cost is counted, and cached, with the map's."""
    prepare = _PREPARE.get(_selected)
    if prepare is not None:
        prepare(kernel_map)


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
