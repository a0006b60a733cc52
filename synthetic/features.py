"""The simulated 2D vision-language model: CLIP-like text embeddings of the class names, and fused 2D
features with the failure modes of real ones (a systematic confusion toward a related class, per-view noise
and wrong blobs, boundary blur, points no camera sees), calibrated so PLG lands where it does on real data."""
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy.spatial import cKDTree

from dataset.label_constants import DatasetInfo, dataset_info
from pipeline.pseudo_labels import pseudo_labels_from_features, scene_label_mask
from synthetic.geometry import Room, _seed

# Classes a 2D vision-language model confuses (docs/synthetic_data.md). Pairs get text similarity 0.8-0.9; CONFUSED_AS
# gives, per class, the class its fused feature leans toward and how far (the systematic confusion).
SCANNET_SIMILAR_PAIRS = (
    ('table', 'desk'), ('cabinet', 'otherfurniture'), ('wall', 'picture'), ('bookshelf', 'cabinet'),
    ('curtain', 'window'), ('sofa', 'chair'), ('curtain', 'shower curtain'), ('counter', 'table'),
    ('sink', 'toilet'), ('bathtub', 'toilet'), ('refrigerator', 'cabinet'), ('door', 'wall'),
    ('bed', 'sofa'), ('counter', 'cabinet'))


# Strength ~1 (the feature sits between the two text embeddings) only where the confusable class is
# absent from most scenes holding the class: there the scene-level mask resolves the confusion, so the
# pseudo labels are right in most scenes and ESS can learn the correction for the others. Classes that
# always co-occur (wall, floor, ceiling, chair with sofa...) get weaker confusion, which noise turns into
# occasional errors.
SCANNET_CONFUSED_AS = {  # class -> (confused class, strength relative to the true class' weight)
    'desk': ('table', 1.1), 'table': ('desk', 0.6), 'otherfurniture': ('cabinet', 0.9),
    'cabinet': ('otherfurniture', 0.6), 'picture': ('wall', 0.5), 'bookshelf': ('cabinet', 0.8),
    'curtain': ('window', 0.6), 'window': ('curtain', 0.5), 'sofa': ('chair', 0.5), 'chair': ('sofa', 0.4),
    'shower curtain': ('curtain', 1.1), 'counter': ('cabinet', 0.6), 'sink': ('toilet', 0.5),
    'bathtub': ('toilet', 0.5), 'refrigerator': ('cabinet', 0.6), 'door': ('wall', 0.5),
    'bed': ('sofa', 1.1), 'wall': ('picture', 0.1), 'toilet': ('sink', 0.4), 'floor': ('wall', 0.2)}


S3DIS_SIMILAR_PAIRS = (
    ('wall', 'column'), ('wall', 'beam'), ('wall', 'board'), ('column', 'beam'), ('ceiling', 'beam'),
    ('table', 'chair'), ('bookcase', 'clutter'), ('window', 'door'), ('window', 'board'), ('sofa', 'chair'))


S3DIS_CONFUSED_AS = {
    'column': ('wall', 0.6), 'beam': ('ceiling', 0.6), 'board': ('wall', 0.5), 'wall': ('column', 0.3),
    'table': ('chair', 0.5), 'chair': ('table', 0.5), 'bookcase': ('clutter', 0.6), 'clutter': ('bookcase', 0.5),
    'window': ('door', 0.7), 'door': ('window', 0.6), 'sofa': ('chair', 0.8), 'ceiling': ('beam', 0.2),
    'floor': ('wall', 0.2)}


@dataclass
class FeatureParams:
    """Weights of the fused-feature simulation (module docstring); calibrated so that PLG on the
    default data reaches 0.5-0.75 mIoU (tests/test_synthetic.py checks the band)."""
    true_weight: float = 1.0        # a: weight of the true class' text embedding
    confusion_scale: float = 1.0    # multiplies the per-class strengths b_c of CONFUSED_AS
    view_noise: float = 0.39        # g: std of a view's noise coefficients (per class, zero-sum)
    blob_probability: float = 0.6   # chance that a view mislabels one region ("blob")
    blob_strength: float = 1.0      # weight of the wrong class inside a blob
    blob_radius: Tuple[float, float] = (0.4, 1.0)  # metres
    boundary_weight: float = 0.6    # d at zero distance to another class; falls linearly to 0 at radius
    boundary_radius: float = 0.08   # metres
    isotropic_noise: float = 0.5    # e: norm of an isotropic Gaussian per point (off the class subspace too)


