"""The PLG formula (paper §3.2; docs/method.md), shared by the PLG script, the synthetic-data calibration
and the tests.

    p = softmax(f_fused @ T^T)          T: L2-normalised text embeddings, no temperature (as upstream)
    p[:, c] = -999  for every class c outside the scene-level label   (after the softmax, as upstream)
    pseudo label = argmax p,   confidence = max p

``plg_scene`` applies it to one scene as upstream does: per voxel, to the voxel's first point, copied to all of
its points (``per_point`` scores every covered point instead).
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
