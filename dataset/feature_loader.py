"""Voxelised scenes with their fused 2D features, as OpenScene's ``FusedFeatureLoader``.

Feature files: ``<feat_root>/<scene>.pt`` and/or ``<scene>_<k>.pt`` (OpenScene's released train
features have k = 0..4, each a random subset of the visible points); one file is drawn uniformly per
load, as upstream. Every file is validated by ``formats.load_fused_features`` (mask length = point
count, feature rows = mask sum, feature dimension = ``feat_dim``). Scenes without any feature file are
skipped (upstream: some Matterport scenes have none); the number skipped is logged, and it is an
error if none remain.

Train split (``split == 'train'``): the whole scene is voxelised; ``mask[v]`` says whether the kept
(first) point of voxel v has a fused feature and ``feat_3d`` holds the features of those kept
points in voxel order (``feat_3d.shape[0] == mask.sum()``). As upstream, the elastic distortion is
not applied to the train-split points of this loader: upstream computes it and then voxelises the
undistorted points; we keep that behaviour (and skip the unused computation).
Other splits: features are scattered onto all N points (zeros where uncovered), every point is
voxelised, ``feat_3d`` is the kept point's row for every voxel [V, D] and ``mask`` the kept point's
coverage [V].

``collation_fn`` / ``collation_fn_eval_all`` are re-exported from ``dataset.point_loader`` (upstream imports them
from here).
"""
import torch

from dataset import fused_features
from dataset.formats import load_fused_features, scene_name
from dataset.point_loader import Point3DLoader, collation_fn, collation_fn_eval_all, scene_and_repeat  # noqa: F401
from util.logger import get_logger


def covered_voxel_features(feat, mask_full, kept_index):
    """Features of the voxels whose kept point is covered (OpenScene's train-split rule).

    Args: feat [M, D] (rows = covered points in ascending point order), mask_full bool [N],
        kept_index int [V] (point index kept per voxel).
    Returns: (feat_3d [mask.sum(), D] in voxel order, mask bool [V]).
    Upstream reaches the same rows through -1 fills and a cumulative sum; here the row of a covered
    point p is directly (number of covered points before p) = cumsum(mask_full)[p] - 1.
    """
    mask_full = torch.as_tensor(mask_full, dtype=torch.bool)
    kept_index = torch.as_tensor(kept_index, dtype=torch.long)
    row_of_point = torch.cumsum(mask_full.long(), 0) - 1
    mask = mask_full[kept_index]
    return feat[row_of_point[kept_index[mask]]], mask


class FusedFeatureLoader(Point3DLoader):
    """Voxelised scenes + fused 2D features (the 3D distillation targets).

    Returns per item (upstream's tuple):
        coords  int32 [V, 4] (column 0 = 1, collate puts the batch index there);
        feats   float32 [V, 3] input colours in [-1, 1] (all ones if not input_color);
        labels  int64 [V] (kept point's label; all N point labels with eval_all), 255 = ignore;
        feat_3d float16 [V_covered, D] (train split) or [V, D] (other splits, zeros where uncovered);
        mask    bool [V]: the voxel's kept point has a fused feature;
        inds_reconstruct int64 [N] (only with eval_all): voxel row of every original point.
    """

    has_fused_features = True  # every scene kept has a file in datapath_prefix_feat (scenes without are skipped)

    def __init__(self, datapath_prefix, datapath_prefix_feat, voxel_size=0.05, split='train', aug=False,
                 memcache_init=False, identifier=7791, loop=1, eval_all=False, input_color=False,
                 feat_dim=None, seed=None, num_classes=None, missing_scenes='warn'):
        super().__init__(datapath_prefix=datapath_prefix, voxel_size=voxel_size, split=split, aug=aug,
                         memcache_init=False, identifier=identifier, loop=loop, eval_all=eval_all,
                         input_color=input_color, seed=seed, num_classes=num_classes)
        self.feat_dim = feat_dim
        kept_paths, self.feature_files, skipped = [], [], []
        all_scenes = fused_features.scene_names(datapath_prefix)
        for path in self.data_paths:
            try:
                files = fused_features.feature_files(datapath_prefix_feat, scene_name(path), all_scenes)
            except FileNotFoundError:
                skipped.append(scene_name(path))
                continue
            kept_paths.append(path)
            self.feature_files.append(files)
        if not kept_paths:
            raise FileNotFoundError(
                f"no fused-feature files in '{datapath_prefix_feat}' for any of the {len(self.data_paths)} "
                f"scenes of '{datapath_prefix}/{split}': expected '<scene>.pt' or '<scene>_<k>.pt'")
        if skipped:
            listed = ', '.join(skipped[:5]) + (' ...' if len(skipped) > 5 else '')
            if missing_scenes == 'error':
                raise FileNotFoundError(
                    f"{len(skipped)} of {len(self.data_paths)} scenes of split '{split}' have no features in "
                    f"'{datapath_prefix_feat}': {listed}. Complete the stage that writes them (for ESS embeddings: "
                    f"ESS inference, run/ess_eval.sh), or set missing_scenes warn to go on without them (upstream "
                    f"skips them, e.g. Matterport rooms that no image sees)")
            get_logger().warning(
                f"FusedFeatureLoader: {len(skipped)} of {len(self.data_paths)} scenes of split '{split}' have no "
                f"fused features in '{datapath_prefix_feat}' and are skipped (missing_scenes warn): {listed}")
        self.data_paths = kept_paths
        self.skipped_scenes = skipped
        if memcache_init:
            for i in range(len(self.data_paths)):
                self._cache[i] = self.read_scene(i)

    def feature_file(self, index, rng):
        """One feature file of scene ``index``, drawn uniformly when there are several (as upstream)."""
        files = self.feature_files[index]
        return files[int(rng.integers(len(files)))] if len(files) > 1 else files[0]

    def __getitem__(self, index_long):
        index, _ = scene_and_repeat(index_long, len(self.data_paths))
        rng = self.item_rng(index_long)
        locs_in, feats_in, labels_in = self.read_scene(index)
        feat_path = self.feature_file(index, rng)
        feat, mask_full = load_fused_features(feat_path, num_points=locs_in.shape[0], feat_dim=self.feat_dim)

        if self.split == 'train':
            # upstream voxelises the undistorted points here (its elastic distortion result is unused)
            locs, feats, labels, inds_reconstruct, kept_index = self.voxelizer.voxelize(
                locs_in, feats_in, labels_in, return_ind=True, rng=rng)
            feat_3d, mask = covered_voxel_features(feat, mask_full, kept_index)
        else:
            locs = self.prevoxel_transforms(locs_in, rng=rng) if self.aug else locs_in
            feat_full = fused_features.expand_to_points(feat, mask_full, dtype=feat.dtype)
            locs, feats, labels, inds_reconstruct, kept_index = self.voxelizer.voxelize(
                locs, feats_in, labels_in, return_ind=True, rng=rng)
            kept = torch.from_numpy(kept_index)
            feat_3d, mask = feat_full[kept], mask_full[kept]

        if self.eval_all:
            labels = labels_in
        coords, feats, labels = self._finish(locs, feats, labels, rng)
        if self.eval_all:
            return coords, feats, labels, feat_3d, mask, torch.from_numpy(inds_reconstruct).long()
        return coords, feats, labels, feat_3d, mask