# Rendered frames add errors of their own (coarse 2D feature maps, OpenScene's loose 25 % depth test that
# lets a table top's feature reach the floor under it), so their view noise is lower for the same PLG band.
RENDERED_FEATURE_PARAMS = FeatureParams(view_noise=0.32)


def similar_pairs(info: DatasetInfo):
    return SCANNET_SIMILAR_PAIRS if info.name == 'scannet' else S3DIS_SIMILAR_PAIRS


def confused_as(info: DatasetInfo):
    """int [C] confused class per class and float [C] its strength (t_conf of docs/synthetic_data.md)."""
    table = SCANNET_CONFUSED_AS if info.name == 'scannet' else S3DIS_CONFUSED_AS
    conf = np.arange(info.num_classes)
    strength = np.zeros(info.num_classes)
    for name, (other, s) in table.items():
        conf[info.labels.index(name)] = info.labels.index(other)
        strength[info.labels.index(name)] = s
    return conf, strength


# other words for the classes: the demo's query phrases (its text space is synthetic, so no CLIP model can encode
# free text into it; these phrases are defined in it, next to their class)
SYNONYMS = {'sofa': ('couch', 'settee'), 'chair': ('seat', 'armchair'), 'table': ('dining table',),
            'cabinet': ('cupboard',), 'bookshelf': ('bookcase',), 'bookcase': ('bookshelf',), 'bed': ('bunk',),
            'counter': ('worktop',), 'toilet': ('loo',), 'sink': ('washbasin',), 'curtain': ('drape',),
            'bathtub': ('tub',), 'board': ('whiteboard',), 'window': ('pane',), 'door': ('doorway',)}


def make_query_embeddings(info: DatasetInfo, text_embeddings, seed=0):
    """(phrases, [P, D] unit rows): other words for the classes (``SYNONYMS``), each its class's text embedding
    with a small personal deviation (cosine ~0.95 to it), as CLIP puts synonyms close together."""
    rng = np.random.default_rng(_seed(seed, info.name, 'queries'))
    phrases, rows = [], []
    for c, name in enumerate(info.labels):
        for phrase in SYNONYMS.get(name, ()):
            noise = rng.normal(size=text_embeddings.shape[1])
            noise -= noise @ text_embeddings[c] * text_embeddings[c]   # orthogonal to the class direction
            row = text_embeddings[c] + 0.33 * noise / np.linalg.norm(noise)
            phrases.append(phrase)
            rows.append(row / np.linalg.norm(row))
    return phrases, np.asarray(rows, np.float32)


