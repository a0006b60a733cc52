"""Pseudo-label generation (PLG, paper §3.2): fused 2D VLM features x CLIP text embeddings,
restricted to the scene-level label, give one pseudo label per 3D point.

    PYTHONPATH=. python vlm_ps_generation/generation_vlm.py --config vlm_ps_generation/config/demo.yaml [key value ...]

Writes ``<save_folder>/<scene>_pred.npy`` (int64 [N], ``num_classes`` = unlabeled) and
``<scene>_prob_pred.npy`` (float32 [N], the winning softmax probability; 0 for unlabeled points, where
upstream writes float16 and 1/C, the softmax of a zero feature: see the README),
then prints and writes ``<save_folder>/plg_summary.json`` (pseudo-label mIoU against GT, coverage).
With ``overwrite False`` a rerun reuses a scene's files only when ``plg_manifest.jsonl`` says they came
from the same 3D scene, fused features, scene tags, text embeddings and settings (``util/provenance.py``);
any other scene is recomputed, and the log says why.

Choices against upstream (vlm_ps_generation/generation_vlm.py + dataset/generation_featute_loader.py):
- Upstream scores one representative point per 2 cm voxel and copies its label to every point of the
  voxel (through the inverse map); a point is 'unlabeled' when its voxel's representative has no 2D
  feature. We reproduce that (``plg_per_point: False``), but voxelise the scene in its own
  coordinates: upstream's loader builds its Voxelizer with random rotation/scale/translation even in
  this stage, which only reshuffles which point represents a voxel and makes the labels
  non-reproducible. ``plg_per_point: True`` scores every covered point on its own instead.
- The representative is the lowest-index point of the voxel (``dataset.voxelizer.sparse_quantize``).
- Every fused-feature file of a scene is read and merged (``formats.load_scene_fused_features``): upstream
  fused one full-coverage ``<scene>.pt`` per scene, read as it is; OpenScene's released train features are
  five random 20k-point subsets per scene (``<scene>_0.pt`` .. ``_4.pt``), whose union is used (one of them
  alone would leave most of a ~150k-point scene unlabeled).
- Scores are computed in float32 (upstream: half on GPU); argmax may differ only on exact ties.
- The headline mIoU counts an unlabeled point as a miss in IoU too (a 3D network labels every point);
  upstream's metric leaves 'no feature' points out of the IoU (they only lower the accuracy), and that
  number is in the summary too ('miou_upstream'). Both score every point against its own GT label.

Not the paper's, off by default (``plg_refine none``): ``plg_refine superpoints`` relabels the labelled points of
each superpoint (ScanNet's ``<scene>_vh_clean_2.0.010000.segs.json``, else a graph segmentation of the points cached
in ``superpoint_root``: ``dataset/superpoints.py``) with the class pooled over them (``plg_refine_pool`` mean or
vote; ``plg_refine_spread`` also labels the unlabeled points of mostly labelled superpoints); the files written are
the refined labels and their pooled probabilities, the superpoint file is one of each scene's recorded inputs and
the refinement's keys are in the recorded settings (docs/method.md, "PLG refinement").
"""
import contextlib
import json
import os

import numpy as np

from dataset import formats, fused_features
from dataset.label_constants import IGNORE_LABEL, dataset_info
from dataset.superpoints import GRAPH_PARAMS, GRAPH_VERSION, SuperpointSource
from pipeline.metric import confusion_matrix, evaluate_confusion, format_table
from pipeline.networks import feature_dim
from pipeline.pseudo_labels import plg_scene, plg_scene_refined, scene_label_mask
from pipeline.schemas import PLG
from pipeline.stage import class_text_embeddings, run_stage
from util.cli import run_cli
from util.io import atomic_write_text
from util.progress import progress
from util.provenance import OutputManifest, array_digest, code_version, file_digest

SCHEMA = PLG


