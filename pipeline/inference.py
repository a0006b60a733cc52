"""The one prediction path of the 3D network, shared by validation in ``train_esg.py`` and ``evaluate.py``.

For every scene and every repeat (docs/method.md, "Evaluation"):
    voxel features  out = DisNet(SparseTensor(colours, voxel coords))          [V, D]
    voxel logits    out @ T^T   (T: L2-normalised CLIP text embeddings)          [V, C]
    point logits    voxel_logits[inverse]  (the voxeliser's point -> voxel map)  [N, C]
summed over ``test_repeats`` random voxelisations (the voxeliser keeps its rotation / scale
augmentation at test, as upstream, so each repeat sees another grid), then argmax per point.
Upstream computes ``out[inverse] @ T^T``; taking the dot product per voxel first and then indexing
gives the same numbers with V instead of N rows of 768-d features.

OpenScene's users report that validation inside training and its evaluate script disagree on the same
checkpoint; here both call ``predict_split`` with the same seed, so they cannot.

Optional 2D-3D ensemble (OpenScene ``feature_type: ensemble``): per point, the fused 2D feature
replaces the 3D one when its best cosine similarity to a text embedding is higher. ``fusion`` scores the
2D features alone (no network), with ``mark_no_feature_to_unknown`` sending points no view saw to
'unlabeled', as OpenScene does for that feature type only.
"""
import contextlib
import functools
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dataset import fused_features
from dataset.label_constants import IGNORE_LABEL
from dataset.point_loader import repeat_item
from pipeline import metric
from util.progress import progress

FEATURE_TYPES = ('distill', 'fusion', 'ensemble')


