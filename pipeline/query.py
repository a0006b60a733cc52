"""Open-vocabulary queries against the 3D network's point embeddings (query.py and the viewer share this).

The ESG network maps every voxel to an embedding in CLIP's text space. For a free-text query with unit text
embedding ``t`` the score of a point is its cosine similarity to ``t``, averaged over the evaluation's
``test_repeats`` random voxelisations:

    score(p, t) = mean_r  cos(f_r(v_r(p)), t) = E(p) . t,    E(p) = mean_r  f_r(v_r(p)) / |f_r(v_r(p))|

(``f_r``: the network's output on voxelisation r, ``v_r(p)``: the voxel of point p in it). Because the score
is linear in ``t``, ``E`` (the mean unit embedding) answers any later query with one product; the viewer keeps
it for the points it shows. Segmenting with a label set is the evaluation itself: ``pipeline.inference.
predict_split`` with the label set's text embeddings (summed logits, argmax), called once here with the
query scoring as its ``on_features`` hook, so one pass over the network gives both and the labels agree
with ``evaluate.py`` by construction.

``feature_type`` 'fusion' / 'ess' score the fused 2D features / the ESS embeddings of every point instead
(one "repeat", no network); points without a 2D feature score 0 and are reported as uncovered.

Text embeddings of queries and labels (``text_embeddings_for``): a name of the config's label set takes the
row evaluate.py uses for that class (``TextSource.class_embeddings``: the same file or the same open_clip
prompt), so ``labels`` equal to the class names reproduces evaluate.py exactly; any other name is encoded
with open_clip (``clip_model``, ``clip_pretrained``, ``prompt_template``, cached in ``text_cache_dir``), or all
names are read from ``query_embeddings`` (an .npy [Q, D], one row per name in the order given).
"""
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from dataset.label_constants import IGNORE_LABEL

# Rows of the [V, D] voxel features normalised and scored at once: bounds the temporary copies on scans with
# millions of voxels (768-d float32: 200k rows = 600 MB).
SCORE_CHUNK = 200_000


def parse_names(text, what='queries'):
    """'chair; a soft place to sit' -> ['chair', 'a soft place to sit']; a name given twice is an error."""
    names = [n.strip() for n in str(text or '').split(';')]
    names = [n for n in names if n]
    seen = set()
    for n in names:
        if n.lower() in seen:
            raise ValueError(f"{what}: '{n}' is given twice in '{text}'")
        seen.add(n.lower())
    return names


RESERVED_SLUGS = ('pred', 'queries')  # <scene>_pred.* and <scene>_queries.json are the segmentation's own files


def slugs(names):
    """File-name-safe, unique slugs: 'a soft place to sit' -> 'a_soft_place_to_sit'; a query named like one of
    the segmentation's files ('pred') gets '_query' appended, so it cannot replace them."""
    out = []
    for name in names:
        slug = re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')[:60] or 'query'
        if slug in RESERVED_SLUGS:
            slug += '_query'
        base, k = slug, 2
        while slug in out:  # 'chair!' and 'chair?' would share a file
            slug, k = f'{base}_{k}', k + 1
        out.append(slug)
    return out


def class_index(info, name):
    """Index of ``name`` in the label set (its class name or the name given to the text encoder), or None."""
    key = name.strip().lower()
    for i, (label, text) in enumerate(zip(info.labels, info.text_labels)):
        if key in (label.lower(), text.lower()):
            return i
    return None


