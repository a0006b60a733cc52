"""Layers with MinkowskiEngine's names, arguments and parameter layout (so checkpoints move between them;
docs/sparse_engine.md).

* ``Convolution``: parameter ``kernel`` [K, C_in, C_out] ([C_in, C_out] when K == 1), optional ``bias``
  [1, C_out]; odd kernel + stride 1 keeps the input coordinates (submanifold); stride s > 1 floors the
  coordinates to multiples of s * tensor_stride.
* ``ConvolutionTranspose``: same layout; output goes onto the finer coordinate set already on the
  coordinate manager (the one seen on the way down), as MinkowskiConvolutionTranspose does.
* Default init as MinkowskiConvolutionBase.reset_parameters: U(-1/sqrt(n), 1/sqrt(n)) with
  n = C_in * K (C_out * K for the transposed conv), bias likewise.
* ``BatchNorm`` wraps ``torch.nn.BatchNorm1d`` as attribute ``bn`` (keys ``<name>.bn.weight`` ...).
"""
import math

import torch
import torch.nn as nn

from models.sparse.dispatch import sparse_conv
from models.sparse.kmap import KernelGenerator
from models.sparse.tensor import SparseTensor


def _check_input(module, x):
    if not isinstance(x, SparseTensor):
        raise TypeError(f'{type(module).__name__} expects a models.sparse.SparseTensor, found {type(x).__name__}')


class _ConvolutionBase(nn.Module):
    is_transpose = False

    def __init__(self, in_channels, out_channels, kernel_size=-1, stride=1, dilation=1, bias=False,
                 dimension=3):
        super().__init__()
        if dimension != 3:
            raise ValueError(f'only 3D sparse convolutions are implemented, found dimension={dimension}')
        self.kernel_generator = KernelGenerator(kernel_size, stride, dilation)  # validates the three
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.dimension = dimension
        shape = ((self.in_channels, self.out_channels) if self.kernel_volume == 1 else
                 (self.kernel_volume, self.in_channels, self.out_channels))
        self.kernel = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(1, self.out_channels)) if bias else None
        self.reset_parameters()

    # read from the generator, their one owner (MinkowskiEngine's layers expose them the same way)
    kernel_size = property(lambda self: self.kernel_generator.kernel_size)
    stride = property(lambda self: self.kernel_generator.stride)
    dilation = property(lambda self: self.kernel_generator.dilation)
    kernel_volume = property(lambda self: self.kernel_generator.volume)

    def reset_parameters(self):
        n = (self.out_channels if self.is_transpose else self.in_channels) * self.kernel_volume
        bound = 1.0 / math.sqrt(n)
        with torch.no_grad():
            self.kernel.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def _output_stride(self, manager, in_stride):
        raise NotImplementedError

    def forward(self, x):
        _check_input(self, x)
        manager = x.coordinate_manager
        in_stride = x.tensor_stride[0]
        out_stride = self._output_stride(manager, in_stride)
        km = manager.kernel_map(in_stride, out_stride, self.kernel_size, self.dilation, self.is_transpose)
        out = sparse_conv(x.F, self.kernel, km, km.num_out)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return SparseTensor(out, tensor_stride=out_stride, coordinate_manager=manager)

    def extra_repr(self):
        return (f'in={self.in_channels}, out={self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, dilation={self.dilation}, bias={self.bias is not None}')


class Convolution(_ConvolutionBase):
    """Sparse convolution (``MinkowskiConvolution``)."""

    def _output_stride(self, manager, in_stride):
        if self.stride == 1:
            return in_stride
        return manager.strided_coordinates(in_stride, self.stride)


class ConvolutionTranspose(_ConvolutionBase):
    """Sparse transposed convolution (``MinkowskiConvolutionTranspose``).

    Deliberately NOT a subclass of ``Convolution``: upstream's ResNetBase re-initialises only
    ``isinstance(m, MinkowskiConvolution)`` modules, which in MinkowskiEngine excludes transposed convs.
    """
    is_transpose = True

    def _output_stride(self, manager, in_stride):
        if in_stride % self.stride != 0:
            raise ValueError(f'transposed conv with stride {self.stride} on a tensor of stride {in_stride}')
        out_stride = in_stride // self.stride
        if not manager.has_stride(out_stride):
            raise ValueError(f'transposed conv targets tensor stride {out_stride}, which this coordinate '
                             f'manager has never seen; it can only return to a stride made on the way down')
        return out_stride


class BatchNorm(nn.Module):
    """Batch normalisation of the features (``MinkowskiBatchNorm``); the torch module is ``self.bn``."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=affine,
                                 track_running_stats=track_running_stats)

    def forward(self, x):
        _check_input(self, x)
        return x._with_features(self.bn(x.F))


class ReLU(nn.Module):
    """ReLU on the features (``MinkowskiReLU``); ``inplace=True`` overwrites them as ME does."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        _check_input(self, x)
        return x._with_features(torch.relu_(x.F) if self.inplace else torch.relu(x.F))


def cat(*tensors):
    """Concatenate features of sparse tensors on the same coordinates (``MinkowskiEngine.cat``)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if not tensors:
        raise ValueError('cat needs at least one sparse tensor')
    first = tensors[0]
    for t in tensors:
        _check_input(cat, t)
        first._check_same(t)
    return first._with_features(torch.cat([t.F for t in tensors], dim=1))
