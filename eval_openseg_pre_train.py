"""ESS inference (paper §3.3; docs/method.md): write the adapted ("indoor-aware") embeddings for ESG.

    python eval_openseg_pre_train.py --config config/scannet/openseg_pre_eval.yaml [key value ...]

For every scene of ``splits`` the trained adapter maps each covered point's fused embedding x to a(x),
written as ``<ess_embedding_path>/<scene>_0.pt`` in the fused-feature format (float16 ``feat`` [M, D],
the same ``mask_full``, exactly the two keys OpenScene's loader expects); ESG reads these files as its
targets. As upstream, the adapted embeddings are written un-normalised (ESG's cosine loss does not care).
Their provenance (the adapter's weights, the input feature files) is kept in
``<ess_embedding_path>/ess_manifest.jsonl``: with ``overwrite False`` a rerun reuses a scene's file only
when both are unchanged, and recomputes (saying why) otherwise.

On scenes with GT it prints the mIoU of the labels the adapted embeddings give, next to those the raw
fused embeddings give (the PLG formula per point), both
  - as argmax of the logits (upstream's ESS evaluation) and
  - with the scene-level label mask (the PLG formula; "adapted pseudo labels"),
each over the covered points (as upstream) and over all points (uncovered = 'unlabeled', counted as a
miss in IoU too: ``metric.evaluate(no_feature_in_iou=True)``; upstream's metric leaves such points out
of IoU, which makes its all-points mIoU equal the covered one). Labels are computed from the float16 embeddings as
written, so a rerun that skips finished scenes prints the same numbers.
"""
import hashlib
import json
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from dataset import formats
from dataset.ess_loader import ESSSceneDataset, collate_scene
from dataset.fused_features import feature_root
from dataset.label_constants import dataset_info
from pipeline import metric
from pipeline.networks import build_adapter
from pipeline.pseudo_labels import pseudo_labels_from_features, scene_label_mask
from pipeline.schemas import ESS_INFERENCE
from pipeline.stage import class_text_embeddings, run_stage
from util.checkpoint import load_checkpoint
from util.cli import run_cli
from util.io import atomic_write_text
from util.misc import Timer, set_seed
from util.progress import progress
from util.provenance import OutputManifest, code_version

CHUNK = 65536  # points per forward pass: bounds memory on 500k-point scenes

SCHEMA = ESS_INFERENCE

# the label variants scored on scenes with GT: name -> (embeddings, use the scene-level label mask)
VARIANTS = {
    'ESS adapted, argmax': ('adapted', False),
    'ESS adapted, scene-label mask (adapted pseudo labels)': ('adapted', True),
    'raw fused, argmax': ('raw', False),
    'raw fused, scene-label mask (PLG formula per point)': ('raw', True),
}