def text_embeddings_for(source, info, names, what='queries', embeddings_path=''):
    """Unit text embeddings [len(names), D] of ``names`` and, per name, where its row came from (module docstring);
    ``source``: the stage's ``TextSource``; ``embeddings_path``: an .npy with one row per name, used for all of
    them."""
    from dataset import formats
    from pipeline.text_embeddings import WeightsUnavailable
    names = list(names)
    if not names:
        return torch.zeros(0, 0), []
    path = embeddings_path or ''
    if path:
        try:
            emb = formats.load_text_embeddings(path, num_classes=len(names))
        except formats.FormatError as err:
            raise formats.FormatError(f'{err} (query_embeddings: one row per name of {what}, in the order given: '
                                      f'{names})') from None
        return torch.from_numpy(emb), [f'{path} row {i}' for i in range(len(names))]
    rows, sources = [None] * len(names), [None] * len(names)
    in_set = [(i, class_index(info, n)) for i, n in enumerate(names)]
    if any(c is not None for _, c in in_set):
        class_emb = source.class_embeddings(info, 'cpu')
        for i, c in in_set:
            if c is not None:
                rows[i] = class_emb[c]
                sources[i] = f"class '{info.labels[c]}' of {info.name}"
    others = [names[i] for i, c in in_set if c is None]
    if others:
        template = source.template
        try:
            emb = source.embeddings(others, embeddings_path='')
        except WeightsUnavailable:
            model = source.model_name
            raise WeightsUnavailable(
                f"{what} {others} are not class names of {info.name}, so CLIP must encode them, but the weights "
                f"'{source.pretrained}' of {model} are not on this machine and the model hub cannot be "
                f"reached. Either give the weights: clip_pretrained <a local checkpoint of {model}>, or give the text "
                f"embeddings: query_embeddings <file.npy> (one row per name, in the order given)") from None
        except Exception as err:
            raise RuntimeError(f"{what} {others} are not class names of {info.name}, so open_clip must encode them "
                               f"(or give query_embeddings, an .npy with one row per name): {err}") from err
        it = iter(emb)
        for i, c in in_set:
            if c is None:
                rows[i] = next(it)
                sources[i] = f"open_clip {source.model_name}" + (f", prompt '{template}'" if template else '')
    dims = {int(r.shape[0]) for r in rows}
    if len(dims) != 1:
        raise ValueError(f'{what}: the class-name embeddings and the open_clip ones differ in dimension '
                         f'{sorted(dims)}; clip_model must be the model whose space text_embeddings_path is in')
    return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rows]), sources


def label_palette(info, names):
    """Colours of a label set: a name that is a class of the data set keeps that class's palette colour (so floor
    stays floor-coloured in any label set); the other names take tab20's colours, then an evenly spaced hue wheel
    (a label set of 200 names still gets distinct colours), skipping the colours already taken."""
    import colorsys

    import matplotlib
    own = [class_index(info, n) for n in names]
    taken = {tuple(int(v) for v in info.palette[c]) for c in own if c is not None}
    tab20 = [tuple(int(255 * v + 0.5) for v in matplotlib.colormaps['tab20'](i)[:3]) for i in range(20)]
    golden = 0.618033988749895

    def wheel(i):
        return tuple(int(255 * v + 0.5) for v in colorsys.hsv_to_rgb((i * golden) % 1.0, 0.65 + 0.3 * (i % 2), 0.9))
    spare = (c for c in tab20 + [wheel(i) for i in range(len(names) + len(taken))] if c not in taken)
    return [tuple(int(v) for v in info.palette[c]) if c is not None else next(spare) for c in own]


