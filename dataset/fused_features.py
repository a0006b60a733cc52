"""Fused 2D features: the folder of a split, the files of a scene, and what they say about its points.

The one lookup every stage uses (the ESS datasets, the ESG loader, prediction / query / evaluation, the ESS
scripts); none of them builds a feature path itself.

- ``feature_root(train_root, val_root, split, val_split)``: the folder of a split: ``val_root``
  (``data_root_2d_fused_feature_val``) for the val split when it is set, else ``train_root``
  (``data_root_2d_fused_feature``).
- ``feature_files(feat_root, scene, scenes=(), required=True)``: a scene's files ``<scene>.pt`` and/or
  ``<scene>_<k>.pt`` (k ascending). The file-name rule is ``formats.fused_feature_files``, with the other
  on-disk layouts; this is the same function.
- ``scene_features(feat_root, scene, ...)``: every file of the scene merged (``formats.load_scene_fused_features``)
  -> (feat float16 [M, D] of the covered points in ascending point order, mask bool [N], files).
- ``point_features(feat_root, scene, num_points, ...)``: the same on every point -> (feat float32 [N, D], zeros
  where uncovered, mask bool [N]); ``expand_to_points`` is the scatter.
- ``coverage(feat_root, scene, num_points, ...)``: which points have a feature (bool [N], the mask
  ``point_features`` returns), or None when ``feat_root`` is empty or holds no file of the scene.

``scenes``: the names of every scene of the data set, all splits (``scene_names(data_root)``), so that the file
``room_0.pt`` of a scene 'room_0' is never taken for the k=0 file of a scene 'room' in a folder the splits
share.
"""
import torch

from dataset.formats import all_scene_names, fused_feature_files, load_scene_fused_features

feature_files = fused_feature_files
scene_names = all_scene_names


def feature_root(train_root, val_root, split, val_split):
    """The fused-feature folder of ``split``: ``val_root`` when ``split`` is ``val_split`` and ``val_root`` is set
    ('' or None: the val split's files are in ``train_root`` too), else ``train_root``."""
    if split == val_split and val_root:
        return val_root
    return train_root


def scene_features(feat_root, scene, num_points=None, feat_dim=None, scenes=()):
    """All fused-feature files of ``scene`` merged -> (feat float16 [M, D], mask bool [N], the files read).

    ``num_points`` / ``feat_dim``: checked against every file when given. A scene without files is a
    FileNotFoundError naming the folder."""
    files = feature_files(feat_root, scene, scenes)
    feat, mask = load_scene_fused_features(files, num_points=num_points, feat_dim=feat_dim)
    return feat, mask, files


def expand_to_points(feat, mask, dtype=torch.float32):
    """Features of the covered points (rows in ascending point order) on every point: [N, D] of ``dtype``, the
    row of point p being ``feat[number of covered points before p]`` where ``mask[p]``, zeros elsewhere."""
    full = torch.zeros(mask.shape[0], feat.shape[1], dtype=dtype)
    full[mask] = feat.to(dtype)
    return full


def point_features(feat_root, scene, num_points, feat_dim=None, scenes=()):
    """The fused 2D feature of every point of ``scene`` (all its files merged) -> (feat float32 [N, D], zeros where
    uncovered, mask bool [N])."""
    feat, mask, _ = scene_features(feat_root, scene, num_points=num_points, feat_dim=feat_dim, scenes=scenes)
    return expand_to_points(feat, mask), mask


def coverage(feat_root, scene, num_points, scenes=()):
    """bool [N] numpy: the points of ``scene`` that have a fused 2D feature (the union of its files' masks, as
    ``point_features``); None when ``feat_root`` is empty or holds no file of the scene."""
    if not feat_root:
        return None
    files = feature_files(feat_root, scene, scenes, required=False)
    if not files:
        return None
    _, mask = load_scene_fused_features(files, num_points=num_points)
    return mask.numpy().astype(bool)


__all__ = ['coverage', 'expand_to_points', 'feature_files', 'feature_root', 'point_features', 'scene_features',
           'scene_names']
