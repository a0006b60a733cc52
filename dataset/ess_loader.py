"""Data for the Embeddings Specialization Stage (paper §3.3).

ESS sees only the points that some view covers (rows of the fused-feature file). Per scene:
- training: the fused features of the covered points with their PLG pseudo labels (``ESSPointDataset``
  with ``label_source='pseudo'``), or with GT labels (``label_source='gt'``); every step draws
  ``num_points`` random covered points per scene (with replacement when the scene has fewer), as
  upstream's ``OpensegDataset``;
- validation / inference: every covered point of a scene (``ESSSceneDataset``).

Randomness is a pure function of (seed, epoch, scene index): ``set_epoch`` picks the epoch, so the points
drawn do not depend on worker processes or on how many epochs ran before, and a resumed run draws
exactly what an uninterrupted run draws. ``EpochShuffleSampler`` does the same for the scene order.

Every fused-feature file of a scene is read and merged (``fused_features.scene_features``): 3DSS-VLG's
own fusion writes one full file per scene, which is read as it is; OpenScene's released train features
are five random 20k-point subsets per scene, whose union is what ESS trains on and adapts (upstream's
ESS read a single file, which on that release would see at most 20k points of a ~150k-point scene).
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dataset import formats, fused_features
from dataset.label_constants import IGNORE_LABEL


def _validate_pseudo_labels(labels, folder, scene, num_classes):
    bad = (labels < 0) | (labels > num_classes)
    if bad.any():
        path = formats.pseudo_label_paths(folder, scene)[0]
        raise formats.FormatError(
            f"pseudo labels '{path}': expected class ids in [0, {num_classes}] ({num_classes} = unlabeled), "
            f"found {int(bad.sum())} values outside, e.g. {int(labels[bad][0])}; was PLG run with another label set?")


class _SceneReader:
    """Reads (and optionally caches) one scene's covered features, mask and labels."""

    def __init__(self, data_root, split, feat_root, num_classes, feat_dim=None, pseudo_label_path=None,
                 cache=False):
        self.scene_paths = formats.list_scenes(data_root, split)
        self.scenes = [formats.scene_name(p) for p in self.scene_paths]
        self.all_scenes = fused_features.scene_names(data_root)
        self.feat_root, self.num_classes, self.feat_dim = feat_root, num_classes, feat_dim
        self.pseudo_label_path = pseudo_label_path
        self.cache = {} if cache else None

    def scene_inputs(self, scene):
        """The files a scene's pseudo labels are made from now: its .pth and its fused-feature files."""
        features = fused_features.feature_files(self.feat_root, scene, self.all_scenes, required=False)
        return [self.scene_paths[self.scenes.index(scene)], *features]

    def read(self, index):
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        scene = self.scenes[index]
        scene_3d = formats.load_scene_3d(self.scene_paths[index], self.num_classes)
        n = scene_3d.coords.shape[0]
        feat, mask, feat_paths = fused_features.scene_features(self.feat_root, scene, num_points=n,
                                                               feat_dim=self.feat_dim, scenes=self.all_scenes)
        item = {'scene': scene, 'feat_paths': feat_paths, 'feat': feat, 'mask_full': mask,
                'gt': scene_3d.labels, 'has_labels': scene_3d.has_labels}
        if self.pseudo_label_path is not None:
            pseudo = formats.load_pseudo_labels(self.pseudo_label_path, scene, num_points=n)
            _validate_pseudo_labels(pseudo, self.pseudo_label_path, scene, self.num_classes)
            item['pseudo'] = pseudo
        if self.cache is not None:
            self.cache[index] = item
        return item


