"""Sparse tensors, coordinate managers and kernel maps (MinkowskiEngine semantics, pure PyTorch).

A ``SparseTensor`` is a feature matrix ``F`` [N, C] on integer coordinates ``C`` [N, 4] =
(batch, x, y, z) at a tensor stride s (coordinates are multiples of s). Every tensor derived from
an input (by convolution, normalisation, concatenation) shares the input's ``CoordinateManager``,
which owns

* one coordinate set per tensor stride (the stride-1 set is the voxelizer's output, in its order, so
  that a network's stride-1 output rows line up with the loader's ``inverse_map``);
* every kernel map built so far, keyed by (input stride, output stride, kernel size, dilation,
  transposed), so the 8 convolutions of a MinkUNet stage at one stride build their map once.

Hashing: (batch, x, y, z) is packed into one int64 key whose fields are linear, so
``key(c + d) = key(c) + key(d)`` for an offset d. A coordinate set is sorted once; all K offsets are
then queried with ``torch.searchsorted`` for all K offsets at once (in chunks of offsets only when
K x N is large), on CPU and GPU alike.
"""
import itertools
import time
from dataclasses import dataclass, field

import torch

from models.sparse import functional

# 18 bits per spatial axis (+-131071 voxels = +-2.6 km at 2 cm) and the remaining 9 bits for the batch
# index (up to 511 scenes per batch). Coordinates are shifted by _HALF so every field is non-negative.
_BITS = 18
_RANGE = 1 << _BITS
_HALF = _RANGE >> 1
_MAX_BATCH = (1 << (63 - 3 * _BITS)) - 1
_MAP_CHUNK_ELEMENTS = 1 << 25  # kernel-map queries per chunk of offsets (bounds the build's temporaries)


@dataclass(frozen=True)
class CoordinateMapKey:
    """Names one coordinate set of a manager (as ME's key): here just its tensor stride."""
    tensor_stride: int


