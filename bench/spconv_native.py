"""Native spconv MinkUNets for the benchmarks: the same network, built by ``models/mink_unet.py`` from spconv's
own layers, with spconv's own rulebooks and tensors, and weights converted from one of our models.

This is what a researcher would run instead of this project (Pointcept's SpUNet is built the same way): the
yardstick ``bench/vs_spconv.py`` and ``bench/sparse_unet.py`` time our engine against. It is a benchmark tool,
not an engine of the project: the layers below imitate the MinkowskiEngine names ``mink_unet`` asks for, on
top of ``spconv.pytorch`` (submanifold ``SubMConv3d`` for stride-1 convolutions, ``SparseConv3d`` for the
kernel-2 stride-2 downsampling, ``SparseInverseConv3d`` keyed on the downsampling for the way up).

    net = native_unet(our_disnet)        # same architecture, same weights, spconv's layers
    out = net(native_input(coords, feats, batch_size))

Facts it relies on (checked by ``check_equal``): spconv wants non-negative voxel indices at each level's own
grid (coordinates divided by the tensor stride), a ``spatial_shape`` that stays divisible down to stride 16,
int32 indices and the batch size; its weight is [C_out, kx, ky, kz, C_in] with z fastest when flattened,
while ours is [K, C_in, C_out] with x fastest, so a kernel converts by a view to (kz, ky, kx, C_in, C_out)
and a permute; its 1x1x1 fast path reads the weight memory as [C_in, C_out] whatever its shape.
"""
from types import SimpleNamespace

import torch
import torch.nn as nn

from models.mink_unet import mink_unet


def _spconv():
    import spconv.pytorch as spconv

    from models.sparse.spconv import _spconv as report_no_stream_without_cuda
    report_no_stream_without_cuda()  # spconv 2.3's CPU backward asks for a CUDA stream first
    return spconv


class NativeTensor:
    """An spconv ``SparseConvTensor`` and its tensor stride (spconv itself does not track it)."""

    def __init__(self, sp, stride):
        self.sp, self.stride = sp, stride

    @property
    def F(self):
        return self.sp.features

    def with_features(self, features):
        return NativeTensor(self.sp.replace_feature(features), self.stride)

    def __iadd__(self, other):
        return self.with_features(self.F + other.F)


class Convolution(nn.Module):
    """``MinkowskiConvolution`` on spconv: submanifold at stride 1, a keyed downsampling at stride 2."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1, bias=False, dimension=3):
        super().__init__()
        sp = _spconv()
        self.kernel_size, self.stride = kernel_size, stride
        if stride == 1:
            self.conv = sp.SubMConv3d(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        else:
            if kernel_size != stride:
                raise ValueError('the native spconv UNet has only kernel == stride downsampling')
            self.conv = sp.SparseConv3d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)

    @property
    def kernel(self):  # mink_unet's initialisation draws it; native_unet then copies our weights over it
        return self.conv.weight

    def forward(self, x):
        if self.stride == 1:
            self.conv.indice_key = f'subm_k{self.kernel_size}_s{x.stride}'  # one rulebook per stride and size
            return NativeTensor(self.conv(x.sp), x.stride)
        self.conv.indice_key = f'down_s{x.stride}'
        return NativeTensor(self.conv(x.sp), x.stride * self.stride)


class ConvolutionTranspose(nn.Module):
    """``MinkowskiConvolutionTranspose`` on spconv: the inverse of the downsampling that made its input."""

    def __init__(self, in_channels, out_channels, kernel_size=2, stride=2, dilation=1, bias=False, dimension=3):
        super().__init__()
        self.stride = stride
        self.conv = _spconv().SparseInverseConv3d(in_channels, out_channels, kernel_size, indice_key='', bias=bias)

    def forward(self, x):
        self.conv.indice_key = f'down_s{x.stride // self.stride}'
        return NativeTensor(self.conv(x.sp), x.stride // self.stride)


class BatchNorm(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x):
        return x.with_features(self.bn(x.F))


class ReLU(nn.Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return x.with_features(torch.relu(x.F))


def cat(*tensors):
    return tensors[0].with_features(torch.cat([t.F for t in tensors], 1))


ENGINE = SimpleNamespace(MinkowskiConvolution=Convolution, MinkowskiConvolutionTranspose=ConvolutionTranspose,
                         MinkowskiBatchNorm=BatchNorm, MinkowskiReLU=ReLU, cat=cat)


def _converted(kernel, native_weight):
    """Our kernel [K, C_in, C_out] ([C_in, C_out] for K == 1) in spconv's layout ``native_weight.shape``."""
    c_out, k = native_weight.shape[0], native_weight.shape[1]
    if kernel.dim() == 2:  # spconv's 1x1x1 path reads the memory as [C_in, C_out]
        return kernel.contiguous().view(native_weight.shape)
    c_in = kernel.shape[1]
    return kernel.view(k, k, k, c_in, c_out).permute(4, 2, 1, 0, 3).contiguous()


def native_unet(model):
    """A native spconv copy of ``model`` (a ``DisNet``, or its ``net3d`` MinkUNet): same architecture, same
    weights and BatchNorm state, on ``model``'s device and dtype."""
    net3d = getattr(model, 'net3d', model)
    out_channels = net3d.final.out_channels
    native = mink_unet(in_channels=net3d.conv0p1s1.in_channels, out_channels=out_channels,
                       arch=type(net3d).__name__, engine=ENGINE)
    ours = dict(net3d.named_modules())
    with torch.no_grad():
        for name, module in native.named_modules():
            if isinstance(module, (Convolution, ConvolutionTranspose)):
                module.conv.weight.copy_(_converted(ours[name].kernel, module.conv.weight))
            elif isinstance(module, BatchNorm):
                module.bn.load_state_dict(ours[name].bn.state_dict())
    param = next(net3d.parameters())
    return native.to(device=param.device, dtype=param.dtype)


def native_input(coords, feats, batch_size):
    """spconv's input tensor for our (batch, x, y, z) voxel coordinates: shifted to non-negative multiples of
    16 (so every level sees our grid) in a ``spatial_shape`` divisible by 16."""
    c = coords.to(torch.int64)
    lo = torch.div(c[:, 1:].min(0).values, 16, rounding_mode='floor') * 16
    c = torch.cat([c[:, :1], c[:, 1:] - lo], 1)
    shape = ((c[:, 1:].max(0).values // 16 + 1) * 16).tolist()
    return NativeTensor(_spconv().SparseConvTensor(feats, c.to(torch.int32).contiguous(), shape, batch_size), 1)


def difference(model, coords, feats, batch_size):
    """The largest difference between the outputs of ``model`` and of its native spconv copy on the same input
    (eval mode, no gradient), relative to the output's scale, at PyTorch's current thread count."""
    import models.sparse as ME
    native = native_unet(model).eval()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ours = model(ME.SparseTensor(feats, coords))
            theirs = native.forward(native_input(coords, feats, batch_size))
    finally:
        model.train(was_training)
    return float((ours - theirs).abs().max() / ours.abs().max().clamp_min(1e-12))


def check_equal(model, coords, feats, batch_size, atol=1e-3):
    """``difference`` on one thread (spconv 2.3's CPU scatter-add is wrong on more; see ``difference`` at the
    thread count in use for how much); raise when it exceeds ``atol``. Returns it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        diff = difference(model, coords, feats, batch_size)
    finally:
        torch.set_num_threads(threads)
    if diff > atol:
        raise RuntimeError(f'native spconv network differs from ours by {diff:.2e} (relative); the weight '
                           'conversion or the coordinate shift is wrong')
    return diff
