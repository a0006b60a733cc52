"""The PLG formula (paper §3.2; docs/method.md), shared by the PLG script, the synthetic-data calibration
and the tests.

    p = softmax(f_fused @ T^T)          T: L2-normalised text embeddings, no temperature (as upstream)
    p[:, c] = -999  for every class c outside the scene-level label   (after the softmax, as upstream)
    pseudo label = argmax p,   confidence = max p

``plg_scene`` applies it to one scene as upstream does: per voxel, to the voxel's first point, copied to all of
its points (``per_point`` scores every covered point instead). ``plg_scene_refined`` (not the paper's, PLG's
``plg_refine superpoints``) then pools the scores over superpoints (``refine_with_superpoints``; docs/method.md,
"PLG refinement").
"""
import numpy as np
import torch

from dataset.voxelizer import sparse_quantize

MASKED_SCORE = -999.0  # upstream's value for classes outside the scene-level label


def scene_label_mask(labels, num_classes):
    """Scene-level label as a bool [C] mask: the classes present among the GT labels (upstream)."""
    labels = np.asarray(labels).ravel()
    present = np.unique(labels[(labels >= 0) & (labels < num_classes)])
    mask = np.zeros(num_classes, dtype=bool)
    mask[present] = True
    return mask


@torch.no_grad()
def pseudo_labels_from_features(fused_features, text_embeddings, scene_mask=None, chunk_size=65536,
                                device='cpu'):
    """Pseudo labels and confidences of fused 2D features.

    fused_features [M, D] (any float dtype), text_embeddings [C, D] (L2-normalised rows),
    scene_mask bool [C] or None (no scene-level mask). Returns (labels int64 [M], confidence float32 [M])
    as numpy arrays; an empty scene mask (a scene without any labelled class) gives every row the
    'unlabeled' index C with confidence 0 (upstream would return class 0 with confidence -999). Processed in chunks
    of rows so that a 500k-point scene never materialises more than ``chunk_size x C`` scores.
    """
    device = torch.device(device)
    feats = torch.as_tensor(fused_features)
    text = torch.as_tensor(text_embeddings, dtype=torch.float32, device=device)
    if feats.dim() != 2 or feats.shape[1] != text.shape[1]:
        raise ValueError(f'fused features of shape {list(feats.shape)} do not match text embeddings '
                         f'of dimension {text.shape[1]}')
    keep = None
    if scene_mask is not None:
        keep = torch.as_tensor(np.asarray(scene_mask), dtype=torch.bool, device=device)
        if keep.shape[0] != text.shape[0]:
            raise ValueError(f'scene-level mask has {keep.shape[0]} classes, text embeddings {text.shape[0]}')
    if keep is not None and not bool(keep.any()):
        return np.full(feats.shape[0], text.shape[0], np.int64), np.zeros(feats.shape[0], np.float32)
    labels = torch.empty(feats.shape[0], dtype=torch.int64)
    confidence = torch.empty(feats.shape[0], dtype=torch.float32)
    for start in range(0, feats.shape[0], chunk_size):
        chunk = feats[start:start + chunk_size].to(device=device, dtype=torch.float32)
        prob = torch.softmax(chunk @ text.t(), dim=1)
        if keep is not None:
            prob[:, ~keep] = MASKED_SCORE
        best, arg = prob.max(dim=1)
        labels[start:start + chunk_size] = arg.cpu()
        confidence[start:start + chunk_size] = best.cpu()
    return labels.numpy(), confidence.numpy()


