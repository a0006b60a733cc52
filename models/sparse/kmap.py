"""Kernel maps: which input row each kernel offset brings to which output row (docs/sparse_engine.md).

Everything here is a pure function of coordinates; the ``CoordinateManager`` (tensor.py) caches the results.

Hashing: (batch, x, y, z) is packed into one int64 key whose fields are linear, so
``key(c + d) = key(c) + key(d)`` for an offset d. A coordinate set is sorted once; all K offsets are
then queried with ``torch.searchsorted`` at once (in chunks of offsets only when K x N is large), on
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
    """One coordinate set: coordinates [N, 4] int32, and its keys sorted once for lookups."""

    def __init__(self, coordinates, check_unique):
        self.coordinates = coordinates
        keys = encode_coordinates(coordinates)
        self.sorted_keys, self.order = torch.sort(keys)
        if check_unique:
            self._check_unique()
        self.keys = keys

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


def strided_coordinate_set(coordinates, tensor_stride):
    """The coordinate set at ``tensor_stride``: ``coordinates`` floored to multiples of it, one row per
    (batch, x, y, z), in (batch, x, y, z) order."""
    s = int(tensor_stride)
    spatial = torch.div(coordinates[:, 1:], s, rounding_mode='floor') * s
    down = torch.cat([coordinates[:, :1], spatial], dim=1)
    # unique rows in (batch, x, y, z) order, as torch.unique(dim=0) gives them, but found by sorting
    # the packed int64 keys (unique(dim=0) compares rows one by one on CPU)
    keys, order = torch.sort(encode_coordinates(down))
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    return CoordinateSet(down[order[first]].to(torch.int32), check_unique=False)


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
    input q where p = q + d."""
    offsets = generator.offsets(region_stride, device=dst.keys.device)
    reach = int(offsets.abs().max())
    if reach >= _HEADROOM:
        raise ValueError(f'kernel reach {reach} (kernel {generator.kernel_size}, dilation {generator.dilation}, '
                         f'tensor stride {region_stride}) exceeds the {_HEADROOM - 1} voxels the coordinate keys allow')
    in_idx, out_idx, counts = _query_offsets(src, dst, _offset_keys(offsets), transposed)
    offset_ptr = torch.zeros(offsets.shape[0] + 1, dtype=torch.int64, device=counts.device)
    offset_ptr[1:] = torch.cumsum(counts, 0)
    identity = _identity_offset(offsets, counts, len(dst)) if src is dst else -1
    return KernelMap(in_idx=in_idx, out_idx=out_idx, offset_ptr=offset_ptr, num_in=len(src), num_out=len(dst),
                     identity_offset=identity)


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
