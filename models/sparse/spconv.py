"""spconv's gather-GEMM-scatter as a ``sparse_conv`` implementation (``sparse_conv: spconv``), registered on import.

The layers, their parameters (MinkowskiEngine's [K, C_in, C_out] layout, so checkpoints are unchanged) and
the kernel maps stay the engine's own; only the arithmetic runs in spconv 2.x (``spconv.pytorch.ops``,
its "native" algorithm: per kernel offset, gather the input rows, multiply, scatter-add into the output).

What is converted, once per kernel map or per call:

* the rulebook: spconv reads the pairs of offset k from ``pairs[0, k, :n_k]`` (input rows) and
  ``pairs[1, k, :n_k]`` (output rows), int32, with ``counts[k] = n_k``. ``prepare`` writes the engine's
  CSR pairs into that table, in the engine's offset order, and caches it in ``kernel_map.cache``; a
  transposed convolution needs no inverse flag, since the engine's map already says which input row sends
  to which output row.
* the weight: spconv keeps a kernel as [C_out, K, C_in] (its KRSC layout with the K spatial positions
  flattened), so the engine's [K, C_in, C_out] is handed over as a permuted copy (a few hundred kB per
  layer) and the weight gradient is permuted back. The offsets keep the engine's order on both sides, so
  nothing is reordered spatially.
* submanifold convolutions: spconv's ``subm`` mode multiplies the centre offset densely and expects the
  pair counts of offsets k and K-1-k to be equal; the engine's map of an odd kernel on one coordinate set
  satisfies both (its identity offset is the centre), and every other map runs with ``subm`` off.

spconv is an optional dependency: selecting it without spconv installed is an error naming the wheel to
install (installation.md). Its CPU build (``pip install spconv``) runs the same code path as its CUDA wheels,
which is what the tests compare against the reference; spconv 2.3's CPU backward asks for the current CUDA
stream before it takes its CPU branch, so on a machine without a CUDA driver the stream is reported as 0.
Precision: spconv accumulates in the compute dtype (fp16 under fp16 autocast) where the reference
accumulates in float32, and it has no bf16 path (a bf16 autocast is refused with that reason).
"""
import contextlib
import functools

import torch

from models.sparse.dispatch import make_sparse_conv, register

INSTALL_HINT = ("install the spconv wheel that matches your PyTorch's CUDA: pip install spconv-cu126 (CUDA 12.6; "
                "likewise spconv-cu124, spconv-cu121, spconv-cu120, spconv-cu118), or pip install spconv for the "
                "CPU build. spconv has no wheels for CUDA >= 12.8 (Blackwell GPUs): use sparse_conv reference or "
                "triton there (installation.md)")
_CACHE_KEY = 'spconv_rulebook'


@functools.lru_cache(maxsize=None)
def _spconv():
    """spconv's ops module and its algorithm enum, imported on first use; a clear error without spconv."""
    try:
        from spconv.core import ConvAlgo
        from spconv.pytorch import ops
    except ImportError as err:
        raise ImportError(f'sparse_conv spconv needs the spconv package, which does not import here ({err}); '
                          f'{INSTALL_HINT}') from err
    _report_no_stream_without_cuda(ops)
    return ops, ConvAlgo.Native


def _report_no_stream_without_cuda(ops):
    # spconv 2.3's CPU backward calls get_current_stream() (torch.cuda.current_stream()) before branching on
    # the device; without a CUDA driver that raises although the stream is never used. CPU work has stream 0.
    original = ops.get_current_stream
    if getattr(original, 'engine_shim', False):
        return

    def current_stream():
        return original() if torch.cuda.is_available() else 0

    current_stream.engine_shim = True
    ops.get_current_stream = current_stream