def plg_scene(coords, feat, mask_full, text_embeddings, scene_mask, *, voxel_size=0.02, per_point=False,
              chunk_size=65536, device='cpu'):
    """Pseudo labels of one scene -> (labels int64 [N], probs float32 [N]); unlabeled = C, prob 0.

    coords [N, 3]; feat [M, D] rows of the covered points (ascending index); mask_full bool [N].
    """
    num_classes = text_embeddings.shape[0]
    mask_full = np.asarray(mask_full, dtype=bool)
    n = mask_full.shape[0]
    labels = np.full(n, num_classes, dtype=np.int64)
    probs = np.zeros(n, dtype=np.float32)
    covered_idx = np.flatnonzero(mask_full)
    if per_point:
        lab, conf = pseudo_labels_from_features(feat, text_embeddings, scene_mask, chunk_size, device)
        labels[covered_idx], probs[covered_idx] = lab, conf
        return labels, probs
    # voxel-representative scoring (upstream): label of a voxel = label of its first point, copied
    # to all its points; the voxel is unlabeled when that representative has no 2D feature.
    _, kept, inverse = sparse_quantize(np.asarray(coords, dtype=np.float64), voxel_size)
    row_of_point = np.full(n, -1, dtype=np.int64)
    row_of_point[covered_idx] = np.arange(covered_idx.shape[0])
    rep_rows = row_of_point[kept]                  # feature row of each voxel's representative, -1 if none
    scored = rep_rows >= 0
    vox_labels = np.full(kept.shape[0], num_classes, dtype=np.int64)
    vox_probs = np.zeros(kept.shape[0], dtype=np.float32)
    rows = torch.from_numpy(rep_rows[scored])
    lab, conf = pseudo_labels_from_features(torch.as_tensor(feat)[rows], text_embeddings, scene_mask,
                                            chunk_size, device)
    vox_labels[scored], vox_probs[scored] = lab, conf
    return vox_labels[inverse], vox_probs[inverse]


# ----------------------------------------------------------------------------- superpoint refinement
REFINE_POOLS = ('mean', 'vote')


def plg_point_rows(coords, mask_full, *, voxel_size=0.02, per_point=False):
    """The feature row whose scores label each point under ``plg_scene``'s rule -> int64 [N], -1 = unlabeled.

    ``per_point``: a covered point's own row; else (upstream) the row of its voxel's first point, -1 when that
    point has no 2D feature."""
    mask_full = np.asarray(mask_full, dtype=bool)
    row_of_point = np.full(mask_full.shape[0], -1, dtype=np.int64)
    row_of_point[mask_full] = np.arange(int(mask_full.sum()))
    if per_point:
        return row_of_point
    _, kept, inverse = sparse_quantize(np.asarray(coords, dtype=np.float64), voxel_size)
    return row_of_point[kept][inverse]


