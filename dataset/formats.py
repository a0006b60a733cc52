"""OpenScene's on-disk formats: the one place that knows file names and layouts.

- 3D scene   ``<root>/<split>/<scene>.pth``: tuple (coords [N,3], colors [N,3] in [-1,1], labels [N]);
  ScanNet files are named ``<scene>_vh_clean_2.pth``; label 255 or -100 = ignore.
- fused 2D features ``<feat_root>/<scene>.pt`` or ``<scene>_<k>.pt``:
  ``{'feat': float16 [M, D], 'mask_full': bool [N]}`` with ``M == mask_full.sum()``.
- pseudo labels ``<out>/<scene>_pred.npy`` (int [N]) and ``<out>/<scene>_prob_pred.npy`` (float [N]).
- text embeddings: ``.npy`` float [C, D], one L2-normalised row per class in label order.

Every reader validates shapes and raises an error that names the file, what was expected and what
was found. Every writer is atomic.
"""
import os
import re
from typing import NamedTuple, Optional

import numpy as np
import torch

from dataset.label_constants import IGNORE_LABEL
from util.io import atomic_np_save, atomic_torch_save, safe_np_load, safe_torch_load

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


def integer_labels(labels, where):
    """Labels as int64; a float array is accepted only when every value is a whole number (class ids written as
    floats), else a FormatError: truncating 2.5 to class 2 would train and score the wrong class silently."""
    labels = np.asarray(labels)
    if labels.dtype.kind == 'f':
        fractional = labels != np.round(labels)
        if fractional.any():
            raise FormatError(f"{where}: labels must be whole class ids, found {int(fractional.sum())} fractional "
                              f"values (e.g. {float(labels[fractional][0]):g}); was the file written from a "
                              f"probability or a mean instead of a class?")
    elif labels.dtype.kind not in 'iub':
        raise FormatError(f"{where}: labels must be integer class ids, found dtype {labels.dtype}")
    return labels.astype(np.int64)


def list_scenes(data_root, split):
    """Sorted ``.pth`` paths of one split; an error if the folder is missing or empty.

    The folder is listed, not globbed, so folder names with glob characters (``[v2]``) work."""
    folder = os.path.join(data_root, split)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"3D data folder '{folder}' is a file, expected a folder of <scene>.pth files")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"3D data folder '{folder}' does not exist: expected "
                                f"<data_root>/{split}/<scene>.pth files; check data_root")
    names = sorted(n for n in os.listdir(folder) if n.endswith('.pth'))
    not_files = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if not_files:  # a scene no stage could read would be dropped from every count
        raise FormatError(f"3D data folder '{folder}': {', '.join(repr(n) for n in not_files[:3])}"
                          f"{' ...' if len(not_files) > 3 else ''} is not a file, expected <scene>.pth scene files; "
                          f"move it out of the folder")
    paths = [os.path.join(folder, n) for n in names]
    if not paths:
        raise FileNotFoundError(f"3D data folder '{folder}' holds no .pth scene files")
    return paths


def all_scene_names(data_root):
    """Names of the scenes of every split under ``data_root`` (to tell ``room_0.pt`` of scene 'room_0' from
    the k=0 file of scene 'room' in a fused-feature folder shared by the splits)."""
    names = set()
    if os.path.isdir(data_root):
        for split in os.listdir(data_root):
            folder = os.path.join(data_root, split)
            if os.path.isdir(folder):
                names.update(scene_name(n) for n in os.listdir(folder) if n.endswith('.pth'))
    return names


def load_scene_3d(path, num_classes: Optional[int] = None) -> Scene3D:
    """Read and check a 3D scene: shapes, finite coordinates and colours, colours in [-1, 1] and, when
    ``num_classes`` is given, labels in ``[0, num_classes)`` or ignore (255 / negative)."""
    data = safe_torch_load(path, '3D scene')
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise FormatError(f"3D scene '{path}': expected a tuple (coords, colors[, labels]), "
                          f"found {type(data).__name__}"
                          + (f" of length {len(data)}" if hasattr(data, '__len__') else ''))
    coords = _as_numpy(data[0], path, 'coords')
    colors = _as_numpy(data[1], path, 'colors')
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise FormatError(f"3D scene '{path}': expected coords of shape [N, 3], found {list(coords.shape)}")
    n = coords.shape[0]
    if n == 0:
        raise FormatError(f"3D scene '{path}' has no points (0 x 3 coords): it cannot be voxelised or scored; "
                          f"re-export it or move it out of the split")
    if np.isscalar(data[1]) or colors.ndim == 0:  # OpenScene stores 0 for point clouds without colour
        colors = np.zeros((n, 3), np.float32)
    if colors.shape != (n, 3):
        raise FormatError(f"3D scene '{path}': expected colors of shape [{n}, 3], found {list(colors.shape)}")
    check_finite(coords, f"3D scene '{path}'", 'coords')
    check_finite(colors, f"3D scene '{path}'", 'colors')
    if np.abs(colors).max() > 1.0 + 1e-3:
        raise FormatError(f"3D scene '{path}': expected colors in [-1, 1] (rgb / 127.5 - 1), found values up to "
                          f"{np.abs(colors).max():.1f}; convert 0-255 colours with rgb / 127.5 - 1")
    if len(data) == 3:
        labels = _as_numpy(data[2], path, 'labels')
        if labels.shape != (n,):
            raise FormatError(f"3D scene '{path}': expected labels of shape [{n}], found {list(labels.shape)}")
        check_finite(labels, f"3D scene '{path}'", 'labels')
        labels = integer_labels(labels, f"3D scene '{path}'")
        labels[labels < 0] = IGNORE_LABEL  # -100 in some releases
        has_labels = True
        if num_classes is not None:
            check_labels(labels, num_classes, f"3D scene '{path}'")
    else:
        labels, has_labels = np.full(n, IGNORE_LABEL, np.int64), False
    return Scene3D(coords.astype(np.float32), colors.astype(np.float32), labels, has_labels)


