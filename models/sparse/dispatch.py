"""Which convolution implementation runs, and the autograd wrapper they share (docs/sparse_engine.md).

    out[j] = sum_k sum_{(i, j) in M_k} F[i] @ W[k]          (M_k: the kernel map's pairs of offset k)

``sparse_conv(features, kernel, kernel_map, num_out)`` is the single entry point every layer calls; it
runs the implementation that ``settings.current().conv`` names. Each implementation is a module of this
package with that name (``reference.py``, ``triton/``) which calls ``register`` when imported; it is
imported the first time it is selected, so a machine that never selects Triton never imports it.

Dtype contract of every implementation (``make_autograd_functions``): under autocast the matmuls run in
the autocast dtype; sums over offsets accumulate in float32 and the result is returned in the autocast
dtype, as a dense conv would.
"""
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from models.sparse import settings


@dataclass(frozen=True)
class Implementation:
    """``run(features, kernel, kernel_map, num_out) -> out``; ``prepare(kernel_map)``, if any, derives the
    implementation's tables from a kernel map (cached in ``kernel_map.cache``) before its first use;
    ``check()``, if any, raises an error that says how to install what the implementation needs."""
    name: str
    run: Callable
    prepare: Optional[Callable] = None
    check: Optional[Callable] = None


_TABLE = {}


def register(name, run, prepare=None, check=None):
    """Make ``run`` (``sparse_conv``'s signature) the implementation called ``name``."""
    _TABLE[name] = Implementation(name, run, prepare, check)


def implementation(name=None):
    """The implementation called ``name`` (default: the selected one), its module imported on first use."""
    name = settings.current().conv if name is None else name
    if name not in _TABLE:
        if name not in settings.CONVS:
            known = sorted(set(settings.CONVS) | set(_TABLE))
            raise ValueError(f'unknown sparse_conv implementation {name!r}; have {known}')
        importlib.import_module(f'{__package__}.{name}')  # a shipped implementation registers itself on import
        if name not in _TABLE:
            raise RuntimeError(f'{__package__}.{name} was imported but registered no implementation {name!r}')
    return _TABLE[name]


def require(name=None):
    """The implementation called ``name`` (default: the selected one), after its ``check``: a stage calls this
    when it reads its config, so a missing optional dependency stops the run before any work."""
    impl = implementation(name)
    if impl.check is not None:
        impl.check()
    return impl


def prepare(kernel_map, impl):
    """Let ``impl`` derive its tables from a kernel map it meets for the first time (the Triton path: its
    forward gather plan). The mark on the map makes it once per map, and lets a benchmark time it apart."""
    impl.prepare(kernel_map)
    kernel_map.cache[('prepared', impl.name)] = True


def sparse_conv(features, kernel, kernel_map, num_out):
    """Sparse convolution: features [N_in, C_in], kernel [K, C_in, C_out] (or [C_in, C_out] when
    K == 1), a ``KernelMap`` with K offsets -> output features [num_out, C_out]."""
    kv = 1 if kernel.dim() == 2 else kernel.shape[0]
    if kv != kernel_map.kernel_volume:
        raise ValueError(f'kernel has {kv} offsets but the kernel map has {kernel_map.kernel_volume}')
    if features.shape[1] != kernel.shape[-2]:
        raise ValueError(f'features have {features.shape[1]} channels, kernel expects {kernel.shape[-2]}')
    impl = implementation()
    if impl.prepare is not None and ('prepared', impl.name) not in kernel_map.cache:
        prepare(kernel_map, impl)
    return impl.run(features, kernel, kernel_map, num_out)


# ----------------------------------------------------------------------------- autograd
def _compute_dtype(device_type, dtype):
    if device_type in ('cuda', 'cpu') and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def _as_3d(kernel):
    # A kernel of volume 1 is stored [C_in, C_out] (MinkowskiEngine's layout); treat it as [1, C_in, C_out].
    return kernel.unsqueeze(0) if kernel.dim() == 2 else kernel


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



def make_sparse_conv(name, forward, backward, devices='cpu and cuda tensors'):
    """An implementation's ``run`` (``sparse_conv``'s signature) from its compute pair: the autograd functions of
    ``make_autograd_functions``, the one for the features' device; ``devices`` says where it runs, for the error."""
    functions = make_autograd_functions(name, forward, backward)

    def run(features, kernel, kernel_map, num_out):
        fn = functions.get(features.device.type)
        if fn is None:
            raise NotImplementedError(f'{name} runs on {devices}, found {features.device}')
        return fn.apply(features, kernel, kernel_map, num_out)
    return run