def load_scene_label_file(path, class_names, text_labels=()):
    """JSON {scene: [class names]} -> {scene: bool [C] mask}. Names may be label or text-label names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scene_label_file '{path}' does not exist")
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"scene_label_file '{path}': {twice[:3]} appear more than once; JSON keeps only the "
                             f"last, so one scene's tags would be dropped silently: merge them into one entry")
        return dict(pairs)

    with open(path) as f:
        try:
            data = json.load(f, object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as err:
            raise ValueError(f"scene_label_file '{path}' is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"scene_label_file '{path}': expected an object {{scene: [class names]}}, "
                         f"found {type(data).__name__}")
    index = {name: i for i, name in enumerate(class_names)}
    for i, name in enumerate(text_labels):  # ScanNet 'other' == 'otherfurniture'
        index.setdefault(name, i)
    masks = {}
    for scene, names in data.items():
        if not isinstance(names, list):
            raise ValueError(f"scene_label_file '{path}': scene '{scene}' must map to a list of class names")
        if not names:
            raise ValueError(f"scene_label_file '{path}': scene '{scene}' has an empty class list; every scene "
                             f"needs at least one class (leave the scene out of the split instead)")
        mask = np.zeros(len(class_names), dtype=bool)
        for name in names:
            if name not in index:
                raise ValueError(f"scene_label_file '{path}': unknown class '{name}' for scene '{scene}'; "
                                 f"expected one of {list(class_names)}")
            mask[index[name]] = True
        masks[scene] = mask
    return masks


# bump when a change of this stage changes the pseudo labels it writes: older outputs are then recomputed
PLG_VERSION = 1


def plg_settings(cfg, text, scene_label_file):
    """What shapes every scene's pseudo labels, recorded beside them (util/provenance.py). The refinement's keys
    appear only when it is on, so the paper's setting keeps the records it always had."""
    settings = {'stage': 'plg', 'version': PLG_VERSION, 'labelset': cfg.labelset, 'split': cfg.split,
                'voxel_size': cfg.voxel_size, 'plg_per_point': cfg.plg_per_point,
                'text_embeddings': array_digest(np.asarray(text, np.float32)),
                'scene_tags': 'scene_label_file' if scene_label_file else 'GT labels of each scene'}
    if cfg.plg_refine == 'superpoints':  # 'none' (None on the command line) is the paper's setting
        settings.update(plg_refine=cfg.plg_refine, plg_refine_pool=cfg.plg_refine_pool,
                        plg_refine_spread=cfg.plg_refine_spread, superpoint_source=cfg.superpoint_source)
        if cfg.plg_refine_spread:
            settings['plg_refine_min_coverage'] = cfg.plg_refine_min_coverage
        if cfg.superpoint_source != 'scannet':
            settings['superpoint_graph'] = dict(GRAPH_PARAMS, version=GRAPH_VERSION)
    return settings