@torch.no_grad()
def adapt_scene(model, feat, device):
    out = [model.adapt(feat[s:s + CHUNK].to(device)).cpu() for s in range(0, feat.shape[0], CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, model.feat_dim)


def adapter_identity(model):
    """A short hash of the adapter's weights, part of the provenance of every output: a rerun skips a scene
    only when its file came from these very weights (a retrained adapter rewrites everything)."""
    digest = hashlib.sha1()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return 'ess-adapter:' + digest.hexdigest()[:16]


def load_written(path, mask_full, feat_dim):
    """A previously written output, checked against the scene it claims to be."""
    feat, mask = formats.load_fused_features(path, num_points=mask_full.shape[0], feat_dim=feat_dim)
    if not torch.equal(mask, mask_full):
        raise formats.FormatError(f"ESS embeddings '{path}': 'mask_full' differs from the input fused features' "
                                  f"mask; it was written from other features: rerun with overwrite True")
    return feat


def main(argv=None):
    # the embeddings folder and the folder of the log / metrics (the ESS training run's): one run at a time
    return run_stage(argv, SCHEMA, lambda cfg, stage: infer(cfg, stage.device, stage.logger), title='ESS inference',
                     record='ess_infer', folder='save_path', also_lock=('ess_embedding_path',),
                     experiment_inputs=('ess_embedding_path',))


def infer(cfg, device, logger):
    set_seed(cfg.manual_seed)
    info = dataset_info(cfg.labelset)
    fmiou_exclude = metric.fmiou_classes(info.labels, cfg.fmiou_exclude)  # checked before anything slow
    text_embeddings = class_text_embeddings(cfg, info, 'cpu')
    roots = {split: feature_root(cfg.data_root_2d_fused_feature, cfg.data_root_2d_fused_feature_val, split,
                                 cfg.val_split) for split in cfg.splits}
    for split in cfg.splits:
        if os.path.realpath(cfg.ess_embedding_path) == os.path.realpath(roots[split]):
            raise ValueError(f"ess_embedding_path '{cfg.ess_embedding_path}' is the fused-feature folder of split "
                             f"'{split}': the adapted embeddings would replace their own input; choose another folder")

    # ---- model: the trained adapter (best.pth of the training run by default)
    model = build_adapter(text_embeddings, cfg.feature_2d_extractor, cfg.adapter_reduction,
                          cfg.adapter_alpha).to(device).eval()
    model_path = cfg.model_path or os.path.join(cfg.save_path, 'best.pth')
    state = load_checkpoint(model_path, model, map_location=device)
    source = adapter_identity(model)
    logger.info(f"adapter '{model_path}' (epoch {state['epoch']}, val mIoU {state['best_metric']:.4f}, {source})")

    # ---- loop over scenes: write a(x) for every covered point; score labels where GT exists
    settings = {'stage': 'ess-inference', 'adapter': source, 'feat_dim': model.feat_dim}
    manifest = OutputManifest(cfg.ess_embedding_path, 'ess', settings)
    results, timer = {}, Timer()
    num_classes = info.num_classes
    for split in cfg.splits:
        dataset = ESSSceneDataset(cfg.data_root, split, roots[split], num_classes,
                                  feat_dim=model.feat_dim)
        loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=cfg.workers, collate_fn=collate_scene)
        # per-variant confusion matrices summed over scenes (ScanNet train has ~1e8 points): covered points
        # only (upstream's ESS evaluation) and all points (uncovered = 'unlabeled', a miss in IoU too)
        conf = {name: np.zeros((num_classes + 1, num_classes + 1), np.int64) for name in VARIANTS}
        conf_all = {name: np.zeros((num_classes + 1, num_classes + 1), np.int64) for name in VARIANTS}
        n_points = n_covered = n_scored = written = skipped = 0
        for item in progress(loader, f'ESS inference {split}', log=logger.info, unit='scene'):
            out_path = os.path.join(cfg.ess_embedding_path, f"{item['scene']}_0.pt")
            current, why = manifest.check(item['scene'], [*item['feat_paths'], model_path], [out_path])
            if current and not cfg.overwrite:
                adapted = load_written(out_path, item['mask_full'], model.feat_dim)
                skipped += 1
            else:
                if os.path.exists(out_path) and not cfg.overwrite:
                    logger.info(f"recomputing '{item['scene']}': {why}")
                adapted = adapt_scene(model, item['feat'], device)
                formats.save_fused_features(out_path, adapted, item['mask_full'])
                manifest.record(item['scene'], [*item['feat_paths'], model_path], [out_path])
                adapted, written = adapted.half(), written + 1
            if not item['has_labels']:
                continue
            mask = item['mask_full'].numpy()
            scene_mask = scene_label_mask(item['gt'], num_classes)  # scene-level label from GT (upstream)
            for name, (kind, use_mask) in VARIANTS.items():
                feats = adapted if kind == 'adapted' else item['feat']
                # the PLG formula: softmax of dot products, -999 outside the scene label, argmax; without
                # the mask this is argmax(a(x) T^T), upstream's ESS evaluation
                labels, _ = pseudo_labels_from_features(feats, text_embeddings, scene_mask if use_mask else None,
                                                        chunk_size=CHUNK, device=device)
                full = np.full(mask.shape[0], info.unlabeled_index, np.int64)
                full[mask] = labels
                conf[name] += metric.confusion_matrix(labels, item['gt'][mask], num_classes)
                conf_all[name] += metric.confusion_matrix(full, item['gt'], num_classes)
            n_points, n_covered, n_scored = n_points + mask.shape[0], n_covered + int(mask.sum()), n_scored + 1
        logger.info(f"{split}: {written} scenes written, {skipped} already done by this adapter (overwrite False), "
                    f"outputs in '{cfg.ess_embedding_path}'  [{timer.elapsed():.1f} s]")
        if not n_scored:
            logger.info(f'{split}: no GT labels, nothing to score')
            continue
        results[split] = {}
        for name in VARIANTS:
            covered = metric.evaluate_confusion(conf[name], info.labels, fmiou_exclude=fmiou_exclude)
            all_points = metric.evaluate_confusion(conf_all[name], info.labels, no_feature_in_iou=True,
                                                   fmiou_exclude=fmiou_exclude)
            per_class = lambda r: {n: (None if np.isnan(v) else float(v)) for n, v in zip(info.labels, r['iou'])}
            results[split][name] = {'miou_covered': covered['miou'], 'miou_all_points': all_points['miou'],
                                    'macc_covered': covered['macc'], 'macc_all_points': all_points['macc'],
                                    # beside mIoU: f-mIoU, and ScanNet200's head / common / tail (pipeline/metric.py)
                                    'fmiou_covered': covered['fmiou'], 'fmiou_all_points': all_points['fmiou'],
                                    'fmiou_exclude': covered['fmiou_exclude'],
                                    'split_miou_covered': covered['split_miou'],
                                    'split_miou_all_points': all_points['split_miou'],
                                    # per class, for evaluate.py's bar chart of PLG / ESS / ESG side by side
                                    'iou_covered': per_class(covered), 'iou_all_points': per_class(all_points),
                                    'num_points': all_points['num_points']}  # labelled points: identifies the data
            if name == 'ESS adapted, argmax':
                logger.info(f'{split}: per-class IoU of the ESS adapted labels (argmax, covered points)\n'
                            + metric.format_table(covered))
        lines = [f'{split}: mIoU against GT ({n_points} points, {n_covered} covered; upstream mIoU = sum over '
                 f'classes present / {num_classes})',
                 f"  {'labels':<56s} {'covered':>8s} {'all points':>11s}"
                 + ('' if fmiou_exclude is None else f"   f-mIoU {'covered':>8s} {'all points':>11s}")]
        for name, r in results[split].items():
            lines.append(f"  {name:<56s} {r['miou_covered']:8.4f} {r['miou_all_points']:11.4f}"
                         + ('' if fmiou_exclude is None else
                            f"          {r['fmiou_covered']:8.4f} {r['fmiou_all_points']:11.4f}"))
        if fmiou_exclude is not None:
            lines.append(f"  (f-mIoU: without {', '.join(fmiou_exclude)}, the same rule over the other classes)")
        logger.info('\n'.join(lines))
    manifest.close()
    if results:
        provenance = {'settings': settings, 'model_path': model_path, 'code': code_version()}
        atomic_write_text(os.path.join(cfg.save_path, 'ess_eval_metrics.json'),
                          json.dumps(dict(results, provenance=provenance), indent=2))
    return results


if __name__ == '__main__':
    run_cli(main)
