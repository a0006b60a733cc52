"""DisNet: the 3D distillation network (OpenScene / 3DSS-VLG): a MinkUNet from RGB voxels to the
2D model's embedding space. Its state-dict keys (``net3d.conv0p1s1.kernel``, ...) match upstream."""
import torch.nn as nn

from models.mink_unet import mink_unet


class DisNet(nn.Module):
    """3D sparse UNet for distillation: ``arch`` (e.g. MinkUNet18A), ``out_channels`` (the 2D embedding width),
    ``engine`` (``builtin`` or ``minkowski``). ``forward(sparse_input)`` -> per-voxel embeddings [N, D]."""

    def __init__(self, arch, out_channels, engine='builtin'):
        super().__init__()
        if arch is None:
            raise ValueError('DisNet needs an architecture, arch_3d in the configs (e.g. MinkUNet18A)')
        self.net3d = mink_unet(in_channels=3, out_channels=out_channels, D=3, arch=arch, engine=engine)

    def sparse_input(self, coords, feats, device):
        """The network's input: colours ``feats`` [V, 3] at integer voxel coordinates ``coords`` [V, 4] =
        (batch, x, y, z), as a sparse tensor of the engine this network was built on."""
        return self.net3d.ME.SparseTensor(feats.float().to(device), coords.int().to(device))

    def forward(self, sparse_3d):
        return self.net3d(sparse_3d)
