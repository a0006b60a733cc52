"""Evaluate a trained ESG network (docs/method.md, "Evaluation"): per-point predictions, mIoU / mAcc, pictures.

    python evaluate.py --config config/scannet/openseg_eval.yaml model_path exp/scannet/esg/best.pth

Loads a checkpoint (ours, or an upstream 3DSS-VLG / OpenScene MinkowskiEngine checkpoint: key
``state_dict``, with or without DDP's ``module.`` prefixes; the engine uses MinkowskiEngine's parameter
layout, so the weights load unchanged), predicts every point of ``split`` with ``test_repeats``
random voxelisations whose logits are summed (``pipeline.inference.predict_split``, the code validation in
``train_esg.py`` runs), and writes to ``save_folder``:
    <scene>_pred.npy              predicted label per point (int64; 'unlabeled' = number of classes)
    <scene>_pred.ply, _gt.ply      coloured point clouds (``save_ply``)
    <scene>_topdown.png            prediction, GT and the errors (correct / wrong / ignored / no 2D feature) from
                                  above (``save_png``; ``topdown_ceiling_crop`` metres cut below the top, S3DIS 0.5)
    iou_per_class.png, metrics.txt, eval_summary.json
``metrics.txt`` and ``eval_summary.json`` carry, beside mIoU (the paper's number), f-mIoU (without the classes
``fmiou_exclude`` names, by default the label set's) and, for ScanNet200, the head / common / tail mIoUs
(``pipeline/metric.py`` defines them).
``iou_per_class.png`` puts the PLG and ESS labels' IoU of the same split beside the network's when
``stage_metrics`` names ESS inference's ``ess_eval_metrics.json`` (the demo config does).
``feature_type``: 'distill' (the 3D network, the paper's number), 'fusion' (the 2D features given in
``data_root_2d_fused_feature`` alone) or 'ensemble' (OpenScene's 2D-3D ensemble).
"""
import json
import os

import numpy as np

from dataset import fused_features
from dataset.formats import load_scene_3d, scene_name
from dataset.label_constants import IGNORE_LABEL, dataset_info
from pipeline.inference import predict_split
from pipeline.metric import evaluate_confusion, fmiou_classes, format_table
from pipeline.networks import build_model
from pipeline.schemas import EVALUATION
from pipeline.stage import class_text_embeddings, eval_split, network_values, run_stage
from pipeline.visualize import (
    IGNORED_COLOR,
    ceiling_crop,
    ceiling_height,
    error_colors,
    iou_bar_chart,
    labels_to_colors,
    topdown_panels_png,
    write_ply,
)
from util import distributed as du
from util.cli import run_cli
from util.io import atomic_np_save, atomic_write_text
from util.misc import Timer, set_seed
from util.provenance import array_digest, code_version, file_digest
from util.run_folder import ExistingResultsError

SCHEMA = EVALUATION


def scene_writer(cfg, val_set, info):
    """Callback of ``predict_split``: save a scene's predictions and pictures."""
    palette = info.palette_with_unlabeled()
    scenes = fused_features.scene_names(cfg.data_root)
    crop = ceiling_crop(cfg.topdown_ceiling_crop, info)

    def on_scene(index, pred, _logits, gt):
        path = val_set.data_paths[index]
        name = scene_name(path)
        atomic_np_save(os.path.join(cfg.save_folder, f'{name}_pred.npy'), pred)
        if cfg.save_ply or cfg.save_png:
            coords = load_scene_3d(path).coords
            pred_colors, gt_colors = labels_to_colors(pred, palette), labels_to_colors(gt, palette)
            if cfg.save_ply:
                write_ply(os.path.join(cfg.save_folder, f'{name}_pred.ply'), coords, pred_colors, pred)
                write_ply(os.path.join(cfg.save_folder, f'{name}_gt.ply'), coords, gt_colors, gt)
            if cfg.save_png:
                shown = np.union1d(np.unique(pred), np.unique(gt[gt != IGNORE_LABEL]))
                names = list(info.labels) + ['unlabeled (no 2D feature)']
                legend = [(names[c], palette[c]) for c in shown if c <= info.num_classes]
                if (gt == IGNORE_LABEL).any():
                    legend.append(('ignored (no GT)', IGNORED_COLOR))
                # which points no view saw: the 3D network fills them, the 2D features cannot
                covered = fused_features.coverage(cfg.data_root_2d_fused_feature, name, len(coords), scenes)
                errors, categories = error_colors(pred, gt, info.num_classes, covered)
                topdown_panels_png(os.path.join(cfg.save_folder, f'{name}_topdown.png'), coords,
                                   [('prediction', pred_colors), ('ground truth', gt_colors), ('errors', errors)],
                                   title=f'{name}  ({cfg.feature_type})', legend=legend, panel_legends={2: categories},
                                   max_z=ceiling_height(coords, crop) if crop > 0 else None)
    return on_scene


