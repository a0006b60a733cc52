"""DisNet: the 3D distillation network (OpenScene / 3DSS-VLG): a MinkUNet from RGB voxels to the
2D model's embedding space. Its state-dict keys (``net3d.conv0p1s1.kernel``, ...) match upstream."""
from collections import OrderedDict

import torch.nn as nn

from models.mink_unet import mink_unet

# Embedding width of each 2D feature extractor (upstream: 'lseg' -> 512, 'openseg' -> 768).
_EMBEDDING_DIMS = (('openseg', 768), ('lseg', 512), ('clip', 512))


def embedding_dim(feature_2d_extractor):
    for name, dim in _EMBEDDING_DIMS:
        if name in str(feature_2d_extractor):
            return dim
    raise ValueError(f'unknown feature_2d_extractor {feature_2d_extractor!r}; expected a name containing '
                     f'one of {[n for n, _ in _EMBEDDING_DIMS]}')


def state_dict_remove_module(state_dict):
    """Strip the ``module.`` prefix that DataParallel / DDP checkpoints carry."""
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                       for k, v in state_dict.items())


class DisNet(nn.Module):
    """3D sparse UNet for distillation; ``forward(sparse_input)`` -> per-voxel embeddings [N, D]."""

    def __init__(self, cfg):
        super().__init__()
        extractor = getattr(cfg, 'feature_2d_extractor', 'openseg')
        arch = getattr(cfg, 'arch_3d', None)
        if arch is None:
            raise ValueError('DisNet needs cfg.arch_3d (e.g. MinkUNet18A)')
        backend = getattr(cfg, 'sparse_backend', None) or 'torch'
        self.net3d = mink_unet(in_channels=3, out_channels=embedding_dim(extractor), D=3, arch=arch,
                               backend=backend)

    def forward(self, sparse_3d):
        return self.net3d(sparse_3d)