def scene_score_scale(scores, covered=None):
    """(lo, hi): the colour scale of a scene's query heat maps, the 1st and 99th percentiles of the scores of all
    its queries together (of the covered points, when given), so that two queries of a scene compare by colour."""
    scores = np.asarray(scores, np.float64)
    if covered is not None and np.asarray(covered).any():
        scores = scores[np.asarray(covered, bool)]
    if scores.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(scores, [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


def gt_table(info, names):
    """GT classes of the data set -> indices of the label set ``names`` (a [256] table; 255 = not scored), by
    class name; None when ``names`` are the data set's classes in order (GT is already in their indices)."""
    if [n.lower() for n in names] == [n.lower() for n in info.labels]:
        return None
    table = np.full(256, IGNORE_LABEL, np.int64)
    for j, name in enumerate(names):
        c = class_index(info, name)
        if c is not None:
            table[c] = j
    return table


@dataclass
class SceneResult:
    """Everything query.py writes and the viewer shows of one scene."""
    name: str
    path: str
    coords: np.ndarray                  # float32 [N, 3]
    colors: np.ndarray                  # uint8 [N, 3]
    gt: np.ndarray                      # int64 [N], IGNORE_LABEL where unknown
    has_gt: bool
    pred: np.ndarray                    # int64 [N], index into the label set (num labels = 'unlabeled')
    scores: np.ndarray                  # float32 [N, Q], cosine similarity per query
    covered: Optional[np.ndarray]       # bool [N]: the point has a 2D feature; None when unknown
    embedding: Optional[np.ndarray] = None       # float32 [M, D] mean unit embedding E of ``embedding_rows``
    embedding_rows: Optional[np.ndarray] = None  # int64 [M]
    info: dict = field(default_factory=dict)
    input_coords: Optional[np.ndarray] = None    # float64 [N, 3]: an own scan's points in its own frame and unit

    @property
    def file_coords(self):
        """The coordinates written into output files: an own scan's own frame (so they overlay it), else ``coords``."""
        return self.coords if self.input_coords is None else self.input_coords


class ScoreAccumulator:
    """``predict_split``'s ``on_features`` hook: sums, per scene, the cosine similarity of every point to each
    query over the voxelisations, and optionally the unit embeddings ``E`` of chosen points (the viewer's)."""

    def __init__(self, query_embeddings, keep_rows=None):
        self.text = query_embeddings.float()
        self.keep_rows = keep_rows  # callable(index, num_points) -> int64 rows to keep E of, or None
        self.current = None

    def reset(self, index, num_points):
        self.current, self.count, self.covered = index, 0, None
        self.sum = torch.zeros(num_points, self.text.shape[0])
        rows = self.keep_rows(index, num_points) if self.keep_rows is not None else None
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long)
        self.emb = None

    @torch.no_grad()
    def __call__(self, index, features, inverse, fused_mask):
        num_points = features.shape[0] if inverse is None else inverse.shape[0]
        if index != self.current:
            self.reset(index, num_points)
        device = features.device
        text = self.text.to(device)
        if text.shape[0]:  # no queries (a segmentation alone): nothing to score
            # voxel (or point) scores, normalised chunk by chunk so that no second [V, D] copy is made
            scores = torch.empty(features.shape[0], text.shape[0], device=device)
            for s in range(0, features.shape[0], SCORE_CHUNK):
                unit = torch.nn.functional.normalize(features[s:s + SCORE_CHUNK].float(), dim=1)
                scores[s:s + SCORE_CHUNK] = unit @ text.t()
            if inverse is not None:
                scores = scores[inverse.to(device)]
            self.sum += scores.cpu()
        if self.rows is not None:
            rows = self.rows if inverse is None else inverse[self.rows]
            unit = torch.nn.functional.normalize(features[rows.to(device)].float(), dim=1).cpu()
            self.emb = unit if self.emb is None else self.emb + unit
        if fused_mask is not None:
            self.covered = fused_mask.numpy().astype(bool)
        self.count += 1

    def finish(self, index):
        """(scores float32 [N, Q], E float32 [M, D] or None, rows or None, covered or None) of scene ``index``."""
        if index != self.current or self.count == 0:
            raise RuntimeError(f'no features were scored for scene {index}')
        scores = (self.sum / self.count).numpy()
        emb = None if self.emb is None else (self.emb / self.count).numpy()
        rows = None if self.rows is None else self.rows.numpy()
        return scores, emb, rows, self.covered


def tiled_forward(max_voxels, margin_voxels):
    """A ``forward`` for ``predict_split`` that bounds memory on large scans: a voxelisation with more than
    ``max_voxels`` voxels is cut into horizontal tiles of about ``max_voxels`` voxels (equal counts along x,
    then y), each run with a ``margin_voxels`` border of context and kept only in its core. Tiles keep their
    global voxel coordinates, so the strided grids of the U-Net line up with the whole scene's; only points
    near a tile border whose receptive field reaches past the margin can differ from one whole pass.
    A voxelisation within ``max_voxels`` runs in one pass, exactly as evaluate.py."""
    from pipeline.inference import forward_voxels
    if max_voxels <= 0:
        return forward_voxels

    def forward(model, coords, feats, device, amp=False):
        n = coords.shape[0]
        if n <= max_voxels:
            return forward_voxels(model, coords, feats, device, amp)
        xyz = coords[:, 1:4]
        nx = int(np.ceil(np.sqrt(n / max_voxels)))
        ny = int(np.ceil(n / max_voxels / nx))
        out = None
        x_edges = _quantile_edges(xyz[:, 0], nx)
        for i in range(nx):
            in_x = (xyz[:, 0] >= x_edges[i]) & (xyz[:, 0] < x_edges[i + 1])
            y_edges = _quantile_edges(xyz[in_x, 1], ny)
            for j in range(ny):
                core = in_x & (xyz[:, 1] >= y_edges[j]) & (xyz[:, 1] < y_edges[j + 1])
                if not core.any():
                    continue
                lo, hi = xyz[core, :2].min(0).values - margin_voxels, xyz[core, :2].max(0).values + margin_voxels
                tile = ((xyz[:, :2] >= lo) & (xyz[:, :2] <= hi)).all(1)
                feats_tile = forward_voxels(model, coords[tile], feats[tile], device, amp)
                if out is None:
                    out = torch.empty(n, feats_tile.shape[1], device=feats_tile.device)
                keep = core[tile].to(feats_tile.device)
                out[core.to(out.device)] = feats_tile[keep]
        return out

    return forward


def margin_voxels(tile_margin, voxel_size):
    """``tile_margin`` (metres) in voxels of the largest test-time scale (the voxeliser scales by up to 1.1)."""
    return int(np.ceil(float(tile_margin) / float(voxel_size) * 1.1))


def _quantile_edges(values, parts):
    """``parts`` + 1 edges splitting integer ``values`` into parts of about equal counts (last edge open)."""
    values = values.double()
    qs = torch.quantile(values, torch.linspace(0, 1, parts + 1, dtype=torch.float64)) if values.numel() else \
        torch.zeros(parts + 1, dtype=torch.float64)
    edges = torch.ceil(qs)
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def score_stats(scores, threshold, covered=None, gt=None, class_id=None, top_fraction=0.1):
    """The distribution of one query's scores over a scene's points (covered points only when ``covered`` is
    given). With GT and the query's class index: the precision of the top ``top_fraction`` points against GT
    beside the class's frequency (what a random ranking would score)."""
    scores = np.asarray(scores, np.float64)
    use = np.ones(len(scores), bool) if covered is None else np.asarray(covered, bool)
    s = scores[use]
    out = {'num_points': int(use.sum())}
    if s.size == 0:
        return out
    pct = (1, 5, 25, 50, 75, 95, 99)
    counts, edges = np.histogram(s, bins=20)
    out.update({'min': float(s.min()), 'max': float(s.max()), 'mean': float(s.mean()), 'std': float(s.std()),
                'percentiles': {str(p): float(v) for p, v in zip(pct, np.percentile(s, pct))},
                'histogram': {'edges': [float(e) for e in edges], 'counts': [int(c) for c in counts]},
                'threshold': float(threshold), 'fraction_above_threshold': float((s > threshold).mean())})
    if gt is not None and class_id is not None:
        labelled = use & (np.asarray(gt) != IGNORE_LABEL)
        if labelled.any():
            g, sc = np.asarray(gt)[labelled], scores[labelled]
            out['class_frequency'] = float((g == class_id).mean())
            if not (g == class_id).any():  # the class is not in this scene: no precision to speak of
                return out
            k = max(int(round(top_fraction * len(sc))), 1)
            top = np.argsort(-sc, kind='stable')[:k]
            out['top_fraction'] = top_fraction
            out['top_precision'] = float((g[top] == class_id).mean())
    return out


class SceneSubset(torch.utils.data.Dataset):
    """Some scenes of an evaluation dataset, voxelised exactly as in the whole one.

    The loaders draw the voxelisation of item ``repeat_item(i, r, num_scenes)`` (``dataset.point_loader``) from
    (seed, epoch, that item), and ``predict_split`` asks for repeat r of scene i as that item: a dataset of the
    chosen files alone would number them anew and draw other voxelisations. This view keeps the full dataset's
    numbering, so a scene answered alone (``scenes a,b``, the viewer) gets the very predictions evaluate.py
    writes for it."""

    def __init__(self, base, indices):
        self.base, self.indices = base, list(indices)
        self.data_paths = [base.data_paths[i] for i in self.indices]
        self.datapath_prefix = base.datapath_prefix
        self.has_fused_features = base.has_fused_features

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index_long):
        from dataset.point_loader import repeat_item, scene_and_repeat
        local, rep = scene_and_repeat(index_long, len(self.indices))
        return self.base[repeat_item(self.indices[local], rep, len(self.base.data_paths))]

    def read_scene(self, index):
        return self.base.read_scene(self.indices[index])

    def scene_name(self, index):
        return self.base.scene_name(self.indices[index])

    def __getattr__(self, name):  # the base's optional parts (an own scan's ``frame``), in this view's numbering
        if name == 'frame' and hasattr(self.base, 'frame'):
            return lambda index: self.base.frame(self.indices[index])
        raise AttributeError(name)


