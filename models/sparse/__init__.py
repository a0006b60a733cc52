"""A pure-PyTorch sparse convolution engine with MinkowskiEngine's API and semantics (SPEC §4).

Upstream model code ports line for line: ``import models.sparse as ME`` then ``ME.SparseTensor``,
``ME.MinkowskiConvolution``, ``ME.MinkowskiConvolutionTranspose``, ``ME.MinkowskiBatchNorm``,
``ME.MinkowskiReLU``, ``ME.cat``.
"""
from models.sparse.tensor import (CoordinateManager, CoordinateMapKey, KernelMap, SparseTensor,
                                  features_at_points, kernel_offsets)
from models.sparse.modules import BatchNorm, Convolution, ConvolutionTranspose, ReLU, cat
from models.sparse.functional import sparse_conv
from models.sparse.backend import get_sparse_backend

MinkowskiConvolution = Convolution
MinkowskiConvolutionTranspose = ConvolutionTranspose
MinkowskiBatchNorm = BatchNorm
MinkowskiReLU = ReLU

__all__ = ['SparseTensor', 'CoordinateManager', 'CoordinateMapKey', 'KernelMap', 'features_at_points',
           'kernel_offsets', 'Convolution', 'ConvolutionTranspose', 'BatchNorm', 'ReLU', 'cat',
           'sparse_conv', 'get_sparse_backend', 'MinkowskiConvolution', 'MinkowskiConvolutionTranspose',
           'MinkowskiBatchNorm', 'MinkowskiReLU']
