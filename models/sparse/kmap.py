"""Kernel maps: which input row each kernel offset brings to which output row (docs/sparse_engine.md).

Everything here is a pure function of coordinates; the ``CoordinateManager`` (tensor.py) caches the results.

Hashing: (batch, x, y, z) is packed into one int64 key whose fields are linear, so
``key(c + d) = key(c) + key(d)`` for an offset d. A coordinate set is sorted once. Kernel maps come from
the structure of the two sets where it allows (``build_kernel_map``): the down and up convolutions of a
U-Net need no lookup, small kernels look their neighbours up in a two-level block table in O(1), and the
rest is searched in the sorted keys with ``torch.searchsorted``; all of it in plain tensor operations, on
CPU and GPU alike.
"""
import itertools
from dataclasses import dataclass, field

import torch

# 18 bits per spatial axis (+-131071 voxels = +-2.6 km at 2 cm) and the remaining 9 bits for the batch
# index (up to 511 scenes per batch). Coordinates are shifted by _HALF so every field is non-negative.
_BITS = 18
_RANGE = 1 << _BITS
_HALF = _RANGE >> 1
_MAX_BATCH = (1 << (63 - 3 * _BITS)) - 1
_HEADROOM = 64  # voxels kept free at both ends of every key field, so a key plus a kernel offset stays valid
_MAP_CHUNK_ELEMENTS = 1 << 25  # kernel-map queries per chunk of offsets (bounds the build's temporaries)


# ----------------------------------------------------------------------------- coordinate keys
def encode_coordinates(coordinates):
    """Pack int coordinates [N, 4] = (batch, x, y, z) into int64 keys; error when out of range."""
    c = coordinates.to(torch.int64)
    if c.numel() > 0:
        lo, hi = c[:, 1:].min(), c[:, 1:].max()
        if lo < -_HALF + _HEADROOM or hi >= _HALF - _HEADROOM:
            raise ValueError(f'sparse coordinates must lie in (-{_HALF - _HEADROOM}, {_HALF - _HEADROOM}); found '
                             f'range [{int(lo)}, {int(hi)}]. Shift or rescale the voxel coordinates.')
        bmin, bmax = c[:, 0].min(), c[:, 0].max()
        if bmin < 0 or bmax > _MAX_BATCH:
            raise ValueError(f'batch indices must lie in [0, {_MAX_BATCH}], found [{int(bmin)}, {int(bmax)}]')
    return _pack(c[:, 0], c[:, 1] + _HALF, c[:, 2] + _HALF, c[:, 3] + _HALF)


def _pack(b, x, y, z):
    return ((b * _RANGE + x) * _RANGE + y) * _RANGE + z


def _offset_keys(offsets):
    # An offset changes only the spatial fields; with non-negative fields the packing is linear.
    return (offsets[:, 0] * _RANGE + offsets[:, 1]) * _RANGE + offsets[:, 2]


class CoordinateSet:
    """One coordinate set: coordinates [N, 4] int32 at tensor ``stride`` (every spatial coordinate a multiple
    of it), its keys sorted once for lookups, and the block index of the fast kernel maps, built on first
    use. A set made by flooring another (``strided_coordinate_set``) remembers it: ``parent`` and, for each
    parent row, the row it was floored onto (``parent_rows``)."""

    def __init__(self, coordinates, check_unique, stride=1, parent=None, parent_rows=None):
        self.coordinates = coordinates
        self.stride = int(stride)
        self.parent, self.parent_rows = parent, parent_rows
        keys = encode_coordinates(coordinates)
        self.sorted_keys, self.order = torch.sort(keys)
        if check_unique:
            self._check_unique()
        self.keys = keys
        self._blocks = None

    def _check_unique(self):
        if self.sorted_keys.numel() < 2:
            return
        dup = self.sorted_keys[1:] == self.sorted_keys[:-1]
        if bool(dup.any()):
            first = int(self.order[1:][dup][0])
            raise ValueError(
                f'SparseTensor input coordinates contain {int(dup.sum())} duplicate rows (first: row '
                f'{first} = {self.coordinates[first].tolist()}); coordinates must be unique per batch item '
                f'(quantise with the voxelizer, which returns unique voxels and an inverse map).')

    def __len__(self):
        return self.keys.numel()

    def lookup(self, query_keys):
        """Row index of every query key in this set, or -1 where absent (any shape)."""
        n = self.sorted_keys.numel()
        if n == 0:
            return torch.full_like(query_keys, -1)
        pos = torch.searchsorted(self.sorted_keys, query_keys).clamp_(max=n - 1)
        found = self.sorted_keys[pos] == query_keys
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))

    def blocks(self):
        """The set's ``BlockIndex`` (built once)."""
        if self._blocks is None:
            self._blocks = BlockIndex(self)
        return self._blocks


