"""Dataset of voxelised 3D scenes as OpenScene's ``Point3DLoader``.

Each item: read ``<root>/<split>/<scene>.pth`` (via ``dataset.formats``), colours [-1, 1] -> 0-255,
optional elastic distortion, voxelisation with random rotation / scale (always on, as upstream:
``use_augmentation=True`` in every split), optional flip + colour augmentation, colours back to
[-1, 1] (or all-ones input when ``input_color`` is False, upstream's default).

Randomness: every item draws from its own ``numpy.random.Generator`` seeded by (seed, epoch, index),
so results do not depend on DataLoader workers or on the order items are read; call
``set_epoch(epoch)`` before each epoch (with ``persistent_workers=False``, the default, workers copy
the dataset at the start of every epoch and see the new epoch). ``seed=None`` draws fresh OS entropy
per item (not reproducible). Upstream's SharedArray cache is replaced by an in-process cache
(``memcache_init``): scenes are read once at construction and shared copy-on-write by forked workers.

Items and scenes: a loader of S scenes and ``loop`` L has S * L items; item ``repeat_item(i, r, S)`` =
``i + r * S`` is repeat r of scene i (``scene_and_repeat`` inverts it), each repeat with its own random
augmentation. ``predict_split``'s test-time repeats and ``pipeline.query.SceneSubset`` ask for scenes by this
rule, so every user of it calls these two functions.
"""
import numpy as np
import torch

import dataset.augmentation as t
from dataset.formats import list_scenes, load_scene_3d, scene_name
from dataset.voxelizer import Voxelizer


def repeat_item(index, repeat, num_scenes):
    """The item of repeat ``repeat`` of scene ``index`` in a loader of ``num_scenes`` scenes: ``index + repeat *
    num_scenes`` (repeat 0 is item ``index`` itself; upstream's ``loop`` copies)."""
    return index + repeat * num_scenes


def scene_and_repeat(item, num_scenes):
    """(scene index, repeat) of ``item`` in a loader of ``num_scenes`` scenes: the inverse of ``repeat_item``."""
    return item % num_scenes, item // num_scenes


def _with_batch_column(batch):
    coords = []
    for i, item in enumerate(batch):
        c = item[0].clone()
        c[:, 0] = i  # column 0 carries the batch index (the loaders put 1 there, upstream multiplies)
        coords.append(c)
    return coords


def collation_fn(batch):
    """Batch items: coords [sum V, 4] (col 0 = batch index), every other element concatenated."""
    coords = _with_batch_column(batch)
    rest = [torch.cat(list(parts)) for parts in list(zip(*batch))[1:]]
    return (torch.cat(coords), *rest)


def collation_fn_eval_all(batch):
    """As ``collation_fn``; the last element (inverse map point -> voxel) is offset by the voxels of
    the preceding items, so ``output[inds_reconstruct]`` gives per-point predictions of the batch."""
    coords = _with_batch_column(batch)
    parts = list(zip(*batch))
    middle = [torch.cat(list(p)) for p in parts[1:-1]]
    offsets = np.cumsum([0] + [c.shape[0] for c in coords[:-1]])
    inverse = torch.cat([inv + int(off) for inv, off in zip(parts[-1], offsets)])
    return (torch.cat(coords), *middle, inverse)