@torch.no_grad()
def refine_with_superpoints(point_rows, fused_features, text_embeddings, scene_mask, superpoints, *, pool='mean',
                            spread=False, min_coverage=0.5, chunk_size=65536, device='cpu', return_unrefined=False):
    """Superpoint-refined pseudo labels (docs/method.md, "PLG refinement") -> (labels int64 [N], probs float32 [N]).

    ``point_rows`` int [N]: the feature row that scores each point, -1 for an unlabeled point (``plg_point_rows``);
    ``fused_features`` [M, D]; ``superpoints`` int [N]: a segment id per point. With ``p_i`` the post-mask
    probabilities of point i (``pseudo_labels_from_features``; -999 outside the scene tags) and ``S_cov`` the
    labelled points of superpoint S, every point of ``S_cov`` gets

        pool 'mean':  argmax_c  mean_{i in S_cov} p_i[c]
        pool 'vote':  argmax_c  sum_{i in S_cov} conf_i [label_i = c]      (conf_i = max_c p_i[c])

    and the probability ``mean_{i in S_cov} p_i[label]`` (the pooled probability of the label it got). Unlabeled
    points keep 'unlabeled' (C) and probability 0, unless ``spread``: then the unlabeled points of a superpoint whose
    labelled share ``|S_cov| / |S|`` is at least ``min_coverage`` get its label too. A superpoint of one point, or
    one whose points all have one label, changes nothing but the probability of a point scored with other points.
    ``return_unrefined``: also return the labels before the refinement (``plg_scene``'s), a third array.
    """
    point_rows = np.asarray(point_rows, dtype=np.int64)
    superpoints = np.asarray(superpoints).ravel()
    n = point_rows.shape[0]
    if superpoints.shape[0] != n:
        raise ValueError(f'{superpoints.shape[0]} superpoint ids for a scene of {n} points')
    if pool not in REFINE_POOLS:
        raise ValueError(f"pool must be one of {', '.join(REFINE_POOLS)}, found {pool!r}")
    device = torch.device(device)
    text = torch.as_tensor(text_embeddings, dtype=torch.float32, device=device)
    num_classes = text.shape[0]
    labels = np.full(n, num_classes, dtype=np.int64)
    probs = np.zeros(n, dtype=np.float32)
    keep = None if scene_mask is None else torch.as_tensor(np.asarray(scene_mask), dtype=torch.bool, device=device)
    covered = np.flatnonzero(point_rows >= 0)
    if not covered.size or (keep is not None and not bool(keep.any())):
        return (labels, probs, labels.copy()) if return_unrefined else (labels, probs)
    _, seg = np.unique(superpoints, return_inverse=True)
    seg = seg.astype(np.int64).ravel()
    num_seg = int(seg.max()) + 1
    # the (superpoint, feature row) pairs of the labelled points, with their multiplicity (a voxel's points share
    # one row): each row is scored once, and adds count x its scores to its superpoint
    rows_total = max(int(point_rows.max()) + 1, 1)
    pairs, count = np.unique(seg[covered] * rows_total + point_rows[covered], return_counts=True)
    pair_seg, pair_row = pairs // rows_total, pairs % rows_total
    by_row = np.argsort(pair_row, kind='stable')
    pair_seg, pair_row, count = pair_seg[by_row], pair_row[by_row], count[by_row]
    need = np.unique(pair_row)
    feats = torch.as_tensor(fused_features)
    sums = torch.zeros(num_seg, num_classes, dtype=torch.float64, device=device)
    row_label = np.full(rows_total, num_classes, dtype=np.int64)
    votes = torch.zeros(num_seg, num_classes, dtype=torch.float64, device=device) if pool == 'vote' else None
    for start in range(0, need.shape[0], chunk_size):
        rows = need[start:start + chunk_size]
        lo, hi = np.searchsorted(pair_row, [rows[0], rows[-1] + 1])
        chunk = feats[torch.from_numpy(rows)].to(device=device, dtype=torch.float32)
        prob = torch.softmax(chunk @ text.t(), dim=1)
        if keep is not None:
            prob[:, ~keep] = MASKED_SCORE
        where = torch.from_numpy(np.searchsorted(rows, pair_row[lo:hi])).to(device)
        segs = torch.from_numpy(pair_seg[lo:hi]).to(device)
        weight = torch.from_numpy(count[lo:hi]).to(device=device, dtype=torch.float64)
        sums.index_add_(0, segs, prob[where].double() * weight[:, None])
        best, arg = prob.max(dim=1)
        row_label[rows] = arg.cpu().numpy()
        if votes is not None:
            votes.index_put_((segs, arg[where]), best[where].double() * weight, accumulate=True)
    n_cov = np.bincount(seg[covered], minlength=num_seg)
    mean = sums.cpu().numpy() / np.maximum(n_cov, 1)[:, None]
    winner = np.argmax(mean if votes is None else votes.cpu().numpy(), axis=1)
    seg_prob = mean[np.arange(num_seg), winner].astype(np.float32)
    labels[covered], probs[covered] = winner[seg[covered]], seg_prob[seg[covered]]
    if spread:
        share = n_cov / np.bincount(seg, minlength=num_seg)
        fill = np.flatnonzero((point_rows < 0) & (n_cov > 0)[seg] & (share >= min_coverage)[seg])
        labels[fill], probs[fill] = winner[seg[fill]], seg_prob[seg[fill]]
    if return_unrefined:
        unrefined = np.full(n, num_classes, dtype=np.int64)
        unrefined[covered] = row_label[point_rows[covered]]
        return labels, probs, unrefined
    return labels, probs


def plg_scene_refined(coords, feat, mask_full, text_embeddings, scene_mask, superpoints, *, voxel_size=0.02,
                      per_point=False, pool='mean', spread=False, min_coverage=0.5, chunk_size=65536, device='cpu',
                      return_unrefined=False):
    """``plg_scene`` followed by the superpoint refinement (``refine_with_superpoints``): (labels, probs) [N]
    (and the unrefined labels with ``return_unrefined``)."""
    rows = plg_point_rows(coords, mask_full, voxel_size=voxel_size, per_point=per_point)
    return refine_with_superpoints(rows, feat, text_embeddings, scene_mask, superpoints, pool=pool, spread=spread,
                                   min_coverage=min_coverage, chunk_size=chunk_size, device=device,
                                   return_unrefined=return_unrefined)