def check_finite(array, where, what):
    """Raise a FormatError naming ``where`` if ``array`` holds NaN or Inf (where they enter, not epochs later)."""
    array = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if array.dtype.kind != 'f':
        return
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(1)) if array.ndim > 1 else np.flatnonzero(bad)
        raise FormatError(f"{where}: {what} hold {int(bad.sum())} non-finite values (NaN or Inf) in {rows.size} "
                          f"rows, e.g. row {int(rows[0])}; fix or regenerate the file")


def check_labels(labels, num_classes, where):
    """Labels must be class ids ``0..num_classes-1`` or IGNORE_LABEL."""
    bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = np.unique(labels[bad])
        raise FormatError(f"{where}: {int(bad.sum())} labels are outside the label set (0..{num_classes - 1}, "
                          f"{IGNORE_LABEL} = ignore), e.g. {values[:5].tolist()}; was the scene preprocessed for "
                          f"another label set (labelset)?")


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
_NUMBERED = re.compile(r'(.+)_(0|[1-9][0-9]*)')  # <stem>_<k>, k without leading zeros as OpenScene writes it
_FEATURE_INDEX = {}


def _feature_index(feat_root):
    """{stem: [(k, file name)]} and the set of all names of a fused-feature folder, cached until the
    folder changes (a ScanNet folder holds ~6,000 files, looked up once per scene)."""
    key = (os.path.abspath(feat_root), os.stat(feat_root).st_mtime_ns)
    if key not in _FEATURE_INDEX:
        names = {n for n in os.listdir(feat_root) if n.endswith('.pt')}
        numbered = {}
        for name in names:
            m = _NUMBERED.fullmatch(name[:-3])
            if m:
                numbered.setdefault(m.group(1), []).append((int(m.group(2)), name))
        _FEATURE_INDEX.clear()  # one folder at a time is enough
        _FEATURE_INDEX[key] = (names, numbered)
    return _FEATURE_INDEX[key]


def fused_feature_files(feat_root, scene, scenes=(), required=True):
    """Fused-feature files of one scene: ``<scene>.pt`` and/or ``<scene>_<k>.pt`` (k ascending).

    Names are matched exactly (the folder is listed, not globbed). ``scenes``: the names of all scenes
    whose features may share the folder; a file ``<scene>_<k>.pt`` whose stem is itself one of them
    belongs to that scene (scene 'room' never reads 'room_0.pt' of scene 'room_0'). ``required=False``: no
    files (or no folder) gives [] instead of an error.
    """
    if not required and not os.path.isdir(feat_root):
        return []
    if not os.path.isdir(feat_root):
        raise FileNotFoundError(f"fused-feature folder '{feat_root}' does not exist; check data_root_2d_fused_feature")
    names, numbered = _feature_index(feat_root)
    paths = [os.path.join(feat_root, scene + '.pt')] if scene + '.pt' in names else []
    paths += [os.path.join(feat_root, name) for _, name in sorted(numbered.get(scene, ()))
              if name[:-3] not in scenes]
    if not paths and required:
        raise FileNotFoundError(f"no fused features for scene '{scene}' in '{feat_root}': expected "
                                f"'{scene}.pt' or '{scene}_<k>.pt'; check data_root_2d_fused_feature")
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
    feat = feat.half()
    check_finite(feat, f"fused features '{path}'", "'feat' rows")  # float16: also catches overflow to Inf
    return feat, mask


# two files of one scene store the same fused feature of a point in float16: they agree to float16 rounding
MERGE_RTOL, MERGE_ATOL = 2 ** -9, 2 ** -14


