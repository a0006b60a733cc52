"""What the Triton kernels are launched with, in plain PyTorch (imports without Triton).

* Gather plans: neighbour tables [K, N] (``neighbour_table``) with their columns in tile order
  (``mask_order``), built once per kernel map and cached on it (``gather_plan``, ``prepare``).
* Launch configurations: the fixed rule per layer shape (``gemm_config``, ``weight_grad_config``), the
  autotuner's candidates and their pruning (``fitting_configs``), the weight gradient's slices.
* ``tile_occupancy``: how much of the implicit GEMM's work is useful under a row order.

bench/tile_occupancy.py and bench/triton_kernels.py report on these; their numbers are in bench/README.md.
"""
import torch

from models.sparse import settings


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


def mask_order(nb):
    """Rows [N] int64 sorted by their neighbour mask (bit k set where nb[k, row] >= 0), ties in memory order.

    A tile of the implicit GEMM runs every offset that any of its rows has; rows with equal masks side by side
    let tiles skip the offsets none of them has (``tile_occupancy`` measures it).
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
    out = conv(x), or for dx = conv^T(dout) if ``transposed``; built on first use and cached on the map, per
    row order (``settings.current().row_order``)."""
    row_order = settings.current().row_order
    key = ('gather_plan', transposed, row_order)
    plan = kernel_map.cache.get(key)
    if plan is None:
        nb = neighbour_table(kernel_map, transposed)
        if row_order == 'mask' and nb.shape[0] > 1:
            order = mask_order(nb)
            plan = (nb.index_select(1, order), order.to(torch.int32))
        else:
            plan = (nb, torch.arange(nb.shape[1], dtype=torch.int32, device=nb.device))
        kernel_map.cache[key] = plan
    return plan


def is_dense(kernel_map):
    """A 1x1x1 conv on one coordinate set is a dense matmul: cuBLAS does it better than a gather."""
    return kernel_map.kernel_volume == 1 and kernel_map.identity_offset == 0


def prepare(kernel_map):
    """The forward gather plan of a kernel map the Triton path meets for the first time. The feature-gradient
    plan waits for a backward pass that needs it: the stem's input has no gradient."""
    if not is_dense(kernel_map):
        gather_plan(kernel_map)


# ----------------------------------------------------------------------------- launch configurations
# Tile shapes and launch parameters: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for the implicit GEMM,
# (BLOCK_P, BLOCK_I, BLOCK_O, num_warps, num_stages) for the weight gradient. By default a fixed rule picks
# one per layer shape (``gemm_config`` / ``weight_grad_config``), so a run is bitwise reproducible; with
# ``sparse_conv_autotune: True`` Triton's autotuner times the candidates below on the GPU, once per layer
# shape and dtype, and keeps the fastest (``kernels.tuned_configs()`` lists its choices, e.g. to update the
# rule). bench/triton_kernels.py compiles every candidate for sm_80 / sm_90 without a GPU and reports
# registers, shared memory and spills.
GEMM_CANDIDATES = (  # chosen among shapes that compile without heavy spills (bench/README.md)
    (64, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 64, 32, 8, 3), (128, 128, 32, 8, 3),
    (32, 64, 32, 4, 4), (64, 32, 32, 4, 4), (32, 32, 32, 4, 4), (64, 32, 16, 4, 3),
)
WEIGHT_GRAD_CANDIDATES = (
    (32, 32, 32, 4, 3), (32, 64, 64, 4, 3), (64, 64, 64, 4, 3), (64, 32, 32, 4, 3), (128, 64, 64, 8, 3),
    (64, 128, 128, 8, 3),
)


def _next_power_of_2(n):
    return 1 << max(int(n) - 1, 0).bit_length()


def block(n, lo=16, hi=64):
    """A power-of-two tile size for a dimension of size n (tl.dot needs >= 16)."""
    return max(lo, min(hi, _next_power_of_2(n)))


def gemm_config(c_in, c_out):
    """The implicit GEMM's (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for a layer shape: tiles of at
    most 64 x 64 outputs, 32 input channels per step (registers and spills per shape: bench/README.md)."""
    return 64, block(c_out, hi=64), block(c_in, hi=32), 4, 3


def weight_grad_config(c_in, c_out):
    """The weight-gradient kernel's (BLOCK_P, BLOCK_I, BLOCK_O, num_warps, num_stages) for a layer shape."""
    return 32, block(c_in), block(c_out), 4, 3


def fitting_configs(configs, named_args, tile_dims):
    """Drop autotuner configs whose tiles are wider than the (power-of-two) channel counts; keep at least one.
    ``tile_dims``: {block name: the argument whose size bounds it}."""
    need = [block(named_args[name], hi=1 << 30) for name in tile_dims.values()]
    kept = [c for c in configs if all(c.kwargs[b] <= n for b, n in zip(tile_dims, need))]
    return kept or [min(configs, key=lambda c: [c.kwargs[b] for b in tile_dims])]


def weight_grad_slices(max_pairs, kernel_volume, c_in, c_out, budget_bytes=1 << 26):
    """How many slices the pairs of each offset are split into: enough programs to fill a GPU on large maps
    (one slice per ~4k pairs, at most 32), within a float32 partial-sum buffer of ``budget_bytes``."""
    by_work = min(32, max(1, max_pairs // 4096))
    by_memory = max(1, budget_bytes // (kernel_volume * c_in * c_out * 4))
    return int(min(by_work, by_memory))
