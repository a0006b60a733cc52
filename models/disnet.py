"""DisNet: the 3D distillation network (OpenScene / 3DSS-VLG): a MinkUNet from RGB voxels to the
2D model's embedding space. Its state-dict keys (``net3d.conv0p1s1.kernel``, ...) match upstream."""
import torch.nn as nn

from dataset.formats import feature_dim
from models.mink_unet import mink_unet


class DisNet(nn.Module):
    """3D sparse UNet for distillation; ``forward(sparse_input)`` -> per-voxel embeddings [N, D]."""

    def __init__(self, cfg):
        super().__init__()
        extractor = getattr(cfg, 'feature_2d_extractor', 'openseg')
        arch = getattr(cfg, 'arch_3d', None)
        if arch is None:
            raise ValueError('DisNet needs cfg.arch_3d (e.g. MinkUNet18A)')
        backend = getattr(cfg, 'sparse_backend', None) or 'torch'
        self.net3d = mink_unet(in_channels=3, out_channels=feature_dim(extractor), D=3, arch=arch,
                               backend=backend)

    def forward(self, sparse_3d):
        return self.net3d(sparse_3d)