def load_scene_fused_features(paths, num_points: Optional[int] = None, feat_dim: Optional[int] = None):
    """All fused-feature files of one scene merged -> (feat float16 [M, D], mask_full bool [N]).

    OpenScene's released train features are five files per scene, each a random subset of about 20,000 of
    the points some view sees; the union of their masks is what is known about the scene. Where two files
    cover the same point their features must agree (to float16 rounding): files of two different fusions
    are an error naming both, not a silent mix. One file is returned as it is.
    """
    paths = list(paths)
    feat, mask = load_fused_features(paths[0], num_points=num_points, feat_dim=feat_dim)
    if len(paths) == 1:
        return feat, mask
    full = torch.zeros(mask.shape[0], feat.shape[1], dtype=torch.float16)
    owner = torch.full((mask.shape[0],), -1, dtype=torch.long)  # which file gave a point its feature
    for k, path in enumerate(paths):
        if k:
            feat, mask = load_fused_features(path, num_points=owner.shape[0], feat_dim=full.shape[1])
        rows = mask.nonzero()[:, 0]
        seen = owner[rows] >= 0
        if seen.any():
            a, b = full[rows[seen]].float(), feat[seen].float()
            bad = ~torch.isclose(a, b, rtol=MERGE_RTOL, atol=MERGE_ATOL).all(1)
            if bad.any():
                point = int(rows[seen][bad][0])
                raise FormatError(f"fused features '{paths[int(owner[point])]}' and '{path}' of the same scene "
                                  f"disagree at {int(bad.sum())} of the {int(seen.sum())} points both cover "
                                  f"(e.g. point {point}): they come from different fusions; keep the files of one "
                                  f"fusion in the folder")
        full[rows] = feat
        owner[rows] = k
    mask = owner >= 0
    return full[mask], mask


def save_fused_features(path, feat, mask_full):
    """Write ``{'feat': float16 [M, D], 'mask_full': bool [N]}`` (rows in ascending point order): exactly the
    two keys of OpenScene's files, so its loader reads them (it treats more keys as a legacy format)."""
    feat = torch.as_tensor(feat).detach().cpu().half().contiguous()
    mask_full = torch.as_tensor(mask_full).detach().cpu().bool()
    if feat.shape[0] != int(mask_full.sum()):
        raise ValueError(f"cannot write '{path}': {feat.shape[0]} feature rows for "
                         f"{int(mask_full.sum())} masked points")
    check_finite(feat, f"cannot write '{path}'", 'features')
    atomic_torch_save({'feat': feat, 'mask_full': mask_full}, path)


# ----------------------------------------------------------------------------- pseudo labels
def pseudo_label_paths(folder, scene):
    return (os.path.join(folder, f'{scene}_pred.npy'), os.path.join(folder, f'{scene}_prob_pred.npy'))


def save_pseudo_labels(folder, scene, labels, probs):
    label_path, prob_path = pseudo_label_paths(folder, scene)
    atomic_np_save(prob_path, np.asarray(probs, dtype=np.float32))
    atomic_np_save(label_path, np.asarray(labels, dtype=np.int64))  # written last: marks the scene done


def load_pseudo_labels(folder, scene, num_points: Optional[int] = None, with_probs=False):
    label_path, prob_path = pseudo_label_paths(folder, scene)
    labels = _load_npy(label_path, 'pseudo labels',
                       "run pseudo-label generation (PLG) first, or check pseudo_label_path")
    if labels.ndim != 1 or (num_points is not None and labels.shape[0] != num_points):
        raise FormatError(f"pseudo labels '{label_path}': expected shape "
                          f"[{num_points if num_points is not None else 'N'}] "
                          f"(one label per point of the 3D scene), found {list(labels.shape)}")
    labels = integer_labels(labels, f"pseudo labels '{label_path}'")
    if not with_probs:
        return labels
    probs = _load_npy(prob_path, 'pseudo-label probabilities', 'rerun PLG with overwrite True')
    if probs.shape != labels.shape:
        raise FormatError(f"pseudo-label probabilities '{prob_path}': expected shape {list(labels.shape)}, "
                          f"found {list(probs.shape)}")
    return labels, probs.astype(np.float32)


def _load_npy(path, what, hint):
    return safe_np_load(path, what, hint)


# ----------------------------------------------------------------------------- text embeddings
def load_text_embeddings(path, num_classes: Optional[int] = None, feat_dim: Optional[int] = None):
    """Read a [C, D] text-embedding file (rows L2-normalised on load) as float32 numpy."""
    emb = _load_npy(path, 'text embeddings',
                    'compute them with pipeline/text_embeddings.py or give text_embeddings_path')
    if emb.ndim != 2:
        raise FormatError(f"text embeddings '{path}': expected shape [C, D], found {list(emb.shape)}")
    if num_classes is not None and emb.shape[0] != num_classes:
        raise FormatError(f"text embeddings '{path}': expected {num_classes} rows (one per class), "
                          f"found {emb.shape[0]}")
    if feat_dim is not None and emb.shape[1] != feat_dim:
        raise FormatError(f"text embeddings '{path}': expected dimension {feat_dim}, found {emb.shape[1]}")
    return normalise_text_embeddings(emb, f"text embeddings '{path}'")


def normalise_text_embeddings(emb, where):
    """Rows L2-normalised, after checking that every row is finite and not zero (a zero row would score 0
    against every feature and silently never win)."""
    emb = np.asarray(emb, dtype=np.float32)
    check_finite(emb, where, 'embeddings')
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] < 1e-8)
    if zero.size:
        raise FormatError(f"{where}: rows {zero[:5].tolist()} are zero vectors; every class needs an embedding")
    return emb / norms


def save_text_embeddings(path, emb):
    atomic_np_save(path, normalise_text_embeddings(emb, f"cannot write text embeddings '{path}'"))
