"""OpenScene's on-disk formats (SPEC §3): the one place that knows file names and layouts.

- 3D scene   ``<root>/<split>/<scene>.pth``: tuple (coords [N,3], colors [N,3] in [-1,1], labels [N]);
  ScanNet files are named ``<scene>_vh_clean_2.pth``; label 255 or -100 = ignore.
- fused 2D features ``<feat_root>/<scene>.pt`` or ``<scene>_<k>.pt``:
  ``{'feat': float16 [M, D], 'mask_full': bool [N]}`` with ``M == mask_full.sum()``.
- pseudo labels ``<out>/<scene>_pred.npy`` (int [N]) and ``<out>/<scene>_prob_pred.npy`` (float [N]).
- text embeddings: ``.npy`` float [C, D], one L2-normalised row per class in label order.

Every reader validates shapes and raises an error that names the file, what was expected and what
was found. Every writer is atomic.
"""
import glob
import os
import re
from typing import NamedTuple, Optional

import numpy as np
import torch

from dataset.label_constants import IGNORE_LABEL
from util.io import atomic_np_save, atomic_torch_save, safe_torch_load

SCANNET_SUFFIX = '_vh_clean_2'


class FormatError(ValueError):
    """A data file does not hold what its format promises."""


class Scene3D(NamedTuple):
    coords: np.ndarray   # float32 [N, 3], metres
    colors: np.ndarray   # float32 [N, 3], in [-1, 1]
    labels: np.ndarray   # int64 [N], IGNORE_LABEL (255) where unannotated or absent
    has_labels: bool     # False when the file holds no label array (e.g. a test split)


# ----------------------------------------------------------------------------- scenes
def scene_name(path):
    """'.../scene0000_00_vh_clean_2.pth' -> 'scene0000_00'; '.../Area_5_office_1.pth' -> 'Area_5_office_1'."""
    name = os.path.basename(os.fspath(path))
    if name.endswith('.pth'):
        name = name[:-4]
    if name.endswith(SCANNET_SUFFIX):
        name = name[:-len(SCANNET_SUFFIX)]
    return name


def list_scenes(data_root, split):
    """Sorted ``.pth`` paths of one split; an error if the folder is missing or empty."""
    folder = os.path.join(data_root, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"3D data folder '{folder}' does not exist: expected "
                                f"<data_root>/{split}/<scene>.pth files (SPEC §3); check data_root")
    paths = sorted(glob.glob(os.path.join(folder, '*.pth')))
    if not paths:
        raise FileNotFoundError(f"3D data folder '{folder}' holds no .pth scene files")
    return paths


def load_scene_3d(path) -> Scene3D:
    data = safe_torch_load(path, '3D scene')
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise FormatError(f"3D scene '{path}': expected a tuple (coords, colors[, labels]), "
                          f"found {type(data).__name__}" + (f" of length {len(data)}" if hasattr(data, '__len__') else ''))
    coords = _as_numpy(data[0], path, 'coords')
    colors = _as_numpy(data[1], path, 'colors')
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise FormatError(f"3D scene '{path}': expected coords of shape [N, 3], found {list(coords.shape)}")
    n = coords.shape[0]
    if np.isscalar(data[1]) or colors.ndim == 0:  # OpenScene stores 0 for point clouds without colour
        colors = np.zeros((n, 3), np.float32)
    if colors.shape != (n, 3):
        raise FormatError(f"3D scene '{path}': expected colors of shape [{n}, 3], found {list(colors.shape)}")
    if n and (np.abs(colors).max() > 1.0 + 1e-3):
        raise FormatError(f"3D scene '{path}': expected colors in [-1, 1] (rgb / 127.5 - 1), found values up to "
                          f"{np.abs(colors).max():.1f}; convert 0-255 colours with rgb / 127.5 - 1")
    if len(data) == 3:
        labels = _as_numpy(data[2], path, 'labels')
        if labels.shape != (n,):
            raise FormatError(f"3D scene '{path}': expected labels of shape [{n}], found {list(labels.shape)}")
        labels = labels.astype(np.int64)
        labels[labels < 0] = IGNORE_LABEL  # -100 in some releases
        has_labels = True
    else:
        labels, has_labels = np.full(n, IGNORE_LABEL, np.int64), False
    return Scene3D(coords.astype(np.float32), colors.astype(np.float32), labels, has_labels)