def strided_coordinate_set(parent, tensor_stride):
    """The coordinate set at ``tensor_stride``: the coordinates of set ``parent`` floored to multiples of it,
    one row per (batch, x, y, z), in (batch, x, y, z) order."""
    s = int(tensor_stride)
    coordinates = parent.coordinates
    spatial = torch.div(coordinates[:, 1:], s, rounding_mode='floor') * s
    down = torch.cat([coordinates[:, :1], spatial], dim=1)
    # unique rows in (batch, x, y, z) order, as torch.unique(dim=0) gives them, but found by sorting
    # the packed int64 keys (unique(dim=0) compares rows one by one on CPU)
    keys, order = torch.sort(encode_coordinates(down))
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    parent_rows = torch.empty_like(order)
    parent_rows[order] = torch.cumsum(first, 0) - 1
    return CoordinateSet(down[order[first]].to(torch.int32), check_unique=False, stride=s, parent=parent,
                         parent_rows=parent_rows)


# ----------------------------------------------------------------------------- block index
_BLOCK = 4           # block side, in voxels of the set's own stride (BlockIndex divides by shifts: a power of 2)
_BLOCK_REACH = 3     # the largest kernel reach (in those voxels) the block lookup serves: < _BLOCK
_DENSE_BLOCK_GRID = 1 << 24  # block-grid cells (8 bytes each) up to which neighbour blocks are found in a dense grid


class BlockIndex:
    """A two-level table of one coordinate set: which row sits at each voxel, in O(1) per query.

    The set's voxels (coordinates divided by its stride) are grouped into blocks of 4x4x4. ``cells``
    [(B + 1) * 64] holds the row of every voxel of each occupied block (-1 where empty; the last block is an
    empty one); ``neighbours`` [B * 27] where each block's 26 neighbour blocks and itself start in ``cells``
    (the empty block where absent); every row knows its block and its place in it (``local``, 0..63). A
    query "the row at my voxel + d" for |d| <= 3 per axis is then: which neighbour block and which cell of it
    d leads to, from each of the 64 places (two tables of 64 entries), and two gathers. Memory: 256 bytes per
    occupied block, at most that per row for scattered points, a few bytes per row for surfaces.
    """

    def __init__(self, coordinate_set):
        c = coordinate_set.coordinates.to(torch.int64)
        device, n, stride = c.device, c.shape[0], coordinate_set.stride
        u = c[:, 1:] if stride == 1 else torch.div(c[:, 1:], stride, rounding_mode='floor')  # exact: multiples
        block_xyz = u >> 2  # floor division by _BLOCK = 4, negative coordinates included
        local = u & 3
        block_keys = _pack(c[:, 0], block_xyz[:, 0] + _HALF, block_xyz[:, 1] + _HALF, block_xyz[:, 2] + _HALF)
        self.block_keys, block = torch.unique(block_keys, sorted=True, return_inverse=True)
        nb = self.block_keys.numel()
        cell = block * _BLOCK ** 3 + local[:, 0] + _BLOCK * local[:, 1] + _BLOCK * _BLOCK * local[:, 2]
        self.cells = torch.full(((nb + 1) * _BLOCK ** 3,), -1, dtype=torch.int32, device=device)
        self.cells.index_copy_(0, cell, torch.arange(n, dtype=torch.int32, device=device))
        self.block27 = block * 27
        self.local = local[:, 0] + _BLOCK * local[:, 1] + _BLOCK * _BLOCK * local[:, 2]
        # where each block's 27 neighbour blocks (itself included, x fastest) start in ``cells``; the empty
        # block (index nb) where there is none
        steps = torch.tensor([-1, 0, 1], dtype=torch.int64, device=device)
        e = torch.stack(torch.meshgrid(steps, steps, steps, indexing='ij'), -1).reshape(-1, 3).flip(1)
        pos = _neighbour_blocks(self.block_keys, e)
        self.neighbours = (torch.where(pos >= 0, pos, torch.full_like(pos, nb)) * _BLOCK ** 3).t().reshape(-1)

    def rows_at(self, which, cell):
        """Row of the voxel at (row's voxel + d) for every row of the set, -1 where there is none, for an offset
        d given by its ``place_tables`` row (``which``, ``cell``: [64] each, on the set's device)."""
        nb = self.neighbours.index_select(0, self.block27 + which.index_select(0, self.local))
        return self.cells.index_select(0, nb + cell.index_select(0, self.local))