class Point3DLoader(torch.utils.data.Dataset):
    """Voxelised scenes with labels.

    Returns per item (upstream's tuple):
        coords  int32 [V, 4]: column 0 = 1 (collate puts the batch index there), columns 1:4 = voxel
                coordinates (>= 0) of the augmented scene;
        feats   float32 [V, 3]: colours in [-1, 1] of each voxel's kept point (all ones if not input_color);
        labels  int64 [V]: label of each voxel's kept (first) point, 255 = ignore; with ``eval_all`` the
                labels of all N original points instead;
        inds_reconstruct int64 [N] (only with ``eval_all``): voxel row of every original point.
    """

    SCALE_AUGMENTATION_BOUND = (0.9, 1.1)
    ROTATION_AUGMENTATION_BOUND = ((-np.pi / 64, np.pi / 64), (-np.pi / 64, np.pi / 64), (-np.pi, np.pi))
    TRANSLATION_AUGMENTATION_RATIO_BOUND = ((-0.2, 0.2), (-0.2, 0.2), (0, 0))  # unused without clip_bound
    ELASTIC_DISTORT_PARAMS = ((0.2, 0.4), (0.8, 1.6))
    ROTATION_AXIS = 'z'
    # its scenes are a data set's: their fused 2D features (where fusion ran) are found by scene name in the
    # feature folder (dataset/fused_features.py); ScanLoader (own scans) has none
    has_fused_features = True

    def __init__(self, datapath_prefix='data', voxel_size=0.05, split='train', aug=False, memcache_init=False,
                 identifier=1233, loop=1, data_aug_color_trans_ratio=0.1, data_aug_color_jitter_std=0.05,
                 data_aug_hue_max=0.5, data_aug_saturation_max=0.2, eval_all=False, input_color=False, seed=None,
                 num_classes=None, data_paths=None):
        super().__init__()
        if loop < 1:
            raise ValueError(f"loop must be >= 1, found {loop}")
        # identifier: kept for upstream's signature (it named upstream's shared-memory arrays); unused here
        self.split = split
        # data_paths: explicit scene files instead of <datapath_prefix>/<split> (one's own scans, query.py)
        self.data_paths = list(data_paths) if data_paths is not None else list_scenes(datapath_prefix, split or '')
        if not self.data_paths:
            raise ValueError('Point3DLoader: data_paths is empty')
        self.datapath_prefix = datapath_prefix
        self.voxel_size = voxel_size
        self.aug = aug
        self.loop = loop
        self.eval_all = eval_all
        self.input_color = input_color
        self.seed = seed
        self.num_classes = num_classes  # labels outside [0, num_classes) (other than 255) are an error
        self.epoch = 0
        self.voxelizer = Voxelizer(
            voxel_size=voxel_size, clip_bound=None, use_augmentation=True,
            scale_augmentation_bound=self.SCALE_AUGMENTATION_BOUND,
            rotation_augmentation_bound=self.ROTATION_AUGMENTATION_BOUND,
            translation_augmentation_ratio_bound=self.TRANSLATION_AUGMENTATION_RATIO_BOUND)
        self.prevoxel_transforms = t.Compose([t.ElasticDistortion(self.ELASTIC_DISTORT_PARAMS)])
        self.input_transforms = t.Compose([
            t.RandomHorizontalFlip(self.ROTATION_AXIS, is_temporal=False),
            t.ChromaticAutoContrast(),
            t.ChromaticTranslation(data_aug_color_trans_ratio),
            t.ChromaticJitter(data_aug_color_jitter_std),
            t.HueSaturationTranslation(data_aug_hue_max, data_aug_saturation_max),
        ])
        self._cache = {}
        if memcache_init:
            for i in range(len(self.data_paths)):
                self._cache[i] = self.read_scene(i)

    # ------------------------------------------------------------------ helpers
    def set_epoch(self, epoch):
        """Select the augmentation stream of ``epoch`` (call before iterating a new epoch)."""
        self.epoch = int(epoch)

    def item_rng(self, index_long):
        """The Generator of one item: a function of (seed, epoch, index) only."""
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([int(self.seed), self.epoch, int(index_long)])

    def scene_name(self, index):
        return scene_name(self.data_paths[scene_and_repeat(index, len(self.data_paths))[0]])

    def read_scene(self, index):
        """Scene ``index`` as read from its file, before any augmentation: (coords float32 [N,3], colours float64
        [N,3] in 0-255, labels int64 [N] with 255 = ignore)."""
        if index in self._cache:
            locs, colors, labels = self._cache[index]
            return locs.copy(), colors.copy(), labels.copy()
        # validates shapes, finite values, colour range and labels; -100 -> 255
        scene = load_scene_3d(self.data_paths[index], self.num_classes)
        colors = (scene.colors.astype(np.float64) + 1.0) * 127.5
        return scene.coords, colors, scene.labels

    def _finish(self, locs, feats, labels, rng):
        """Flip / colour augmentation, then upstream's tensors (coords with the batch column)."""
        if self.aug:
            locs, feats, labels = self.input_transforms(locs, feats, labels, rng=rng)
        coords = torch.from_numpy(np.ascontiguousarray(locs)).int()
        coords = torch.cat((torch.ones(coords.shape[0], 1, dtype=torch.int), coords), dim=1)
        if self.input_color:
            feats = torch.from_numpy(np.asarray(feats, np.float64)[:, :3]).float() / 127.5 - 1.0
        else:
            feats = torch.ones(coords.shape[0], 3)  # upstream: colour-free input by default
        labels = torch.from_numpy(np.asarray(labels).astype(np.int64))
        return coords, feats, labels

    # ------------------------------------------------------------------ Dataset API
    def __getitem__(self, index_long):
        index, _ = scene_and_repeat(index_long, len(self.data_paths))
        rng = self.item_rng(index_long)
        locs_in, feats_in, labels_in = self.read_scene(index)
        locs = self.prevoxel_transforms(locs_in, rng=rng) if self.aug else locs_in
        locs, feats, labels, inds_reconstruct = self.voxelizer.voxelize(locs, feats_in, labels_in, rng=rng)
        if self.eval_all:
            labels = labels_in  # evaluate on every original point, not on voxels
        coords, feats, labels = self._finish(locs, feats, labels, rng)
        if self.eval_all:
            return coords, feats, labels, torch.from_numpy(inds_reconstruct).long()
        return coords, feats, labels

    def __len__(self):
        return len(self.data_paths) * self.loop


__all__ = ['Point3DLoader', 'collation_fn', 'collation_fn_eval_all', 'repeat_item', 'scene_and_repeat']