def save_scene_3d(path, coords, colors, labels):
    """Write a scene exactly as OpenScene's preprocessing does: a tuple of numpy arrays."""
    coords = np.ascontiguousarray(coords, dtype=np.float32)
    colors = np.ascontiguousarray(colors, dtype=np.float32)
    labels = np.ascontiguousarray(labels)
    assert coords.shape[0] == colors.shape[0] == labels.shape[0], 'coords, colors and labels differ in length'
    atomic_torch_save((coords, colors, labels), path)


def _as_numpy(x, path, what):
    if isinstance(x, torch.Tensor):
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    if np.isscalar(x):
        return np.asarray(x)
    raise FormatError(f"3D scene '{path}': expected {what} as a numpy array, found {type(x).__name__}")


# ----------------------------------------------------------------------------- fused features
# Embedding width of each 2D feature extractor: OpenSeg 768 (CLIP ViT-L/14@336px's text space), LSeg and
# CLIP ViT-B 512. Upstream matches by substring ('lseg' in args.feature_2d_extractor), so 'lseg_xyz' works.
FEATURE_DIMS = {'openseg': 768, 'lseg': 512, 'clip': 512}


def feature_dim(feature_2d_extractor):
    """Feature / text-embedding dimension of a ``feature_2d_extractor`` config value."""
    for name, dim in FEATURE_DIMS.items():
        if name in str(feature_2d_extractor).lower():
            return dim
    raise ValueError(f"unknown feature_2d_extractor '{feature_2d_extractor}': expected a name containing one of "
                     f"{sorted(FEATURE_DIMS)}")


def fused_feature_files(feat_root, scene):
    """Fused-feature files of one scene: ``<scene>.pt`` and/or ``<scene>_<k>.pt`` (k ascending)."""
    paths = []
    single = os.path.join(feat_root, scene + '.pt')
    if os.path.isfile(single):
        paths.append(single)
    pattern = re.compile(re.escape(scene) + r'_(\d+)\.pt$')
    numbered = []
    for p in glob.glob(os.path.join(glob.escape(feat_root), glob.escape(scene) + '_*.pt')):
        m = pattern.search(os.path.basename(p))
        if m:
            numbered.append((int(m.group(1)), p))
    paths += [p for _, p in sorted(numbered)]
    if not paths:
        raise FileNotFoundError(f"no fused features for scene '{scene}' in '{feat_root}': expected "
                                f"'{scene}.pt' or '{scene}_<k>.pt' (SPEC §3); check data_root_2d_fused_feature")
    return paths


def load_fused_features(path, num_points: Optional[int] = None, feat_dim: Optional[int] = None):
    """Read one fused-feature file -> (feat float16 tensor [M, D], mask_full bool tensor [N])."""
    data = safe_torch_load(path, 'fused features')
    if not isinstance(data, dict) or 'feat' not in data or 'mask_full' not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise FormatError(f"fused features '{path}': expected a dict with keys 'feat' and 'mask_full', found {found}")
    feat, mask = data['feat'], data['mask_full']
    feat = torch.from_numpy(feat) if isinstance(feat, np.ndarray) else feat
    mask = torch.from_numpy(mask) if isinstance(mask, np.ndarray) else mask
    if feat.dim() == 3 and feat.shape[-1] == 1:  # some releases keep a trailing singleton axis
        feat = feat[..., 0]
    if feat.dim() != 2:
        raise FormatError(f"fused features '{path}': expected 'feat' of shape [M, D], found {list(feat.shape)}")
    if mask.dim() != 1:
        raise FormatError(f"fused features '{path}': expected 'mask_full' of shape [N], found {list(mask.shape)}")
    mask = mask.bool()
    if num_points is not None and mask.shape[0] != num_points:
        raise FormatError(f"fused features '{path}': 'mask_full' has {mask.shape[0]} entries but the 3D scene "
                          f"has {num_points} points; the features belong to another scene or version")
    covered = int(mask.sum())
    if feat.shape[0] != covered:
        raise FormatError(f"fused features '{path}': 'feat' has {feat.shape[0]} rows but 'mask_full' marks "
                          f"{covered} points; expected one row per marked point")
    if feat_dim is not None and feat.shape[1] != feat_dim:
        raise FormatError(f"fused features '{path}': expected feature dimension {feat_dim} (from the config), "
                          f"found {feat.shape[1]}; check feature_2d_extractor / the feature folder")
    return feat.half(), mask