def place_tables(steps):
    """For offsets ``steps`` [K, 3] (voxels, each in [-3, 3]) and each of a block's 64 places: which of the 27
    neighbour blocks the offset leads to, and which cell of it: (which [K, 64], cell [K, 64]) int64."""
    side = torch.arange(_BLOCK, device=steps.device)
    places = torch.stack(torch.meshgrid(side, side, side, indexing='ij'), -1).reshape(-1, 3).flip(1)  # x fastest
    target = places[None, :, :] + steps[:, None, :]
    shift, inner = target >> 2, target & 3  # floor division by _BLOCK = 4 and its remainder
    which = (shift[..., 0] + 1) + 3 * (shift[..., 1] + 1) + 9 * (shift[..., 2] + 1)
    cell = inner[..., 0] + _BLOCK * inner[..., 1] + _BLOCK * _BLOCK * inner[..., 2]
    return which, cell


def _neighbour_blocks(block_keys, steps):
    """[len(steps), B]: the index in the sorted ``block_keys`` of each block moved by each step, -1 where absent.
    Looked up in a dense grid over the blocks' bounding box (8 bytes per 4x4x4 block of it) when that is small,
    else searched in the keys."""
    nb = block_keys.numel()
    if nb == 0:
        return torch.zeros((steps.shape[0], 0), dtype=torch.int64, device=block_keys.device)
    fields = _unpack(block_keys)
    lo, hi = fields.min(0).values, fields.max(0).values
    extent = hi - lo + 3  # one free block at both ends of every spatial axis
    extent[0] = hi[0] - lo[0] + 1
    volume = int(extent.prod())
    if volume <= _DENSE_BLOCK_GRID:
        strides = torch.tensor([extent[1] * extent[2] * extent[3], extent[2] * extent[3], extent[3], 1],
                               device=block_keys.device)
        flat = ((fields - lo + torch.tensor([0, 1, 1, 1], device=block_keys.device)) * strides).sum(1)
        grid = torch.full((volume,), -1, dtype=torch.int64, device=block_keys.device)
        grid[flat] = torch.arange(nb, device=block_keys.device)
        return grid[flat[None, :] + (steps * strides[1:]).sum(1)[:, None]]
    query = block_keys[None, :] + _offset_keys(steps)[:, None]
    pos = torch.searchsorted(block_keys, query).clamp_(max=nb - 1)
    return torch.where(block_keys[pos] == query, pos, torch.full_like(pos, -1))