class ESSPointDataset(Dataset):
    """``num_points`` random covered points per scene -> (feat float32 [P, D], labels int64 [P]).

    ``label_source='pseudo'`` reads PLG pseudo labels from ``pseudo_label_path`` (their 'unlabeled'
    index C is the loss's ignore index); ``'gt'`` uses GT labels, with 255 mapped to C.
    """

    has_fused_features = True  # its items are the fused features of the covered points

    def __init__(self, data_root, split, feat_root, num_points, num_classes, *, label_source='pseudo',
                 pseudo_label_path=None, feat_dim=None, seed=0, cache=False):
        if label_source not in ('pseudo', 'gt'):
            raise ValueError(f"label_source must be 'pseudo' or 'gt', found '{label_source}'")
        if label_source == 'pseudo' and not pseudo_label_path:
            raise ValueError('ESS training on pseudo labels needs pseudo_label_path (the PLG output folder)')
        if num_points <= 0:
            raise ValueError(f'num_points must be positive, found {num_points}')
        self.reader = _SceneReader(data_root, split, feat_root, num_classes, feat_dim,
                                   pseudo_label_path if label_source == 'pseudo' else None, cache)
        self.label_source, self.num_points, self.num_classes = label_source, int(num_points), num_classes
        self.seed, self.epoch = int(seed), 0
        if label_source == 'pseudo':  # fail before training starts, not at the first batch holding the scene
            missing = [formats.pseudo_label_paths(pseudo_label_path, s)[0] for s in self.scenes
                       if not os.path.isfile(formats.pseudo_label_paths(pseudo_label_path, s)[0])]
            if missing:
                raise FileNotFoundError(f"pseudo labels missing for {len(missing)} of {len(self.scenes)} scenes of "
                                        f"'{split}', e.g. '{missing[0]}'"
                                        + (f", '{missing[1]}'" if len(missing) > 1 else '')
                                        + ": run pseudo-label generation (PLG) first, or check pseudo_label_path")

    @property
    def scenes(self):
        return self.reader.scenes

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.reader.scenes)

    def __getitem__(self, index):
        item = self.reader.read(index)
        mask = item['mask_full'].numpy()
        covered = int(mask.sum())
        if covered == 0:
            raise formats.FormatError(f"fused features {item['feat_paths']} cover no point of scene "
                                      f"'{item['scene']}'; ESS has nothing to learn from it: remove the scene")
        if self.label_source == 'pseudo':
            labels = item['pseudo'][mask]
        else:
            labels = item['gt'][mask].copy()
            labels[labels == IGNORE_LABEL] = self.num_classes
        rng = np.random.default_rng([self.seed, self.epoch, index])
        # as upstream: with replacement only when the scene has fewer covered points than asked for
        choice = rng.choice(covered, self.num_points, replace=covered < self.num_points)
        choice = torch.from_numpy(choice)
        return item['feat'][choice].float(), torch.from_numpy(labels)[choice].long()


class ESSSceneDataset(Dataset):
    """Every covered point of a scene, for validation and inference (batch size 1, ``collate_scene``).

    Item: dict(scene, feat_paths, feat float16 [M, D], mask_full bool [N], gt int64 [N], has_labels).
    """

    has_fused_features = True

    def __init__(self, data_root, split, feat_root, num_classes, *, feat_dim=None, cache=False):
        self.reader = _SceneReader(data_root, split, feat_root, num_classes, feat_dim, None, cache)

    @property
    def scenes(self):
        return self.reader.scenes

    def __len__(self):
        return len(self.reader.scenes)

    def __getitem__(self, index):
        return self.reader.read(index)


def collate_scene(batch):
    """Scenes differ in size: the scene datasets are iterated one scene at a time."""
    if len(batch) != 1:
        raise ValueError(f'ESSSceneDataset is read with batch size 1, got {len(batch)}')
    return batch[0]


class EpochShuffleSampler(Sampler):
    """A random order of ``num_items`` that depends only on (seed, epoch): resumable and worker-independent."""

    def __init__(self, num_items, seed=0, shuffle=True):
        self.num_items, self.seed, self.shuffle, self.epoch = int(num_items), int(seed), shuffle, 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_items))
        # a stream separate from the point sampling one ([seed, epoch, index] there)
        order = np.random.default_rng([self.seed, self.epoch, 2 ** 31]).permutation(self.num_items)
        return iter(order.tolist())

    def __len__(self):
        return self.num_items