@contextlib.contextmanager
def _cpu_threads_for(tensor):
    """spconv 2.3's CPU scatter-add gives wrong rows when its OpenMP loop runs on more than one thread (its
    parallel loops take as many threads as PyTorch is set to; tests/test_spconv.py shows it): on CPU tensors
    its ops run on one thread, and the count is restored after."""
    threads = torch.get_num_threads()
    if tensor.is_cuda or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def is_available():
    """True when spconv imports (the tests skip the spconv comparisons otherwise)."""
    try:
        _spconv()
    except ImportError:
        return False
    return True


class Rulebook:
    """One kernel map in spconv's native format: ``pairs`` int32 [2, K, max_k n_k] (-1 beyond n_k), ``counts``
    int32 [K] on the map's device, and whether spconv's submanifold mode applies."""

    def __init__(self, kernel_map):
        k = kernel_map.kernel_volume
        bounds = torch.tensor(kernel_map.bounds, dtype=torch.int64)
        counts = bounds[1:] - bounds[:-1]
        width = max(int(counts.max()) if k else 0, 1)
        device = kernel_map.in_idx.device
        offset = torch.repeat_interleave(torch.arange(k), counts).to(device)
        slot = torch.arange(int(bounds[-1]), device=device) - bounds[:-1].to(device)[offset]
        pairs = torch.full((2, k, width), -1, dtype=torch.int32, device=device)
        pairs[0, offset, slot] = kernel_map.in_idx
        pairs[1, offset, slot] = kernel_map.out_idx
        self.pairs = pairs
        self.counts = counts.to(device=device, dtype=torch.int32)
        # spconv's subm mode: the centre offset K // 2 is the identity, and counts are mirror-symmetric
        self.subm = kernel_map.identity_offset == k // 2 and k % 2 == 1


def prepare(kernel_map):
    """Build and cache the spconv rulebook of a kernel map (once per map, before its first convolution)."""
    _spconv()
    kernel_map.cache[_CACHE_KEY] = Rulebook(kernel_map)


def _rulebook(kernel_map):
    book = kernel_map.cache.get(_CACHE_KEY)
    if book is None:
        prepare(kernel_map)
        book = kernel_map.cache[_CACHE_KEY]
    return book


def _check_dtype(dtype):
    if dtype == torch.bfloat16:
        raise TypeError('sparse_conv spconv has no bfloat16 path (spconv 2.x computes in float16, float32 or '
                        'float64); use fp16 mixed precision with it, or sparse_conv reference / triton for bf16')


def _forward(features, kernel3, kernel_map, num_out):
    _check_dtype(features.dtype)
    ops, native = _spconv()
    book = _rulebook(kernel_map)
    filters = kernel3.permute(2, 0, 1).contiguous()  # [K, C_in, C_out] -> spconv's [C_out, K, C_in]
    if kernel_map.num_in == 0 or num_out == 0:
        return features.new_zeros((num_out, kernel3.shape[2]))
    with _cpu_threads_for(features):
        return ops.indice_conv(features, filters, book.pairs, book.counts, num_out, False, book.subm, algo=native)


def _backward(grad_out, features, kernel3, kernel_map, need_features, need_kernel):
    ops, native = _spconv()
    book = _rulebook(kernel_map)
    if kernel_map.num_in == 0 or grad_out.shape[0] == 0:
        return torch.zeros_like(features), torch.zeros_like(kernel3)
    filters = kernel3.permute(2, 0, 1).contiguous()
    with _cpu_threads_for(features):
        grad_f, grad_filters = ops.indice_conv_backward(features, filters, grad_out, book.pairs, book.counts, False,
                                                        book.subm, algo=native)
    grad_k = grad_filters.reshape(filters.shape).permute(1, 2, 0)  # back to [K, C_in, C_out]
    return (grad_f if need_features else None), (grad_k if need_kernel else None)


# ``sparse_conv`` through spconv (no shape checks: ``dispatch.sparse_conv`` makes them)
spconv_sparse_conv = make_sparse_conv('SpconvSparseConvFunction', _forward, _backward)


register('spconv', spconv_sparse_conv, prepare, check=_spconv)