def _unpack(keys):
    """[N, 4] (batch, x, y, z) of packed keys, the spatial fields still shifted by _HALF."""
    z = keys % _RANGE
    y = (keys // _RANGE) % _RANGE
    x = (keys // (_RANGE * _RANGE)) % _RANGE
    return torch.stack([keys // (_RANGE ** 3), x, y, z], 1)


# ----------------------------------------------------------------------------- kernel offsets
@dataclass(frozen=True)
class KernelGenerator:
    """A cubic kernel: its size, stride and dilation, and the order of its offsets.

    Offsets go x fastest, then y, then z (MinkowskiEngine's order, so a kernel tensor [K, C_in, C_out]
    moves between the engines unchanged). Odd kernels are centred on the voxel, ``(i - size//2) * step``;
    even kernels start at it, ``i * step`` (MinkowskiEngine's hyper-cube region); ``step`` is the dilation
    times the tensor stride the kernel is laid out at.
    """
    kernel_size: int
    stride: int = 1
    dilation: int = 1

    def __post_init__(self):
        for name in ('kernel_size', 'stride', 'dilation'):
            value = _cubic(name, getattr(self, name))
            object.__setattr__(self, name, value)  # frozen: normalised once, here

    @property
    def volume(self):
        return self.kernel_size ** 3

    def offsets(self, tensor_stride, device=None):
        """Offsets [K, 3] int64 of the kernel laid out at ``tensor_stride``."""
        ks, step = self.kernel_size, self.dilation * int(tensor_stride)
        first = -(ks // 2) if ks % 2 == 1 else 0
        axis = [(first + i) * step for i in range(ks)]
        # itertools.product varies the LAST element fastest; produce (z, y, x) and flip to get x fastest.
        zyx = torch.tensor(list(itertools.product(axis, axis, axis)), dtype=torch.int64, device=device)
        return zyx.flip(1)


def _cubic(name, value):
    """One int >= 1 from ``value`` or from a list of equal values (only cubic kernels are implemented)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f'only cubic {name} is supported, found {value}')
        value = value[0]
    if int(value) < 1:
        raise ValueError(f'{name} must be >= 1, found {value}')
    return int(value)


def kernel_offsets(kernel_size, dilation, tensor_stride, device=None):
    """Offsets [K, 3] of a cubic kernel in MinkowskiEngine's order (see ``KernelGenerator``)."""
    return KernelGenerator(kernel_size, dilation=dilation).offsets(tensor_stride, device)


# ----------------------------------------------------------------------------- kernel maps
@dataclass
class KernelMap:
    """Input->output pairs of one convolution, grouped by kernel offset (CSR style).

    ``in_idx[offset_ptr[k]:offset_ptr[k+1]]`` (int32) are the input rows that kernel offset k sends to the
    output rows ``out_idx[...]`` of the same slice; ``bounds`` holds ``offset_ptr`` as Python ints (read
    once at build time, so running a convolution never waits on the GPU to learn its loop bounds).
    ``identity_offset`` is the offset whose pairs are exactly (i, i) for every row (the centre of a
    submanifold conv), or -1; the conv function turns it into one dense matmul instead of a gather/scatter.
    ``cache`` holds what a convolution implementation derives from the pairs, once (e.g. neighbour tables).
    """
    in_idx: torch.Tensor
    out_idx: torch.Tensor
    offset_ptr: torch.Tensor
    num_in: int
    num_out: int
    identity_offset: int = -1
    bounds: tuple = ()
    cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.bounds:
            self.bounds = tuple(int(v) for v in self.offset_ptr.tolist())

    @property
    def kernel_volume(self):
        return len(self.bounds) - 1

    def pairs(self, k):
        a, b = self.bounds[k], self.bounds[k + 1]
        return self.in_idx[a:b], self.out_idx[a:b]


def build_kernel_map(src, dst, generator, region_stride, transposed):
    """The ``KernelMap`` from coordinate set ``src`` (input) to ``dst`` (output) for ``generator``'s kernel
    laid out at ``region_stride``: a conv's output q reads input q + d, a transposed conv's output p receives
    input q where p = q + d.

    Three ways, the same pairs (tests/test_kernel_maps.py): a kernel whose size equals its stride, between a
    set and the set floored from it (the U-Net's down and up convolutions), pairs every fine row with the
    coarse row it was floored onto, at the offset of its place in the cell, without any search; a kernel of
    reach <= 3 voxels on one set (a submanifold convolution) is looked up in the set's block index, only
    up to its centre (``_block_pairs``); anything else is searched in ``src``'s sorted keys.
    """
    offsets = generator.offsets(region_stride, device=dst.keys.device)
    reach = int(offsets.abs().max())
    if reach >= _HEADROOM:
        raise ValueError(f'kernel reach {reach} (kernel {generator.kernel_size}, dilation {generator.dilation}, '
                         f'tensor stride {region_stride}) exceeds the {_HEADROOM - 1} voxels the coordinate keys allow')
    pooling = _pooling_pairs(src, dst, generator, transposed)
    if pooling is not None:
        in_idx, out_idx, counts = pooling
    elif src is dst and not transposed and region_stride == src.stride and reach <= _BLOCK_REACH * src.stride:
        in_idx, out_idx, counts = _block_pairs(src, torch.div(offsets, src.stride, rounding_mode='floor'))
    else:
        in_idx, out_idx, counts = _query_offsets(src, dst, _offset_keys(offsets), transposed)
    offset_ptr = torch.zeros(offsets.shape[0] + 1, dtype=torch.int64, device=counts.device)
    offset_ptr[1:] = torch.cumsum(counts, 0)
    identity = _identity_offset(offsets, counts, len(dst)) if src is dst else -1
    return KernelMap(in_idx=in_idx, out_idx=out_idx, offset_ptr=offset_ptr, num_in=len(src), num_out=len(dst),
                     identity_offset=identity)


def _pooling_pairs(src, dst, generator, transposed):
    """Pairs of a kernel of size t = stride t (dilation 1) between a set and the set floored from it by t:
    each fine row meets exactly one coarse row, at the offset ``ix + t*iy + t^2*iz`` of its place in the
    coarse cell; None when the kernel or the sets are not of that kind."""
    fine, coarse = (dst, src) if transposed else (src, dst)
    t = generator.kernel_size
    if coarse.parent is not fine or generator.dilation != 1 or coarse.stride != fine.stride * t:
        return None
    c = fine.coordinates[:, 1:].to(torch.int64)
    place = torch.div(c - torch.div(c, coarse.stride, rounding_mode='floor') * coarse.stride, fine.stride,
                      rounding_mode='floor')
    offset = place[:, 0] + t * place[:, 1] + t * t * place[:, 2]
    offset, fine_rows = torch.sort(offset, stable=True)
    coarse_rows = coarse.parent_rows[fine_rows]
    counts = torch.bincount(offset, minlength=t ** 3)
    fine_rows, coarse_rows = fine_rows.to(torch.int32), coarse_rows.to(torch.int32)
    return (coarse_rows, fine_rows, counts) if transposed else (fine_rows, coarse_rows, counts)


def _block_pairs(coordinate_set, steps):
    """(in_idx, out_idx, counts) of a kernel on one coordinate set, its offsets ``steps`` [K, 3] in voxels of
    the set's stride, from the set's block index. When the kernel is point-symmetric (odd size: offset K-1-k
    is minus offset k), only the offsets up to the centre are looked up: the pairs of -d are those of d with
    input and output swapped."""
    blocks = coordinate_set.blocks()
    rows = torch.arange(len(coordinate_set), device=coordinate_set.keys.device, dtype=torch.int32)
    k = steps.shape[0]
    mirrored = k % 2 == 1 and bool((steps + steps.flip(0) == 0).all())
    which, cell = place_tables(steps)
    parts = [None] * k
    for i in range(k):
        if mirrored and i > k // 2:
            inp, out = parts[k - 1 - i]
            parts[i] = (out, inp)
            continue
        found = blocks.rows_at(which[i], cell[i])
        hit = torch.nonzero(found >= 0).squeeze(1)
        parts[i] = (found.index_select(0, hit), rows.index_select(0, hit))
    in_idx = torch.cat([p[0] for p in parts]).to(torch.int32)
    out_idx = torch.cat([p[1] for p in parts]).to(torch.int32)
    counts = torch.tensor([p[0].numel() for p in parts], dtype=torch.int64, device=in_idx.device)
    return in_idx, out_idx, counts


def _query_offsets(src, dst, off, transposed):
    """(in_idx int32, out_idx int32, pairs per offset) of every offset key in ``off``, grouped by offset."""
    # All offsets are queried at once, in chunks of offsets that bound the [offsets, N_out] temporaries
    # (a 5x5x5 stem on a 4-scene ScanNet batch would otherwise hold several 0.75 GB int64 tables).
    step = max(1, _MAP_CHUNK_ELEMENTS // max(len(dst), 1))
    in_parts, out_parts, count_parts = [], [], []
    for k0 in range(0, off.shape[0], step):
        o = off[k0:k0 + step]
        query = dst.keys[None, :] - o[:, None] if transposed else dst.keys[None, :] + o[:, None]
        hit = src.lookup(query)                                   # [k, N_out], -1 where absent
        k_idx, out_idx = torch.nonzero(hit >= 0, as_tuple=True)  # row-major: grouped by offset
        in_parts.append(hit[k_idx, out_idx].to(torch.int32))
        out_parts.append(out_idx.to(torch.int32))
        count_parts.append(torch.bincount(k_idx, minlength=o.shape[0]))
    return torch.cat(in_parts), torch.cat(out_parts), torch.cat(count_parts)


def _identity_offset(offsets, counts, num_rows):
    """On one coordinate set in and out, the zero offset (the centre of an odd kernel, the first offset of an
    even one) maps every row to itself; -1 if the kernel has no zero offset."""
    zero = (offsets == 0).all(1).nonzero()
    if zero.numel() and int(counts[int(zero[0])]) == num_rows:
        return int(zero[0])
    return -1