@dataclass(frozen=True)
class Prediction:
    """How ``run_scenes`` predicts: the evaluation's keys (``feature_type`` 'distill' | 'fusion' | 'ess', the
    summed test-time voxelisations and their seed, the fused features and the ESS embeddings, autocast, loader
    processes) and the tiling of large scans (``max_voxels``, 0 = never; ``tile_margin`` metres)."""
    feature_type: str
    test_repeats: int
    seed: int
    voxel_size: float
    fused_feature_root: str
    ess_embedding_path: str
    mark_no_feature_to_unknown: bool
    amp: str
    workers: int
    max_voxels: int
    tile_margin: float


def run_scenes(how, model, dataset, label_embeddings, query_embeddings, device, on_result, keep_rows=None,
               desc='scenes', log=None, coverage_root=None, gt_to_labels=None):
    """Predict every scene of ``dataset`` with the label set and score every query, in one pass.

    ``how``: a ``Prediction``. ``on_result(SceneResult)`` per scene; ``keep_rows``
    (callable(index, N) -> rows) keeps the mean unit embeddings of those points. Returns the confusion matrix
    of the label set against GT (summed over scenes with GT; ``gt_to_labels``: ``gt_table`` of another label set).
    """
    from pipeline.inference import predict_split
    feature_type = how.feature_type
    if feature_type not in ('distill', 'fusion', 'ess'):
        raise ValueError(f"feature_type must be 'distill' (the 3D network), 'fusion' (the fused 2D features) or "
                         f"'ess' (the ESS embeddings), found '{feature_type}'")
    feat_root = ''
    if feature_type == 'fusion':
        feat_root = how.fused_feature_root
    elif feature_type == 'ess':
        feat_root = how.ess_embedding_path
        if not feat_root:
            raise ValueError("feature_type 'ess' needs ess_embedding_path (the ESS inference output, e.g. "
                             "exp/demo/ess_embeddings)")
    if feature_type != 'distill' and not dataset.has_fused_features:
        raise ValueError(f"feature_type '{feature_type}' needs fused 2D features, which one's own scans (input) "
                         f"do not have; use feature_type distill")
    coverage_root = how.fused_feature_root if coverage_root is None else coverage_root
    from dataset import fused_features
    scenes = fused_features.scene_names(dataset.datapath_prefix) if dataset.has_fused_features else ()
    scorer = ScoreAccumulator(query_embeddings if query_embeddings.numel() else
                              torch.zeros(0, label_embeddings.shape[1]), keep_rows=keep_rows)

    def on_scene(index, pred, _logits, gt):
        scores, emb, rows, covered = scorer.finish(index)
        coords, colors, labels = dataset.read_scene(index)
        path = dataset.data_paths[index]
        if covered is None and feature_type == 'distill' and dataset.has_fused_features:
            covered = fused_features.coverage(coverage_root, dataset.scene_name(index), len(coords), scenes)
        frame = dataset.frame(index) if hasattr(dataset, 'frame') else None  # own scans
        on_result(SceneResult(
            name=dataset.scene_name(index), path=path, coords=np.asarray(coords, np.float32),
            colors=np.clip(np.rint(colors), 0, 255).astype(np.uint8), gt=np.asarray(gt, np.int64),
            has_gt=bool((np.asarray(gt) != IGNORE_LABEL).any()), pred=pred, scores=scores, covered=covered,
            embedding=emb, embedding_rows=rows, input_coords=None if frame is None else frame.to_input(coords)))

    conf, _ = predict_split(
        model, dataset, label_embeddings, device=device, test_repeats=how.test_repeats, seed=how.seed,
        feature_type='distill' if feature_type == 'distill' else 'fusion', fused_feature_root=feat_root,
        mark_no_feature_to_unknown=how.mark_no_feature_to_unknown, amp=how.amp, workers=how.workers,
        on_scene=on_scene, on_features=scorer,
        forward=tiled_forward(how.max_voxels, margin_voxels(how.tile_margin, how.voxel_size)), desc=desc, log=log,
        gt_table=gt_to_labels)
    return conf


