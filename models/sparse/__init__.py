"""A pure-PyTorch sparse convolution engine with MinkowskiEngine's API and semantics (docs/sparse_engine.md).

Upstream model code ports line for line: ``import models.sparse as ME`` then ``ME.SparseTensor``,
``ME.MinkowskiConvolution``, ``ME.MinkowskiConvolutionTranspose``, ``ME.MinkowskiBatchNorm``,
``ME.MinkowskiReLU``, ``ME.cat``.
"""
from models.sparse.dispatch import sparse_conv
from models.sparse.engine import get_engine
from models.sparse.kmap import KernelGenerator, KernelMap, kernel_offsets
from models.sparse.modules import BatchNorm, Convolution, ConvolutionTranspose, ReLU, cat
from models.sparse.tensor import CoordinateManager, CoordinateMapKey, SparseTensor, features_at_points

MinkowskiConvolution = Convolution
MinkowskiConvolutionTranspose = ConvolutionTranspose
MinkowskiBatchNorm = BatchNorm
MinkowskiReLU = ReLU

__all__ = ['SparseTensor', 'CoordinateManager', 'CoordinateMapKey', 'KernelGenerator', 'KernelMap',
           'features_at_points', 'kernel_offsets', 'Convolution', 'ConvolutionTranspose', 'BatchNorm', 'ReLU',
           'cat', 'sparse_conv', 'get_engine', 'MinkowskiConvolution', 'MinkowskiConvolutionTranspose',
           'MinkowskiBatchNorm', 'MinkowskiReLU']
