"""Sparse tensors and their coordinate manager (MinkowskiEngine semantics, pure PyTorch; docs/sparse_engine.md).

A ``SparseTensor`` is a feature matrix ``F`` [N, C] on integer coordinates ``C`` [N, 4] =
(batch, x, y, z) at a tensor stride s (coordinates are multiples of s). Every tensor derived from
an input (by convolution, normalisation, concatenation) shares the input's ``CoordinateManager``,
which caches

* one coordinate set per tensor stride (the stride-1 set is the voxelizer's output, in its order, so
  that a network's stride-1 output rows line up with the loader's ``inverse_map``);
* every kernel map built so far, keyed by (input stride, output stride, kernel size, dilation,
  transposed), so the 8 convolutions of a MinkUNet stage at one stride build their map once.

It builds nothing itself: coordinate sets and kernel maps come from ``kmap``.
"""
from dataclasses import dataclass

import torch

from models.sparse import kmap


@dataclass(frozen=True)
class CoordinateMapKey:
    """Names one coordinate set of a manager (as ME's key): here just its tensor stride."""
    tensor_stride: int


class CoordinateManager:
    """Coordinate sets per tensor stride and the kernel-map cache, shared by derived tensors."""

    def __init__(self, coordinates):
        self._sets = {1: kmap.CoordinateSet(coordinates, check_unique=True)}
        self._kernel_maps = {}

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
        """Coordinates at ``in_stride * stride``: the input floored to multiples of it (per batch); returns
        that tensor stride."""
        out_stride = int(in_stride) * int(stride)
        if out_stride not in self._sets:
            self._sets[out_stride] = kmap.strided_coordinate_set(self._coordinate_set(in_stride), out_stride)
        return out_stride

    def kernel_map(self, in_stride, out_stride, kernel_size, dilation, transposed):
        """Cached kernel map (see ``kmap.KernelMap``); built on first request."""
        key = (int(in_stride), int(out_stride), int(kernel_size), int(dilation), bool(transposed))
        if key not in self._kernel_maps:
            self._kernel_maps[key] = self._build_kernel_map(*key)
        return self._kernel_maps[key]

    def _build_kernel_map(self, in_stride, out_stride, kernel_size, dilation, transposed):
        # The kernel region lives at the finer of the two strides: the input of a (strided) conv, the
        # output of a transposed conv (which inverts the strided conv that made its input).
        region_stride = out_stride if transposed else in_stride
        return kmap.build_kernel_map(self._coordinate_set(in_stride), self._coordinate_set(out_stride),
                                     kmap.KernelGenerator(kernel_size, dilation=dilation), region_stride, transposed)


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