class RefineStats:
    """What the superpoint refinement changed in the scenes computed in this run (the reused ones are not scored
    again): the share of labelled points relabelled, and the labels before it against GT."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.conf = np.zeros((num_classes + 1, num_classes + 1), np.int64)
        self.scenes = self.changed = self.labelled = self.points = self.covered = self.with_gt = 0

    def add(self, before, after, pt):
        labelled = before < self.num_classes
        self.scenes += 1
        self.changed += int((labelled & (before != after)).sum())
        self.labelled += int(labelled.sum())
        if pt.has_labels:
            self.conf += confusion_matrix(before, pt.labels, self.num_classes)
            self.points += before.shape[0]
            self.covered += int(labelled.sum())
            self.with_gt += 1

    def summary(self, cfg, superpoints, info, log):
        out = {'plg_refine': cfg.plg_refine, 'plg_refine_pool': cfg.plg_refine_pool,
               'plg_refine_spread': cfg.plg_refine_spread, 'plg_refine_min_coverage': cfg.plg_refine_min_coverage,
               'superpoint_source': cfg.superpoint_source, 'superpoint_root': cfg.superpoint_root,
               'superpoint_files': dict(superpoints.counts), 'graph_seconds': round(superpoints.seconds, 3),
               'scenes_refined_in_this_run': self.scenes,
               'changed_share': self.changed / self.labelled if self.labelled else None}
        line = (f"PLG refinement ({cfg.plg_refine}, {cfg.plg_refine_pool}"
                + (f', spread >= {cfg.plg_refine_min_coverage}' if cfg.plg_refine_spread else '') + '): superpoints '
                + ', '.join(f'{n} {k}' for k, n in superpoints.counts.items())
                + (f' ({superpoints.seconds:.1f} s)' if superpoints.counts['computed'] else ''))
        if self.scenes:
            line += (f"; {self.scenes} scenes refined in this run, {100 * (out['changed_share'] or 0):.2f}% of their "
                     f"labelled points relabelled")
        if self.with_gt:
            before = evaluate_confusion(self.conf, info.labels, no_feature_in_iou=True)
            out['before'] = {'miou': before['miou'], 'miou_present': before['miou_present'],
                             'coverage': self.covered / max(self.points, 1), 'num_scenes': self.with_gt}
            line += (f"; before it (those scenes): mIoU {100 * before['miou']:.2f}, coverage "
                     f"{100 * out['before']['coverage']:.2f}%")
        log(line)
        return out


def scene_tags_of(scene, path, pt, scene_labels, cfg, info, log):
    """The scene-level label (bool [C]) of one scene: from the tag file, or from its GT labels (upstream)."""
    if scene_labels is not None:
        if scene not in scene_labels:
            raise KeyError(f"scene '{scene}' is missing from scene_label_file '{cfg.scene_label_file}'")
        return scene_labels[scene]
    if not pt.has_labels:
        raise ValueError(f"3D scene '{path}' has no labels, so its scene-level label cannot be read "
                         f"from GT: give scene_label_file (JSON {{scene: [class names]}})")
    scene_mask = scene_label_mask(pt.labels, info.num_classes)
    if not scene_mask.any():
        log(f"warning: 3D scene '{path}' has no labelled point (all {IGNORE_LABEL}), so its "
            f"scene-level label is empty: every point gets 'unlabeled'")
    return scene_mask


def label_split(cfg, device, logger):
    info = dataset_info(cfg.labelset)
    save_folder = cfg.save_folder
    feat_dim = cfg.feat_dim or feature_dim(cfg.feature_2d_extractor)
    text = class_text_embeddings(cfg, info, device=device)
    if feat_dim is not None and text.shape[1] != feat_dim:
        raise ValueError(f"text embeddings have dimension {text.shape[1]} but feature_2d_extractor "
                         f"'{cfg.feature_2d_extractor}' gives {feat_dim}-d features; use the matching CLIP model "
                         f"(ViT-L-14-336 for openseg, ViT-B-32 for lseg) or text_embeddings_path")
    scene_labels = None
    if cfg.scene_label_file:
        scene_labels = load_scene_label_file(cfg.scene_label_file, info.labels, info.text_labels)

    paths = formats.list_scenes(cfg.data_root, cfg.split)
    all_scenes = fused_features.scene_names(cfg.data_root)
    # scenes are scored one at a time and summed into a confusion matrix (ScanNet train has ~1e8 points)
    conf = np.zeros((info.num_classes + 1, info.num_classes + 1), np.int64)
    n_points = n_covered = n_with_gt = n_written = n_skipped = 0
    superpoints = None
    if cfg.plg_refine == 'superpoints':  # the cache folder is locked from its first use on, unless it is ours
        superpoints = SuperpointSource(cfg.superpoint_root, cfg.superpoint_source, log=logger.info,
                                       lock=os.path.abspath(cfg.superpoint_root) != os.path.abspath(save_folder))
    refined = RefineStats(info.num_classes)
    with OutputManifest(save_folder, 'plg', plg_settings(cfg, text, scene_labels)) as manifest, \
            (superpoints or contextlib.nullcontext()):
        for path in progress(paths, 'PLG', log=logger.info, unit='scene'):
            scene = formats.scene_name(path)
            pt = formats.load_scene_3d(path, info.num_classes)
            scene_mask = scene_tags_of(scene, path, pt, scene_labels, cfg, info, logger.info)
            tags = {'tags': [info.labels[c] for c in np.flatnonzero(scene_mask)]}
            feat_paths = fused_features.feature_files(cfg.data_root_2d_fused_feature, scene, all_scenes)
            outputs = formats.pseudo_label_paths(save_folder, scene)
            inputs = [path, *feat_paths]
            if superpoints is not None:  # computed and cached here when no current file has them
                inputs.append(superpoints.locate(scene, path, pt.coords, pt.colors)[0])
            current, why = manifest.check(scene, inputs, outputs, tags)
            if current and not cfg.overwrite:
                pred = formats.load_pseudo_labels(save_folder, scene, num_points=pt.coords.shape[0])
                n_skipped += 1
            else:
                if not cfg.overwrite and os.path.exists(outputs[0]):
                    logger.info(f"recomputing '{scene}': {why}")
                feat, mask_full = formats.load_scene_fused_features(feat_paths, num_points=pt.coords.shape[0],
                                                                    feat_dim=feat_dim)
                if superpoints is None:
                    pred, prob = plg_scene(pt.coords, feat, mask_full.numpy(), text, scene_mask,
                                           voxel_size=cfg.voxel_size, per_point=cfg.plg_per_point,
                                           chunk_size=cfg.chunk_size, device=device)
                else:
                    pred, prob, before = plg_scene_refined(
                        pt.coords, feat, mask_full.numpy(), text, scene_mask,
                        superpoints.load(inputs[-1], pt.coords.shape[0]), voxel_size=cfg.voxel_size,
                        per_point=cfg.plg_per_point, pool=cfg.plg_refine_pool, spread=cfg.plg_refine_spread,
                        min_coverage=cfg.plg_refine_min_coverage, chunk_size=cfg.chunk_size, device=device,
                        return_unrefined=True)
                    refined.add(before, pred, pt)
                formats.save_pseudo_labels(save_folder, scene, pred, prob)
                manifest.record(scene, inputs, outputs, tags)
                n_written += 1
            if pt.has_labels:
                conf += confusion_matrix(pred, pt.labels, info.num_classes)
                n_points += pred.shape[0]
                n_covered += int((pred < info.num_classes).sum())
                n_with_gt += 1

        summary = {'split': cfg.split, 'num_scenes': len(paths), 'written': n_written, 'skipped': n_skipped,
                   'save_folder': save_folder,
                   'provenance': {'settings': manifest.settings, 'code': code_version(),
                                  'scene_label_file': cfg.scene_label_file or None,
                                  'scene_label_file_sha1': (file_digest(cfg.scene_label_file)['sha1']
                                                            if cfg.scene_label_file else None)}}
        if superpoints is not None:
            summary['refine'] = refined.summary(cfg, superpoints, info, logger.info)
        if n_with_gt:
            res = evaluate_confusion(conf, info.labels, no_feature_in_iou=True)
            res_upstream = evaluate_confusion(conf, info.labels, no_feature_in_iou=False)
            summary.update({
                'miou': res['miou'], 'macc': res['macc'], 'miou_present': res['miou_present'],
                'miou_upstream': res_upstream['miou'],
                'fmiou': res['fmiou'], 'fmiou_exclude': res['fmiou_exclude'], 'split_miou': res['split_miou'],
                'coverage': n_covered / max(n_points, 1),
                'num_points': n_points,
                'iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(info.labels, res['iou'])},
            })
            logger.info('pseudo labels against GT\n' + format_table(res))
            logger.info(f"PLG: pseudo-label mIoU {100 * res['miou']:.2f} (unlabeled counted wrong"
                  + (f"; f-mIoU {100 * res['fmiou']:.2f}" if res['fmiou'] is not None else '') + "), "
                  f"coverage {100 * summary['coverage']:.2f}% of {summary['num_points']} points, "
                  f"{len(paths)} scenes ({n_written} written, {n_skipped} already done)")
        else:
            logger.info(f"PLG: {len(paths)} scenes ({n_written} written, {n_skipped} already done); no GT for mIoU")
        atomic_write_text(os.path.join(save_folder, 'plg_summary.json'), json.dumps(summary, indent=2))
    return summary


def main(argv=None):
    return run_stage(argv, SCHEMA, lambda cfg, stage: label_split(cfg, stage.device, stage.logger), title='PLG',
                     record='plg', folder='save_folder')


if __name__ == '__main__':
    run_cli(main)
