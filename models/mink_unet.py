"""The MinkUNet family (Choy et al., CVPR'19), as the 3DSS-VLG / OpenScene code uses it.

Same modules, attribute names, channel plan and initialisation as upstream ``models/mink_unet.py`` +
``models/resnet_base.py`` + MinkowskiEngine's ``modules/resnet_block.py``, so an upstream checkpoint
loads with ``strict=True``. The layers come from an engine namespace (``models.sparse.engine``):
the built-in pure-PyTorch engine by default, MinkowskiEngine itself when asked for and installed
(docs/sparse_engine.md).

Shape: stem conv k5 (stride 1) -> four [k2 s2 conv, BN, ReLU, residual blocks] going down to tensor
stride 16 -> four [k2 s2 transposed conv, BN, ReLU, concat skip, residual blocks] back to stride 1
-> final 1x1 conv. ``forward`` returns the per-voxel features ``[N, out_channels]`` (upstream returns
``.F``), in the input's voxel order.
"""
import math

import torch
import torch.nn as nn

from models.sparse.engine import get_engine


class BasicBlock(nn.Module):
    """Two 3x3x3 convs with a residual connection (MinkowskiEngine ``BasicBlock``)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, bn_momentum=0.1,
                 dimension=3, ME=None):
        super().__init__()
        self.conv1 = ME.MinkowskiConvolution(inplanes, planes, kernel_size=3, stride=stride,
                                             dilation=dilation, dimension=dimension)
        self.norm1 = ME.MinkowskiBatchNorm(planes, momentum=bn_momentum)
        self.conv2 = ME.MinkowskiConvolution(planes, planes, kernel_size=3, stride=1, dilation=dilation,
                                             dimension=dimension)
        self.norm2 = ME.MinkowskiBatchNorm(planes, momentum=bn_momentum)
        self.relu = ME.MinkowskiReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out += residual
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3x3 -> 1x1 (x4 channels) with a residual connection (MinkowskiEngine ``Bottleneck``)."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, bn_momentum=0.1,
                 dimension=3, ME=None):
        super().__init__()
        self.conv1 = ME.MinkowskiConvolution(inplanes, planes, kernel_size=1, dimension=dimension)
        self.norm1 = ME.MinkowskiBatchNorm(planes, momentum=bn_momentum)
        self.conv2 = ME.MinkowskiConvolution(planes, planes, kernel_size=3, stride=stride,
                                             dilation=dilation, dimension=dimension)
        self.norm2 = ME.MinkowskiBatchNorm(planes, momentum=bn_momentum)
        self.conv3 = ME.MinkowskiConvolution(planes, planes * self.expansion, kernel_size=1,
                                             dimension=dimension)
        self.norm3 = ME.MinkowskiBatchNorm(planes * self.expansion, momentum=bn_momentum)
        self.relu = ME.MinkowskiReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        out += residual
        return self.relu(out)


def _kaiming_normal_fan_out(kernel):
    """MinkowskiEngine's ``utils.kaiming_normal_(kernel, mode='fan_out', nonlinearity='relu')``.

    ME computes fans on its own layout: for [K, C_in, C_out], fan_out = C_out * K; for a 2D kernel
    [C_in, C_out] it uses the nn.Linear convention (fan_out = size(0) = C_in). Reproduced as is.
    """
    fan_out = kernel.shape[0] if kernel.dim() == 2 else kernel.shape[2] * kernel.shape[0]
    std = math.sqrt(2.0) / math.sqrt(fan_out)
    with torch.no_grad():
        kernel.normal_(0, std)


class MinkUNetBase(nn.Module):
    BLOCK = None
    PLANES = None
    DILATIONS = (1, 1, 1, 1, 1, 1, 1, 1)
    LAYERS = (2, 2, 2, 2, 2, 2, 2, 2)
    INIT_DIM = 32
    OUT_TENSOR_STRIDE = 1

    def __init__(self, in_channels, out_channels, D=3, engine='builtin'):
        super().__init__()
        self.D = D
        # A plain attribute (not a module): the namespace of layer classes this net is built from.
        self.ME = get_engine(engine) if isinstance(engine, str) else engine
        self.network_initialization(in_channels, out_channels, D)
        self.weight_initialization()

    def network_initialization(self, in_channels, out_channels, D):
        ME = self.ME
        self.inplanes = self.INIT_DIM
        self.conv0p1s1 = ME.MinkowskiConvolution(in_channels, self.inplanes, kernel_size=5, dimension=D)
        self.bn0 = ME.MinkowskiBatchNorm(self.inplanes)

        self.conv1p1s2 = ME.MinkowskiConvolution(self.inplanes, self.inplanes, kernel_size=2, stride=2,
                                                 dimension=D)
        self.bn1 = ME.MinkowskiBatchNorm(self.inplanes)
        self.block1 = self._make_layer(self.BLOCK, self.PLANES[0], self.LAYERS[0])

        self.conv2p2s2 = ME.MinkowskiConvolution(self.inplanes, self.inplanes, kernel_size=2, stride=2,
                                                 dimension=D)
        self.bn2 = ME.MinkowskiBatchNorm(self.inplanes)
        self.block2 = self._make_layer(self.BLOCK, self.PLANES[1], self.LAYERS[1])

        self.conv3p4s2 = ME.MinkowskiConvolution(self.inplanes, self.inplanes, kernel_size=2, stride=2,
                                                 dimension=D)
        self.bn3 = ME.MinkowskiBatchNorm(self.inplanes)
        self.block3 = self._make_layer(self.BLOCK, self.PLANES[2], self.LAYERS[2])

        self.conv4p8s2 = ME.MinkowskiConvolution(self.inplanes, self.inplanes, kernel_size=2, stride=2,
                                                 dimension=D)
        self.bn4 = ME.MinkowskiBatchNorm(self.inplanes)
        self.block4 = self._make_layer(self.BLOCK, self.PLANES[3], self.LAYERS[3])

        self.convtr4p16s2 = ME.MinkowskiConvolutionTranspose(self.inplanes, self.PLANES[4], kernel_size=2,
                                                             stride=2, dimension=D)
        self.bntr4 = ME.MinkowskiBatchNorm(self.PLANES[4])
        self.inplanes = self.PLANES[4] + self.PLANES[2] * self.BLOCK.expansion
        self.block5 = self._make_layer(self.BLOCK, self.PLANES[4], self.LAYERS[4])

        self.convtr5p8s2 = ME.MinkowskiConvolutionTranspose(self.inplanes, self.PLANES[5], kernel_size=2,
                                                            stride=2, dimension=D)
        self.bntr5 = ME.MinkowskiBatchNorm(self.PLANES[5])
        self.inplanes = self.PLANES[5] + self.PLANES[1] * self.BLOCK.expansion
        self.block6 = self._make_layer(self.BLOCK, self.PLANES[5], self.LAYERS[5])

        self.convtr6p4s2 = ME.MinkowskiConvolutionTranspose(self.inplanes, self.PLANES[6], kernel_size=2,
                                                            stride=2, dimension=D)
        self.bntr6 = ME.MinkowskiBatchNorm(self.PLANES[6])
        self.inplanes = self.PLANES[6] + self.PLANES[0] * self.BLOCK.expansion
        self.block7 = self._make_layer(self.BLOCK, self.PLANES[6], self.LAYERS[6])

        self.convtr7p2s2 = ME.MinkowskiConvolutionTranspose(self.inplanes, self.PLANES[7], kernel_size=2,
                                                            stride=2, dimension=D)
        self.bntr7 = ME.MinkowskiBatchNorm(self.PLANES[7])
        self.inplanes = self.PLANES[7] + self.INIT_DIM
        self.block8 = self._make_layer(self.BLOCK, self.PLANES[7], self.LAYERS[7])

        # Upstream leaves the final conv without bias (``has_bias=True`` is commented out).
        self.final = ME.MinkowskiConvolution(self.PLANES[7], out_channels, kernel_size=1, dimension=D)
        self.relu = ME.MinkowskiReLU(inplace=True)

    def weight_initialization(self):
        # As upstream ResNetBase: only (non-transposed) convolutions are re-drawn; transposed convs keep
        # the default uniform init of MinkowskiConvolutionBase.reset_parameters.
        for m in self.modules():
            if isinstance(m, self.ME.MinkowskiConvolution):
                _kaiming_normal_fan_out(m.kernel)
            if isinstance(m, self.ME.MinkowskiBatchNorm):
                nn.init.constant_(m.bn.weight, 1)
                nn.init.constant_(m.bn.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1, dilation=1, bn_momentum=0.1):
        ME = self.ME
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # 1x1 projection of the residual when the channel count (or stride) changes.
            downsample = nn.Sequential(
                ME.MinkowskiConvolution(self.inplanes, planes * block.expansion, kernel_size=1,
                                        stride=stride, dimension=self.D),
                ME.MinkowskiBatchNorm(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride=stride, dilation=dilation, downsample=downsample,
                        bn_momentum=bn_momentum, dimension=self.D, ME=ME)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, stride=1, dilation=dilation,
                                bn_momentum=bn_momentum, dimension=self.D, ME=ME))
        return nn.Sequential(*layers)

    def forward(self, x):
        ME = self.ME
        out = self.relu(self.bn0(self.conv0p1s1(x)))
        out_p1 = out

        out = self.relu(self.bn1(self.conv1p1s2(out_p1)))
        out_b1p2 = self.block1(out)

        out = self.relu(self.bn2(self.conv2p2s2(out_b1p2)))
        out_b2p4 = self.block2(out)

        out = self.relu(self.bn3(self.conv3p4s2(out_b2p4)))
        out_b3p8 = self.block3(out)

        out = self.relu(self.bn4(self.conv4p8s2(out_b3p8)))  # tensor stride 16
        out = self.block4(out)

        out = self.relu(self.bntr4(self.convtr4p16s2(out)))  # back to stride 8
        out = self.block5(ME.cat(out, out_b3p8))

        out = self.relu(self.bntr5(self.convtr5p8s2(out)))   # stride 4
        out = self.block6(ME.cat(out, out_b2p4))

        out = self.relu(self.bntr6(self.convtr6p4s2(out)))   # stride 2
        out = self.block7(ME.cat(out, out_b1p2))

        out = self.relu(self.bntr7(self.convtr7p2s2(out)))   # stride 1
        out = self.block8(ME.cat(out, out_p1))

        return self.final(out).F


class MinkUNet14(MinkUNetBase):
    BLOCK = BasicBlock
    LAYERS = (1, 1, 1, 1, 1, 1, 1, 1)


class MinkUNet18(MinkUNetBase):
    BLOCK = BasicBlock
    LAYERS = (2, 2, 2, 2, 2, 2, 2, 2)


class MinkUNet34(MinkUNetBase):
    BLOCK = BasicBlock
    LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)


class MinkUNet14A(MinkUNet14):
    PLANES = (32, 64, 128, 256, 128, 128, 96, 96)


class MinkUNet14B(MinkUNet14):
    PLANES = (32, 64, 128, 256, 128, 128, 128, 128)


class MinkUNet14C(MinkUNet14):
    PLANES = (32, 64, 128, 256, 192, 192, 128, 128)


class MinkUNet14D(MinkUNet14):
    PLANES = (32, 64, 128, 256, 384, 384, 384, 384)


class MinkUNet18A(MinkUNet18):
    PLANES = (32, 64, 128, 256, 128, 128, 96, 96)


class MinkUNet18B(MinkUNet18):
    PLANES = (32, 64, 128, 256, 128, 128, 128, 128)


class MinkUNet18D(MinkUNet18):
    PLANES = (32, 64, 128, 256, 384, 384, 384, 384)


class MinkUNet34A(MinkUNet34):
    PLANES = (32, 64, 128, 256, 256, 128, 64, 64)


class MinkUNet34B(MinkUNet34):
    PLANES = (32, 64, 128, 256, 256, 128, 64, 32)


class MinkUNet34C(MinkUNet34):
    PLANES = (32, 64, 128, 256, 256, 128, 96, 96)


ARCHITECTURES = {cls.__name__: cls for cls in (
    MinkUNet14A, MinkUNet14B, MinkUNet14C, MinkUNet14D, MinkUNet18A, MinkUNet18B, MinkUNet18D,
    MinkUNet34A, MinkUNet34B, MinkUNet34C)}


def mink_unet(in_channels=3, out_channels=20, D=3, arch='MinkUNet18A', engine='builtin'):
    """Build a MinkUNet by name (``arch_3d`` in the configs)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f'unknown 3D architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}')
    return ARCHITECTURES[arch](in_channels, out_channels, D, engine=engine)