def save_fused_features(path, feat, mask_full, source=None):
    """Write ``{'feat': float16 [M, D], 'mask_full': bool [N]}`` (rows in ascending point order).

    ``source`` (a string, optional) is stored beside them under 'source' to name what produced the
    features (e.g. the ESS adapter's weights), so a rerun can tell a stale file from a finished one;
    readers of the format ignore it."""
    feat = torch.as_tensor(feat).detach().cpu().half().contiguous()
    mask_full = torch.as_tensor(mask_full).detach().cpu().bool()
    if feat.shape[0] != int(mask_full.sum()):
        raise ValueError(f"cannot write '{path}': {feat.shape[0]} feature rows for {int(mask_full.sum())} masked points")
    data = {'feat': feat, 'mask_full': mask_full}
    if source is not None:
        data['source'] = str(source)
    atomic_torch_save(data, path)


def fused_feature_source(path):
    """The 'source' string a fused-feature file was written with, or None (OpenScene's files have none)."""
    data = safe_torch_load(path, 'fused features')
    return data.get('source') if isinstance(data, dict) else None


# ----------------------------------------------------------------------------- pseudo labels
def pseudo_label_paths(folder, scene):
    return (os.path.join(folder, f'{scene}_pred.npy'), os.path.join(folder, f'{scene}_prob_pred.npy'))


def save_pseudo_labels(folder, scene, labels, probs):
    label_path, prob_path = pseudo_label_paths(folder, scene)
    atomic_np_save(prob_path, np.asarray(probs, dtype=np.float32))
    atomic_np_save(label_path, np.asarray(labels, dtype=np.int64))  # written last: marks the scene done


def load_pseudo_labels(folder, scene, num_points: Optional[int] = None, with_probs=False):
    label_path, prob_path = pseudo_label_paths(folder, scene)
    labels = _load_npy(label_path, 'pseudo labels', "run pseudo-label generation (PLG) first, or check pseudo_label_path")
    if labels.ndim != 1 or (num_points is not None and labels.shape[0] != num_points):
        raise FormatError(f"pseudo labels '{label_path}': expected shape [{num_points if num_points is not None else 'N'}] "
                          f"(one label per point of the 3D scene), found {list(labels.shape)}")
    labels = labels.astype(np.int64)
    if not with_probs:
        return labels
    probs = _load_npy(prob_path, 'pseudo-label probabilities', 'rerun PLG with overwrite True')
    if probs.shape != labels.shape:
        raise FormatError(f"pseudo-label probabilities '{prob_path}': expected shape {list(labels.shape)}, found {list(probs.shape)}")
    return labels, probs.astype(np.float32)


def _load_npy(path, what, hint):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist: {hint}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise FormatError(f"cannot read {what} '{path}': {err}") from err


# ----------------------------------------------------------------------------- text embeddings
def load_text_embeddings(path, num_classes: Optional[int] = None, feat_dim: Optional[int] = None):
    """Read a [C, D] text-embedding file (rows L2-normalised on load) as float32 numpy."""
    emb = _load_npy(path, 'text embeddings', 'compute them with util/text_embeddings.py or give text_embeddings_path')
    if emb.ndim != 2:
        raise FormatError(f"text embeddings '{path}': expected shape [C, D], found {list(emb.shape)}")
    if num_classes is not None and emb.shape[0] != num_classes:
        raise FormatError(f"text embeddings '{path}': expected {num_classes} rows (one per class), found {emb.shape[0]}")
    if feat_dim is not None and emb.shape[1] != feat_dim:
        raise FormatError(f"text embeddings '{path}': expected dimension {feat_dim}, found {emb.shape[1]}")
    emb = emb.astype(np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def save_text_embeddings(path, emb):
    emb = np.asarray(emb, dtype=np.float32)
    atomic_np_save(path, emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12))