@dataclass
class KernelMap:
    """Input->output pairs of one convolution, grouped by kernel offset (CSR style).

    ``in_idx[offset_ptr[k]:offset_ptr[k+1]]`` (int32) are the input rows that kernel offset k sends to the
    output rows ``out_idx[...]`` of the same slice; ``bounds`` holds ``offset_ptr`` as Python ints (read
    once at build time, so running a convolution never waits on the GPU to learn its loop bounds).
    ``identity_offset`` is the offset whose pairs are exactly (i, i) for every row (the centre of a
    submanifold conv), or -1; the conv function turns it into one dense matmul instead of a gather/scatter.
    ``cache`` holds tables an implementation derives from the pairs once (e.g. neighbour tables).
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


def kernel_offsets(kernel_size, dilation, tensor_stride, device=None):
    """Offsets [K, 3] of a cubic kernel in MinkowskiEngine's order (x varies fastest).

    Odd kernels are centred, ``(i - ks//2) * dilation * s``; even kernels start at the voxel itself,
    ``i * dilation * s`` (MinkowskiEngine's kernel region, ``region_type=HYPER_CUBE``).
    """
    ks = int(kernel_size)
    if ks < 1:
        raise ValueError(f'kernel_size must be >= 1, found {kernel_size}')
    step = int(dilation) * int(tensor_stride)
    first = -(ks // 2) if ks % 2 == 1 else 0
    axis = [(first + i) * step for i in range(ks)]
    # itertools.product varies the LAST element fastest; produce (z, y, x) and flip to get x fastest.
    zyx = torch.tensor(list(itertools.product(axis, axis, axis)), dtype=torch.int64, device=device)
    return zyx.flip(1)


def encode_coordinates(coordinates):
    """Pack int coordinates [N, 4] = (batch, x, y, z) into int64 keys; error when out of range."""
    c = coordinates.to(torch.int64)
    if c.numel() > 0:
        lo, hi = c[:, 1:].min(), c[:, 1:].max()
        if lo < -_HALF + 64 or hi >= _HALF - 64:  # 64: head room for kernel offsets
            raise ValueError(f'sparse coordinates must lie in (-{_HALF - 64}, {_HALF - 64}); found range '
                             f'[{int(lo)}, {int(hi)}]. Shift or rescale the voxel coordinates.')
        bmin, bmax = c[:, 0].min(), c[:, 0].max()
        if bmin < 0 or bmax > _MAX_BATCH:
            raise ValueError(f'batch indices must lie in [0, {_MAX_BATCH}], found [{int(bmin)}, {int(bmax)}]')
    return _pack(c[:, 0], c[:, 1] + _HALF, c[:, 2] + _HALF, c[:, 3] + _HALF)


def _pack(b, x, y, z):
    return ((b * _RANGE + x) * _RANGE + y) * _RANGE + z


def _offset_keys(offsets):
    # An offset changes only the spatial fields; with non-negative fields the packing is linear.
    return (offsets[:, 0] * _RANGE + offsets[:, 1]) * _RANGE + offsets[:, 2]


class _CoordinateSet:
    """One coordinate set: coordinates [N, 4] int32, and its keys sorted once for lookups."""

    def __init__(self, coordinates, check_unique, what='input'):
        self.coordinates = coordinates
        keys = encode_coordinates(coordinates)
        self.sorted_keys, self.order = torch.sort(keys)
        if check_unique and self.sorted_keys.numel() > 1:
            dup = self.sorted_keys[1:] == self.sorted_keys[:-1]
            if bool(dup.any()):
                first = int(self.order[1:][dup][0])
                raise ValueError(
                    f'SparseTensor {what} coordinates contain {int(dup.sum())} duplicate rows (first: row '
                    f'{first} = {coordinates[first].tolist()}); coordinates must be unique per batch item '
                    f'(quantise with the voxelizer, which returns unique voxels and an inverse map).')
        self.keys = keys

    def lookup(self, query_keys):
        """Row index of every query key in this set, or -1 where absent (any shape)."""
        n = self.sorted_keys.numel()
        if n == 0:
            return torch.full_like(query_keys, -1)
        pos = torch.searchsorted(self.sorted_keys, query_keys).clamp_(max=n - 1)
        found = self.sorted_keys[pos] == query_keys
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))


class CoordinateManager:
    """Coordinate sets per tensor stride and the kernel-map cache, shared by derived tensors."""

    def __init__(self, coordinates):
        self._sets = {1: _CoordinateSet(coordinates, check_unique=True)}
        self._kernel_maps = {}
        self.kernel_map_builds = 0  # counts cache misses (the bench reports the time they take)
        self.kernel_map_seconds = 0.0  # time spent building strided coordinates, kernel maps and their tables

    @property
    def device(self):
        return self._sets[1].coordinates.device

    def has_stride(self, tensor_stride):
        return int(tensor_stride) in self._sets

    def coordinates(self, tensor_stride):
        return self._coordinate_set(tensor_stride).coordinates

    def _coordinate_set(self, tensor_stride):
        s = int(tensor_stride)
        if s not in self._sets:
            raise KeyError(f'no coordinates at tensor stride {s} on this coordinate manager (have '
                           f'{sorted(self._sets)}); a transposed convolution can only return to a stride '
                           f'seen on the way down.')
        return self._sets[s]

    def strided_coordinates(self, in_stride, stride):
        """Coordinates at ``in_stride * stride``: the input floored to multiples of it (per batch)."""
        out_stride = int(in_stride) * int(stride)
        if out_stride not in self._sets:
            t0 = time.perf_counter()
            c = self.coordinates(in_stride)
            spatial = torch.div(c[:, 1:], out_stride, rounding_mode='floor') * out_stride
            down = torch.cat([c[:, :1], spatial], dim=1)
            # unique rows in (batch, x, y, z) order, as torch.unique(dim=0) gives them, but found by sorting
            # the packed int64 keys (unique(dim=0) compares rows one by one on CPU)
            keys, order = torch.sort(encode_coordinates(down))
            first = torch.ones_like(keys, dtype=torch.bool)
            first[1:] = keys[1:] != keys[:-1]
            down = down[order[first]].to(torch.int32)
            self._sets[out_stride] = _CoordinateSet(down, check_unique=False)
            self.kernel_map_seconds += time.perf_counter() - t0  # coordinate building counts as map time
        return out_stride

    def kernel_map(self, in_stride, out_stride, kernel_size, dilation, transposed):
        """Cached kernel map (see ``KernelMap``); built on first request."""
        key = (int(in_stride), int(out_stride), int(kernel_size), int(dilation), bool(transposed))
        km = self._kernel_maps.get(key)
        if km is None:
            t0 = time.perf_counter()
            km = self._build_kernel_map(*key)
            functional.prepare_kernel_map(km)  # the selected conv implementation's derived tables
            if km.in_idx.is_cuda:
                torch.cuda.synchronize(km.in_idx.device)
            self.kernel_map_seconds += time.perf_counter() - t0
            self.kernel_map_builds += 1
            self._kernel_maps[key] = km
        return km

    def _build_kernel_map(self, in_stride, out_stride, ks, dilation, transposed):
        src = self._coordinate_set(in_stride)
        dst = self._coordinate_set(out_stride)
        # The kernel region lives at the finer of the two strides: the input of a (strided) conv, the
        # output of a transposed conv (which inverts the strided conv that made its input).
        region_stride = out_stride if transposed else in_stride
        offsets = kernel_offsets(ks, dilation, region_stride, device=dst.keys.device)
        if int(offsets.abs().max()) >= 64:  # the head room encode_coordinates keeps in every key field
            raise ValueError(f'kernel reach {int(offsets.abs().max())} (kernel {ks}, dilation {dilation}, tensor '
                             f'stride {region_stride}) exceeds the 63 voxels the coordinate keys allow')
        off = _offset_keys(offsets)
        num_out = dst.keys.numel()
        # All offsets are queried at once, in chunks of offsets that bound the [offsets, N_out] temporaries
        # (a 5x5x5 stem on a 4-scene ScanNet batch would otherwise hold several 0.75 GB int64 tables).
        step = max(1, _MAP_CHUNK_ELEMENTS // max(num_out, 1))
        in_parts, out_parts, count_parts = [], [], []
        for k0 in range(0, off.shape[0], step):
            o = off[k0:k0 + step]
            # conv: output q reads input q + d;  transposed: output p receives input q with p = q + d.
            query = dst.keys[None, :] - o[:, None] if transposed else dst.keys[None, :] + o[:, None]
            hit = src.lookup(query)                                   # [k, N_out], -1 where absent
            k_idx, out_idx = torch.nonzero(hit >= 0, as_tuple=True)  # row-major: grouped by offset
            in_parts.append(hit[k_idx, out_idx].to(torch.int32))
            out_parts.append(out_idx.to(torch.int32))
            count_parts.append(torch.bincount(k_idx, minlength=o.shape[0]))
        in_idx, out_idx, counts = torch.cat(in_parts), torch.cat(out_parts), torch.cat(count_parts)
        offset_ptr = torch.zeros(offsets.shape[0] + 1, dtype=torch.int64, device=counts.device)
        offset_ptr[1:] = torch.cumsum(counts, 0)
        identity = -1
        if in_stride == out_stride:
            # Same coordinate set in and out: the zero offset (the centre of an odd kernel, the first
            # offset of an even one) maps every row to itself.
            zero = (offsets == 0).all(1).nonzero()
            if zero.numel() and int(counts[int(zero[0])]) == num_out:
                identity = int(zero[0])
        return KernelMap(in_idx=in_idx, out_idx=out_idx, offset_ptr=offset_ptr,
                         num_in=src.keys.numel(), num_out=num_out, identity_offset=identity)


class SparseTensor:
    """Features on sparse coordinates, shaped like ``MinkowskiEngine.SparseTensor``.

    ``SparseTensor(features, coordinates)`` starts a new coordinate manager (coordinates int
    [N, 4] = (batch, x, y, z), unique, tensor stride 1). ``SparseTensor(features,
    coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager)`` (or
    ``tensor_stride=`` instead of the key) puts new features on an existing coordinate set.
    """

    def __init__(self, features, coordinates=None, tensor_stride=None, coordinate_map_key=None,
                 coordinate_manager=None, device=None):
        if not torch.is_tensor(features) or features.dim() != 2:
            raise ValueError(f'SparseTensor features must be a 2D tensor [N, C], found '
                             f'{type(features).__name__} {getattr(features, "shape", "")}')
        if device is not None:
            features = features.to(device)
        if coordinate_manager is None:
            if coordinates is None:
                raise ValueError('SparseTensor needs coordinates, or a coordinate_manager with a '
                                 'coordinate_map_key / tensor_stride')
            if not torch.is_tensor(coordinates) or coordinates.dim() != 2 or coordinates.shape[1] != 4:
                raise ValueError(f'SparseTensor coordinates must be an integer tensor [N, 4] = (batch, x, '
                                 f'y, z), found {getattr(coordinates, "shape", type(coordinates))}')
            if coordinates.is_floating_point():
                raise ValueError('SparseTensor coordinates must be integers (quantise points with the '
                                 f'voxelizer first), found dtype {coordinates.dtype}')
            if tensor_stride not in (None, 1, [1, 1, 1], (1, 1, 1)):
                raise ValueError('a new coordinate manager starts at tensor stride 1')
            coordinates = coordinates.to(device=features.device, dtype=torch.int32)
            coordinate_manager = CoordinateManager(coordinates)
            stride = 1
        else:
            if coordinate_map_key is not None:
                stride = coordinate_map_key.tensor_stride
            elif tensor_stride is not None:
                stride = _as_int_stride(tensor_stride)
            else:
                raise ValueError('with coordinate_manager=, pass coordinate_map_key= or tensor_stride=')
            coordinate_manager.coordinates(stride)  # raises if unknown
        n = coordinate_manager.coordinates(stride).shape[0]
        if features.shape[0] != n:
            raise ValueError(f'SparseTensor has {n} coordinates but {features.shape[0]} feature rows')
        self._F = features
        self._stride = int(stride)
        self.coordinate_manager = coordinate_manager

    # --- MinkowskiEngine-style accessors ---
    @property
    def F(self):
        return self._F

    features = F

    @property
    def C(self):
        return self.coordinate_manager.coordinates(self._stride)

    coordinates = C

    @property
    def tensor_stride(self):
        return [self._stride] * 3

    @property
    def coordinate_map_key(self):
        return CoordinateMapKey(self._stride)

    @property
    def shape(self):
        return self._F.shape

    @property
    def device(self):
        return self._F.device

    @property
    def dtype(self):
        return self._F.dtype

    def __len__(self):
        return self._F.shape[0]

    def __repr__(self):
        return (f'SparseTensor(N={self._F.shape[0]}, C={self._F.shape[1]}, tensor_stride={self._stride}, '
                f'dtype={self._F.dtype}, device={self._F.device})')

    def _with_features(self, features):
        return SparseTensor(features, coordinate_map_key=self.coordinate_map_key,
                            coordinate_manager=self.coordinate_manager)

    def _check_same(self, other):
        if not isinstance(other, SparseTensor):
            return other
        if other.coordinate_manager is not self.coordinate_manager or other._stride != self._stride:
            raise ValueError('sparse tensors must share the coordinate manager and tensor stride to be '
                             f'combined (found strides {self._stride} and {other._stride})')
        return other.F

    def __add__(self, other):
        return self._with_features(self._F + self._check_same(other))

    def __iadd__(self, other):
        # In place as in MinkowskiEngine (ResNet blocks do ``out += residual``).
        self._F += self._check_same(other)
        return self

    def __sub__(self, other):
        return self._with_features(self._F - self._check_same(other))

    def __mul__(self, other):
        return self._with_features(self._F * self._check_same(other))


def _as_int_stride(tensor_stride):
    if isinstance(tensor_stride, (list, tuple)):
        if len(set(int(t) for t in tensor_stride)) != 1:
            raise ValueError(f'only isotropic tensor strides are supported, found {tensor_stride}')
        return int(tensor_stride[0])
    return int(tensor_stride)


def features_at_points(tensor, inverse_map):
    """Per-point features from a stride-1 voxel tensor: ``tensor.F[inverse_map]``.

    The voxelizer returns unique voxels plus ``inverse_map`` [num_points] (point -> voxel row); every
    stride-1 output of a MinkUNet keeps the input's row order, so indexing its features with the
    inverse map gives each original point its voxel's prediction (as upstream ``out[inds_reverse]``).
    """
    if tensor.tensor_stride[0] != 1:
        raise ValueError(f'features_at_points needs a stride-1 tensor, found stride {tensor.tensor_stride}')
    inverse_map = torch.as_tensor(inverse_map, device=tensor.F.device).long()
    if inverse_map.numel() and (inverse_map.min() < 0 or inverse_map.max() >= tensor.F.shape[0]):
        raise ValueError(f'inverse_map indexes voxels in [{int(inverse_map.min())}, {int(inverse_map.max())}] '
                         f'but the tensor has {tensor.F.shape[0]} voxels')
    return tensor.F[inverse_map]