def answer_dataset(scene_set, scans='', scenes='', *, voxel_size, input_color, seed, up_axis='z', scale=1.0,
                   checks=True):
    """The scenes to answer: own scans (``scans``: a .ply / .pth file or a folder; ``dataset/scan_io.py``), the
    named ``scenes`` ('a,b') of ``scene_set`` (voxelised as in the whole split: ``SceneSubset``), or all of
    ``scene_set`` (the evaluation loader of a split; ``scene_set()`` builds it, only when it is needed)."""
    from dataset.formats import scene_name
    from dataset.scan_io import ScanLoader, list_scans
    if scans:
        if scenes:
            raise ValueError("give either input (own scans) or scenes (of the data set), not both")
        return ScanLoader(list_scans(scans), voxel_size, input_color=input_color, seed=seed, up_axis=up_axis,
                          scale=scale, checks=checks)
    dataset = scene_set()
    if not scenes:
        return dataset
    index = {scene_name(p): i for i, p in enumerate(dataset.data_paths)}
    wanted = [s.strip() for s in str(scenes).split(',') if s.strip()]
    missing = [s for s in wanted if s not in index]
    if missing:
        folder = os.path.dirname(dataset.data_paths[0]) if dataset.data_paths else '?'
        raise ValueError(f"scenes {missing} are not in '{folder}' "
                         f"(it holds {sorted(index)[:10]}{' ...' if len(index) > 10 else ''})")
    return SceneSubset(dataset, [index[s] for s in wanted])


def check_dimensions(feature_2d_extractor, feature_type, label_emb, query_emb):
    """The text embeddings must live in the space the scores are computed in (``feature_2d_extractor``'s)."""
    from pipeline.networks import feature_dim
    dim = feature_dim(feature_2d_extractor)
    for what, emb in (('labels', label_emb), ('queries', query_emb)):
        if emb.numel() and emb.shape[1] != dim:
            raise ValueError(f"{what}: text embeddings of dimension {emb.shape[1]}, but the {feature_type} features "
                             f"are {dim}-d (feature_2d_extractor {feature_2d_extractor}); use the CLIP model of "
                             f"that space (clip_model) or matching query_embeddings")