def make_text_embeddings(info: DatasetInfo, feat_dim=768, seed=0):
    """[C, D] unit rows with CLIP-like cosine similarities: similar pairs 0.80-0.90, the rest 0.60-0.75.

    A target Gram matrix is drawn in the bands (with a margin), made positive definite, factored into
    C-dim vectors and rotated into D dims by a random orthonormal basis.
    """
    rng = np.random.default_rng(_seed(seed, info.name, 'text'))
    C = info.num_classes
    if feat_dim < C:
        raise ValueError(f'feat_dim {feat_dim} must be at least the number of classes {C}')
    gram = rng.uniform(0.63, 0.72, (C, C))
    for a, b in similar_pairs(info):
        i, j = sorted((info.labels.index(a), info.labels.index(b)))
        gram[i, j] = rng.uniform(0.82, 0.88)  # upper triangle: mirrored below
    gram = np.triu(gram, 1)
    gram = gram + gram.T + np.eye(C)
    pair = np.zeros((C, C), bool)
    for a, b in similar_pairs(info):
        i, j = info.labels.index(a), info.labels.index(b)
        pair[i, j] = pair[j, i] = True
    lo_band, hi_band = np.where(pair, 0.81, 0.61), np.where(pair, 0.89, 0.74)
    np.fill_diagonal(lo_band, 1.0)
    np.fill_diagonal(hi_band, 1.0)
    # Dense clusters of similar classes (wall/column/beam/board) can make the targets indefinite:
    # alternate a projection onto positive-definite matrices with unit diagonal and a clip into the bands.
    for _ in range(100):
        w, v = np.linalg.eigh(gram)
        if w.min() >= 0.02:
            break
        gram = (v * np.maximum(w, 0.03)) @ v.T
        scale = 1.0 / np.sqrt(np.diag(gram))
        gram = np.clip(gram * scale[:, None] * scale[None, :], lo_band, hi_band)
    w, v = np.linalg.eigh(gram)
    if w.min() < 0.005:
        raise RuntimeError(f'text-similarity targets of {info.name} are not realisable (eigenvalue {w.min():.3f})')
    vecs = v * np.sqrt(w)                     # rows: C-dim vectors with Gram == gram
    basis, _ = np.linalg.qr(rng.normal(size=(feat_dim, C)))
    emb = vecs @ basis.T
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def simulate_fused_features(rng, room: Room, points, labels_feature, visibility, text_embeddings,
                            params: FeatureParams = FeatureParams()):
    """Fused 2D features of the points some camera sees (docs/synthetic_data.md; module docstring).

    points [N,3] clean xyz; labels_feature [N]: the class the 2D model would see per point;
    visibility bool [V, N]. Returns (feat float32 [M, D], mask_full bool [N]).
    """
    info = dataset_info(room.dataset)
    C, D = text_embeddings.shape
    N, V = len(points), visibility.shape[0]
    mask = visibility.any(0)
    conf, strength = confused_as(info)
    # per-view noise: zero-sum coefficients over classes, i.e. noise inside the text subspace that moves
    # scores between classes (a 2D model's errors are confusions between classes, not isotropic noise)
    z = rng.normal(0, params.view_noise, (V, C))
    z -= z.mean(1, keepdims=True)
    coef = np.zeros((N, C))
    seen = visibility.sum(0).astype(np.float64)
    coef += (visibility.T.astype(np.float64) @ z) / np.maximum(seen, 1)[:, None]
    # per-view blobs: a region the view calls a wrong class (present in the room: a plausible mistake)
    room_classes = np.unique(labels_feature)
    for v in range(V):
        if rng.random() >= params.blob_probability:
            continue
        vis_idx = np.flatnonzero(visibility[v])
        if not len(vis_idx):
            continue
        centre = points[vis_idx[int(rng.integers(len(vis_idx)))]]
        radius = rng.uniform(*params.blob_radius)
        k = int(rng.choice(room_classes))
        dist = np.linalg.norm(points[vis_idx] - centre, axis=1)
        w = np.clip(1.0 - dist / radius, 0.0, 1.0)
        coef[vis_idx, k] += params.blob_strength * w / seen[vis_idx]
    # the true class and its systematic confusion (the same in every scene: a linear shift ESS can undo)
    rows = np.arange(N)
    coef[rows, labels_feature] += params.true_weight
    coef[rows, conf[labels_feature]] += params.true_weight * params.confusion_scale * strength[labels_feature]
    # boundary blur: a 2D feature pixel mixes the neighbouring object
    tree = cKDTree(points)
    nn_dist, nn_idx = tree.query(points, k=16, distance_upper_bound=params.boundary_radius)
    valid = np.isfinite(nn_dist)
    nn_lab = np.where(valid, labels_feature[np.minimum(nn_idx, N - 1)], -1)
    other = valid & (nn_lab != labels_feature[:, None]) & (nn_lab >= 0)
    has = other.any(1)
    first = other.argmax(1)
    d_other = nn_dist[rows, first]
    w_ctx = np.where(has, params.boundary_weight * np.clip(1 - d_other / params.boundary_radius, 0, 1), 0.0)
    coef[rows[has], nn_lab[rows[has], first[has]]] += w_ctx[has]
    idx = np.flatnonzero(mask)
    feat = coef[idx].astype(np.float32) @ text_embeddings.astype(np.float32)
    iso = rng.standard_normal((len(idx), D), dtype=np.float32)
    feat += iso * np.float32(params.isotropic_noise / np.sqrt(D))
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    return feat, mask


def plg_pseudo_labels(feat, mask_full, labels, text_embeddings, num_classes):
    """Per-point PLG labels as the PLG stage computes them (scene-level mask from GT; points without a
    feature get the 'unlabeled' index num_classes)."""
    pred = np.full(len(mask_full), num_classes, np.int64)
    mask = np.asarray(mask_full, bool)
    if mask.any():
        lab, _ = pseudo_labels_from_features(np.asarray(feat, np.float32), text_embeddings,
                                             scene_label_mask(labels, num_classes))
        pred[mask] = lab
    return pred