# files of one scene in save_folder, and files of the whole split
SCENE_OUTPUTS = ('{}_pred.npy', '{}_pred.ply', '{}_gt.ply', '{}_topdown.png')
SPLIT_OUTPUTS = ('metrics.txt', 'eval_summary.json', 'iou_per_class.png')
MANIFEST = 'eval_manifest.json'


def evaluation_provenance(cfg, text_embeddings):
    """What determines the results in save_folder: the checkpoint's content and the settings."""
    keys = ('labelset', 'data_root', 'split', 'voxel_size', 'input_color', 'arch_3d', 'feature_type',
            'test_repeats', 'manual_seed', 'mark_no_feature_to_unknown', 'data_root_2d_fused_feature', 'amp')
    return {'model': file_digest(cfg.model_path)['sha1'] if cfg.feature_type != 'fusion' else None,
            'text_embeddings': array_digest(text_embeddings.numpy()),
            **{k: cfg.get(k) for k in keys}}


def claim_results(folder, provenance, scenes, overwrite, log):
    """Refuse to mix these results with those of another checkpoint or settings in ``folder`` (unless
    ``overwrite``, which deletes them), then record what the folder is about to hold."""
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None  # absent, or cut by a crash: judged by the other files below
    legacy = old is None and any(os.path.exists(os.path.join(folder, n)) for n in SPLIT_OUTPUTS)
    differs = legacy or (old is not None and old.get('provenance') != provenance)
    if differs and not overwrite:
        what = ('results of an unknown origin (no eval_manifest.json)' if legacy else
                'results of ' + ', '.join(f'{k} {(old.get("provenance") or {}).get(k)!r}' for k in provenance
                                          if (old.get('provenance') or {}).get(k) != provenance[k]))
        raise ExistingResultsError(f"'{folder}' holds {what}; this run would mix its files with them. Give another "
                                   f"save_folder, or overwrite True to delete them first")
    if differs:
        old_scenes = old.get('scenes', []) if old else []
        for name in [p.format(s) for s in old_scenes for p in SCENE_OUTPUTS] + list(SPLIT_OUTPUTS):
            if os.path.isfile(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
        log(f"overwrite True: deleted the earlier results in '{folder}'")
    atomic_write_text(path, json.dumps({'provenance': provenance, 'scenes': scenes, 'code': code_version()},
                                       indent=2))

STAGE_NAMES = {'distill': 'ESG 3D network', 'fusion': '2D fused features', 'ensemble': '2D-3D ensemble'}
# ESS inference's rows (eval_openseg_pre_train.py) shown beside the network: the PLG formula on the raw features
# and the ESS embeddings' argmax
STAGE_ROWS = (('PLG pseudo labels (GT tags)', 'raw fused, scene-label mask (PLG formula per point)'),
              ('ESS embeddings, argmax', 'ESS adapted, argmax'))


def stage_comparison(cfg, logger, num_points):
    """[(series name, {class: IoU all points})] of PLG and ESS on ``split`` from ``stage_metrics``, or [] (said in
    the log) when the key is empty, the file does not exist yet, has no per-class values for the split, or scored
    another number of labelled points than this evaluation (``num_points``): then it is about other data."""
    path = cfg.get('stage_metrics', '')
    if not path:
        return []
    if not os.path.isfile(path):
        logger.info(f"stage_metrics '{path}' does not exist (run ESS inference first): the bar chart shows this "
                    f"evaluation alone")
        return []
    with open(path) as f:
        metrics = json.load(f)
    rows = metrics.get(cfg.split, {})
    series = [(name, rows[key]['iou_all_points']) for name, key in STAGE_ROWS if 'iou_all_points' in rows.get(key, {})]
    counts = {rows[key].get('num_points') for _, key in STAGE_ROWS if key in rows}
    if series and counts != {num_points}:
        logger.info(f"stage_metrics '{path}' scored {sorted(counts, key=str)} labelled points on '{cfg.split}', this "
                    f"evaluation {num_points}: other data, so the bar chart shows this evaluation alone")
        return []
    if not series:
        logger.info(f"stage_metrics '{path}' has no per-class IoU of split '{cfg.split}' (rerun ESS inference with "
                    f"'{cfg.split}' in its splits): the bar chart shows this evaluation alone")
    return series


def main(argv=None):
    return run_stage(argv, SCHEMA, lambda cfg, stage: evaluate_split(cfg, stage.dist, stage.device, stage.logger),
                     title='evaluation', record='eval', folder='save_folder', distributed=True, sparse=True)


def _number(value):
    """A float for the JSON summary, None where no class was there to average (NaN)."""
    return None if value is None or np.isnan(value) else float(value)


def evaluate_split(cfg, dist_info, device, logger):
    set_seed(cfg.manual_seed)
    timer = Timer()
    info = dataset_info(cfg.labelset)
    fmiou_exclude = fmiou_classes(info.labels, cfg.fmiou_exclude)  # a class the label set lacks stops the run here
    text_embeddings = class_text_embeddings(cfg, info, 'cpu')

    model = None
    if cfg.feature_type != 'fusion':  # 'fusion' scores the 2D features, no network (as OpenScene)
        model, state = build_model(cfg.model_path, network_values(cfg), device, logger.warning)
        logger.info(f"loaded '{cfg.model_path}' ({state['epoch']} epochs trained, best val mIoU "
                    f"{state['best_metric']:.4f})")

    val_set = eval_split(cfg, cfg.split)
    if du.is_main_process():
        claim_results(cfg.save_folder, evaluation_provenance(cfg, text_embeddings),
                      [scene_name(p) for p in val_set.data_paths], cfg.overwrite, logger.info)
    du.barrier()
    conf, conf_first = predict_split(model, val_set, text_embeddings, device=device,
                         test_repeats=cfg.test_repeats, seed=cfg.manual_seed, feature_type=cfg.feature_type,
                         fused_feature_root=cfg.data_root_2d_fused_feature,
                         mark_no_feature_to_unknown=cfg.mark_no_feature_to_unknown, amp=cfg.amp,
                         rank=dist_info.rank, world_size=dist_info.world_size, workers=cfg.workers,
                         on_scene=scene_writer(cfg, val_set, info), log=logger.info)
    reduce_device = device if device.type == 'cuda' else 'cpu'
    conf = du.all_reduce_array(conf, device=reduce_device)
    conf_first = du.all_reduce_array(conf_first, device=reduce_device)
    result = evaluate_confusion(conf, info.labels, fmiou_exclude=fmiou_exclude)
    first = evaluate_confusion(conf_first, info.labels)  # one voxelisation, upstream's single-run number
    # points no view saw count as misses in IoU too: the number to compare 2D labels with a 3D network
    strict = evaluate_confusion(conf, info.labels, no_feature_in_iou=True)
    coverage = 1.0 - conf[info.num_classes].sum() / max(conf.sum(), 1)

    summary = {'feature_type': cfg.feature_type, 'split': cfg.split, 'test_repeats': cfg.test_repeats,
               'model_path': cfg.model_path, 'num_scenes': len(val_set.data_paths), 'num_points': result['num_points'],
               'miou': result['miou'], 'macc': result['macc'], 'miou_present': result['miou_present'],
               # beside the paper's mIoU: f-mIoU and, for ScanNet200, head / common / tail (pipeline/metric.py)
               'fmiou': result['fmiou'], 'fmiou_present': _number(result['fmiou_present']),
               'fmiou_exclude': result['fmiou_exclude'], 'split_miou': result['split_miou'],
               'split_miou_present': {k: _number(v) for k, v in result['split_miou_present'].items()},
               'miou_all_points': strict['miou'], 'miou_first_repeat': first['miou'], 'coverage': float(coverage),
               'iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(info.labels, result['iou'])},
               'wall_time_s': timer.elapsed()}
    if du.is_main_process():
        table = format_table(result)
        logger.info(f"{cfg.split}: {len(val_set.data_paths)} scenes, {cfg.feature_type}, {cfg.test_repeats} repeat(s)\n"
                    f"{table}\ncoverage {coverage:.3f}; mIoU of the first voxelisation alone {first['miou']:.4f}")
        atomic_write_text(os.path.join(cfg.save_folder, 'metrics.txt'), table + '\n')
        atomic_write_text(os.path.join(cfg.save_folder, 'eval_summary.json'), json.dumps(summary, indent=2))
        compare = stage_comparison(cfg, logger, result['num_points'])
        result['series_name'] = STAGE_NAMES.get(cfg.feature_type, cfg.feature_type)
        iou_bar_chart(result, os.path.join(cfg.save_folder, 'iou_per_class.png'), compare=compare,
                      title=f"{cfg.labelset} {cfg.split}: per-class IoU" + (', all points' if compare else '') +
                            f" ({cfg.feature_type})\nmIoU {result['miou']:.3f} (upstream's: IoUs summed over the "
                            f"classes present, divided by all {len(result['class_names'])})")
        logger.info(f"predictions and pictures in '{cfg.save_folder}'")
    return summary


if __name__ == '__main__':
    run_cli(main)