@contextlib.contextmanager
def fixed_rng(seed):
    """Seed python / numpy / torch for the block and restore the previous states afterwards, so a
    validation pass inside training neither depends on nor disturbs the training random stream."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


def autocast_context(device, amp):
    """``amp``: 'off' (float32; also False / '' / None), 'bf16' or 'fp16' -> an autocast context for ``device``."""
    if amp in (None, False, '', 'off', 'False', 'false', 'none'):
        return contextlib.nullcontext()
    dtypes = {'bf16': torch.bfloat16, 'fp16': torch.float16}
    if amp not in dtypes:
        raise ValueError(f"config key amp must be 'off', 'bf16' or 'fp16', found {amp!r}")
    if device.type == 'cpu' and amp == 'fp16':
        raise ValueError("amp 'fp16' is not supported on CPU; use amp bf16 or off")
    return torch.autocast(device_type=device.type, dtype=dtypes[amp])


def sparse_input(model, coords, feats, device):
    """The network input: a sparse tensor of colours at integer voxel coordinates (batch, x, y, z), built
    by the sparse engine the network was built on (``sparse_engine``: builtin or minkowski)."""
    return getattr(model, 'module', model).sparse_input(coords, feats, device)  # DDP wraps the DisNet


def forward_voxels(model, coords, feats, device, amp=False):
    """Per-voxel output features [V, D] in float32 (rows in the order of ``coords``)."""
    with autocast_context(device, amp):
        out = model(sparse_input(model, coords, feats, device))
    if hasattr(out, 'F'):  # a SparseTensor: its features, rows in input order
        out = out.F
    return out.float()


def point_logits(voxel_features, inverse, text_embeddings, fused=None, fused_mask=None):
    """Per-point logits [N, C] from per-voxel features; the optional ensemble with 2D features.

    voxel_features [V, D], inverse [N] (point -> voxel row), text_embeddings [C, D] (unit rows);
    fused [N, D] and fused_mask [N] bool: the fused 2D features of the points (ensemble only).
    """
    t = text_embeddings.to(voxel_features.device, torch.float32)
    inverse = inverse.to(voxel_features.device)
    if fused is None:
        return (voxel_features @ t.t())[inverse]
    # as OpenScene's ensemble: compare the best cosine similarity of either feature per point,
    # then score the chosen (unnormalised) feature
    feat3d = voxel_features[inverse]
    fused = fused.to(feat3d.device, torch.float32)
    sim3d = torch.nn.functional.normalize(feat3d, dim=1, eps=1e-5) @ t.t()
    sim2d = torch.nn.functional.normalize(fused, dim=1, eps=1e-5) @ t.t()
    use_2d = (sim2d.max(1)[0] > sim3d.max(1)[0]) & fused_mask.to(feat3d.device)
    chosen = torch.where(use_2d[:, None], fused, feat3d)
    return chosen @ t.t()


class _Repeated(Dataset):
    """Scene ``indices[k // repeats]``, voxelised anew for every repeat (k % repeats).

    The loaders draw an item's augmentation from (seed, epoch, item), and repeat r of scene i is item
    ``repeat_item(i, r, num_scenes)`` (``dataset.point_loader``, upstream's ``loop``): another random
    voxelisation, the same for every run with the same seed; repeat 0 is item i itself.
    """

    def __init__(self, dataset, indices, repeats):
        self.dataset, self.indices, self.repeats = dataset, list(indices), repeats

    def __len__(self):
        return len(self.indices) * self.repeats

    def __getitem__(self, k):
        index, rep = self.indices[k // self.repeats], k % self.repeats
        return index, self.dataset[repeat_item(index, rep, len(self.dataset.data_paths))]


def _collate_one(batch, collate_eval):
    (index, item), = batch
    return index, collate_eval([item])


def eval_dataset(data_root, split, *, voxel_size, input_color, seed, labelset):
    """Every point of every scene of ``split``, with the voxeliser's inverse map: upstream's Point3DLoader with
    ``eval_all=True`` and ``aug=False`` (the voxeliser still rotates / scales at random, as upstream)."""
    from dataset.label_constants import dataset_info
    from dataset.point_loader import Point3DLoader
    return Point3DLoader(datapath_prefix=data_root, voxel_size=voxel_size, split=split, aug=False, eval_all=True,
                         input_color=input_color, seed=seed, num_classes=dataset_info(labelset).num_classes)


def predict_split(model, dataset, text_embeddings, *, device, collate_eval=None, test_repeats=1, seed=0,
                  feature_type='distill', fused_feature_root='', mark_no_feature_to_unknown=False,
                  amp=False, rank=0, world_size=1, workers=0, on_scene=None, on_features=None, forward=None,
                  log=None, desc='predicting', gt_table=None):
    """Predict every scene of ``dataset`` (``Point3DLoader(eval_all=True)``-like items
    ``(coords [V,4], feats [V,3], labels [N], inverse [N])``); returns the confusion matrices summed over
    scenes of (the prediction from all ``test_repeats`` voxelisations summed, the first voxelisation alone):
    upstream reports both (its ScanNet log: 48.4 for one voxelisation, 49.7 for 5 summed).

    Scenes are split over processes (scene i goes to rank i % world_size); the caller all-reduces the
    confusion matrix. For every scene ``on_scene(index, pred [N] int64, logits [N, C] float32, gt [N])``
    is called once its repeats are summed (e.g. to save predictions). ``seed`` fixes the random
    voxelisations, so two calls with one checkpoint give the same predictions. ``gt_table`` [256] maps GT
    classes to rows of ``text_embeddings`` (or to 255, ignored) when those are another label set than the
    data set's (``pipeline.query.gt_table``); None: the same classes.

    ``on_features(index, features, inverse, fused_mask)`` (optional) sees the features every repeat is scored
    from, before ``on_scene`` of that scene: the network's voxel features [V, D] with the point -> voxel map
    ``inverse`` [N], or for 'fusion' the points' 2D features [N, D] with ``inverse`` None and the coverage mask
    (query.py scores free-text queries from them in the same pass). ``forward`` replaces ``forward_voxels``
    (same signature; query.py's tiled forward for scans too large for one pass). Progress over the
    voxelisations (``desc``) is a bar on a terminal, else lines with an ETA to ``log`` (util/progress.py).
    """
    if collate_eval is None:
        from dataset.point_loader import collation_fn_eval_all as collate_eval
    if feature_type not in FEATURE_TYPES:
        raise ValueError(f"feature_type must be one of {FEATURE_TYPES}, found '{feature_type}'")
    if feature_type != 'distill' and not fused_feature_root:
        raise ValueError(f"feature_type '{feature_type}' needs the fused 2D features: set data_root_2d_fused_feature")
    if feature_type != 'distill' and not dataset.has_fused_features:
        raise ValueError(f"feature_type '{feature_type}' needs fused 2D features, which these scenes (one's own "
                         f"scans) do not have")
    if test_repeats < 1:
        raise ValueError(f'test_repeats must be >= 1, found {test_repeats}')
    num_classes = text_embeddings.shape[0]
    conf = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    conf_first = np.zeros_like(conf)
    indices = range(rank, len(dataset.data_paths), world_size)
    repeats = 1 if feature_type == 'fusion' else test_repeats  # the 2D features have no randomness
    if model is not None:
        model.eval()
    forward = forward_voxels if forward is None else forward
    # every scene name of the data set: tells scene 'room''s files from those of a scene 'room_0'
    scenes = fused_features.scene_names(dataset.datapath_prefix) if feature_type != 'distill' else ()
    with fixed_rng(seed), torch.no_grad():
        loader = DataLoader(_Repeated(dataset, indices, repeats), batch_size=1, shuffle=False,
                            num_workers=workers, collate_fn=functools.partial(_collate_one, collate_eval=collate_eval))
        current, summed, gt, fused, fused_mask = None, None, None, None, None
        batches = progress(loader, desc, log=log, unit='voxelisation')
        for k, (index, (coords, feats, labels, inverse)) in enumerate(batches):
            if index != current:
                current, summed, gt = index, None, labels.numpy()
                if feature_type != 'distill':
                    fused, fused_mask = fused_features.point_features(
                        fused_feature_root, dataset.scene_name(index), labels.shape[0], text_embeddings.shape[1],
                        scenes)
            if feature_type == 'fusion':
                logits = fused @ text_embeddings.float().t()
                if on_features is not None:
                    on_features(index, fused, None, fused_mask)
            else:
                voxel_features = forward(model, coords, feats, device, amp)
                logits = point_logits(voxel_features, inverse, text_embeddings, fused, fused_mask).cpu()
                if on_features is not None:
                    on_features(index, voxel_features, inverse, fused_mask)
            summed = logits if summed is None else summed + logits
            if k % repeats == 0:  # first repeat of this scene
                first = summed.argmax(1)
                if feature_type == 'fusion' and mark_no_feature_to_unknown:
                    first[~fused_mask] = num_classes  # 'unlabeled', as OpenScene
            if k % repeats == repeats - 1:  # last repeat of this scene
                pred = summed.argmax(1) if repeats > 1 else first
                if feature_type == 'fusion' and mark_no_feature_to_unknown:
                    pred[~fused_mask] = num_classes  # 'unlabeled', as OpenScene
                pred = pred.numpy().astype(np.int64)
                if pred.shape[0] != gt.shape[0]:
                    raise RuntimeError(f"scene '{dataset.data_paths[index]}': {pred.shape[0]} predictions for "
                                       f"{gt.shape[0]} points; the voxeliser's inverse map is wrong")
                scored = gt if gt_table is None else gt_table[np.where(gt == IGNORE_LABEL, 255, gt)]
                conf += metric.confusion_matrix(pred, scored, num_classes)
                conf_first += metric.confusion_matrix(first.numpy(), scored, num_classes)
                if on_scene is not None:
                    on_scene(index, pred, summed, gt)
    return conf, conf_first
