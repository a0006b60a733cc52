"""ESS, Embeddings Specialization Stage (paper §3.3; docs/method.md): train the embedding adapter.

    python train_openseg_pre_train.py --config config/scannet/openseg_pre_train.yaml [key value ...]

The fused 2D embedding x of every covered training point goes through the adapter
a(x) = W2(W1 x)(1 - alpha) + x alpha, is classified against the frozen CLIP text embeddings
(logits = a(x) T^T) and trained with cross-entropy against the PLG pseudo labels ('unlabeled' ignored).
After every epoch the val mIoU of argmax(logits) against GT is measured; ``best.pth`` (by that mIoU)
and ``last.pth`` go to ``save_path``. ``resume <save_path>/last.pth`` continues exactly where the run
stopped: data order and point draws depend only on (manual_seed, epoch). A fresh run into a folder that
holds checkpoints is refused unless ``overwrite True``; the folder is locked while the run writes
(``util/run_folder.py``). A non-finite loss stops the run naming the epoch, the batch and its scenes.
"""
import math
import warnings

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dataset.ess_loader import EpochShuffleSampler, ESSPointDataset, ESSSceneDataset, collate_scene
from dataset.label_constants import dataset_info
from pipeline import metric
from pipeline.keys import (NON_NEGATIVE, POSITIVE, POSITIVE_INT, dataset_keys, resume_key, run_keys, text_keys,
                           workers_key)
from pipeline.networks import build_adapter
from pipeline.text_embeddings import text_embeddings_from_config
from util.checkpoint import check_same_schedule, load_checkpoint, repair_best, save_best_and_last
from util.cli import run_cli
from util.config import Key, Schema, check_one_experiment, load_config
from util.misc import AverageMeter, Timer, batch_scene_names, format_eta, get_device, set_seed
from util.progress import progress
from util.provenance import check_upstream, refresh_command
from util.run_folder import RunFolder
from util.tensorboard import close_writer, create_writer, log_scalars

CHUNK = 65536  # points per forward pass at validation: bounds memory on 500k-point scenes

ADAPTER_KEYS = [
    Key('adapter_reduction', int, 4, 'bottleneck width = D / adapter_reduction (upstream 4: 768 -> 192)', 'ESS',
        **POSITIVE_INT),
    Key('adapter_alpha', float, 0.05, 'share of the identity in a(x) (upstream 0.05)', 'ESS',
        check=lambda v: 0 <= v <= 1, must='a number in [0, 1]'),
]

MAX_POINTS_PER_SCENE = 10_000_000  # num_points above this is a typo that would allocate gigabytes per step

SCHEMA = Schema('ESS: train the embedding adapter on the PLG pseudo labels', [
    *dataset_keys(),
    *text_keys(),
    Key('pseudo_label_path', str, '${exp_root}/plg', "PLG's output folder", 'DATA', exists='dir',
        hint='run PLG first (vlm_ps_generation/generation_vlm.sh)'),
    Key('cache_scenes', bool, False, 'keep every scene in memory after its first read', 'DATA'),
    *ADAPTER_KEYS,
    Key('num_points', int, 40000, 'covered points drawn per scene per step (upstream 40,000)', 'TRAIN',
        check=lambda v: 0 < v <= MAX_POINTS_PER_SCENE,
        must=f'a positive integer up to {MAX_POINTS_PER_SCENE:,} (a ScanNet scene has ~150,000 points; each one drawn '
             f'costs a row of the batch)'),
    Key('batch_size', int, 24, 'scenes per step (upstream code 24; the paper says 16)', 'TRAIN', **POSITIVE_INT),
    Key('epochs', int, 150, 'epochs (upstream code 150; the paper says 80)', 'TRAIN', **POSITIVE_INT),
    Key('base_lr', float, 0.003, 'Adam learning rate', 'TRAIN', **POSITIVE),
    Key('betas', list, [0.9, 0.999], 'Adam betas', 'TRAIN', item=float,
        check=lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), must='two numbers in [0, 1)'),
    Key('weight_decay', float, 0.0004, 'Adam weight decay', 'TRAIN', **NON_NEGATIVE),
    Key('step_epoch', int, 20, 'StepLR step (stepped at the start of every epoch, as upstream)', 'TRAIN',
        **POSITIVE_INT),
    Key('multiplier', float, 0.7, 'StepLR gamma', 'TRAIN', **POSITIVE),
    Key('eval_freq', int, 1, 'validate every eval_freq epochs (and after the last)', 'TRAIN', **POSITIVE_INT),
    resume_key('TRAIN'),
    Key('tensorboard', bool, True, 'write TensorBoard scalars to <save_path>/tensorboard', 'TRAIN'),
    workers_key(),
    *run_keys('save_path', '${exp_root}/ess', seed=2023),
], example='python train_openseg_pre_train.py --config config/scannet/openseg_pre_train.yaml epochs=80 batch_size=16')


def val_feature_root(cfg):
    """Upstream reads val features from another folder than train ones; '' means the same folder."""
    return cfg.data_root_2d_fused_feature_val or cfg.data_root_2d_fused_feature


@torch.no_grad()
def predict_covered(model, feat, device):
    """argmax of the adapted logits for every covered point (rows of a fused-feature file)."""
    preds = [model(feat[s:s + CHUNK].to(device)).argmax(1).cpu() for s in range(0, feat.shape[0], CHUNK)]
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


@torch.no_grad()
def validate(model, loader, info, device, log=None):
    """Val mIoU of argmax(adapted logits) against GT.

    'covered' scores the covered points only, as upstream (its val loader holds nothing else; upstream
    also subsamples num_points of them at random, we score all of them so the number is not noisy).
    'all points' scores every point, an uncovered one predicted 'unlabeled' and counted as a miss in IoU
    too (``no_feature_in_iou``; upstream's metric drops such points from IoU, which would make this
    number equal the covered one).
    """
    model.eval()
    covered_pred, covered_gt, all_pred, all_gt = [], [], [], []
    for item in progress(loader, 'ESS validation', log=log, unit='scene'):
        pred = predict_covered(model, item['feat'], device)
        mask = item['mask_full'].numpy()
        full = np.full(mask.shape[0], info.unlabeled_index, np.int64)
        full[mask] = pred
        covered_pred.append(pred), covered_gt.append(item['gt'][mask])
        all_pred.append(full), all_gt.append(item['gt'])
    covered = metric.evaluate(np.concatenate(covered_pred), np.concatenate(covered_gt), info.labels)
    all_points = metric.evaluate(np.concatenate(all_pred), np.concatenate(all_gt), info.labels, no_feature_in_iou=True)
    return covered, all_points


def train_one_epoch(model, loader, criterion, optimizer, device, epoch, desc, batch_scenes):
    """One pass over the training scenes; ``batch_scenes(i)`` names the scenes of batch i (for errors)."""
    model.train()
    loss_meter = AverageMeter()
    for i, (feats, labels) in enumerate(progress(loader, desc, unit='step')):
        feats, labels = feats.to(device), labels.to(device)
        logits = model(feats)                                    # [B, P, C]
        # mean over all non-ignored points of the batch, as upstream's CrossEntropyLoss on [B, C, P]
        loss = criterion(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(non_finite_loss_message(loss.item(), epoch, i, batch_scenes(i), feats, model))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_meter.update(loss.item(), feats.shape[0])
    return loss_meter.avg


def non_finite_loss_message(loss, epoch, batch, scenes, feats, model):
    """Where a non-finite loss came from: the input features (a bad file) or the weights (divergence)."""
    where = f'ESS loss is {loss} at epoch {epoch + 1}, batch {batch + 1} (scenes {", ".join(scenes)})'
    if not torch.isfinite(feats).all():
        return f'{where}: the fused features of these scenes hold NaN / Inf; fix or regenerate their feature files'
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return f'{where}: the adapter weights became non-finite (training diverged); lower base_lr'
    return f'{where}: inputs and weights are finite, so the logits overflowed; lower base_lr'


def step_scheduler_at_epoch_start(scheduler):
    """Upstream calls ``scheduler.step()`` at the start of every epoch, before any optimizer step, so
    the first decay happens after 19 epochs, then every 20; we keep that schedule."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Detected call of `lr_scheduler.step\\(\\)` before')
        scheduler.step()
    return scheduler.get_last_lr()[0]


# what a run writes into its folder; a fresh run into a folder holding any of them is refused (util/run_folder.py)
RUN_OUTPUTS = ('last.pth', 'best.pth', 'tensorboard')


def main(argv=None):
    cfg = load_config(argv, SCHEMA)
    check_one_experiment(cfg, 'ESS training', 'save_path', ('pseudo_label_path',))
    with RunFolder(cfg.save_path, 'ESS training') as folder:
        cfg.resume = folder.check_fresh_or_resume(resume=cfg.resume, overwrite=cfg.overwrite, outputs=RUN_OUTPUTS)
        device = get_device(cfg.device)
        return train(cfg, device, folder.start('ess_train', cfg, SCHEMA, device))


def train(cfg, device, logger):
    set_seed(cfg.manual_seed)
    info = dataset_info(cfg.labelset)
    text_embeddings = text_embeddings_from_config(cfg, info, 'cpu')

    # ---- data: covered points with pseudo labels (train), every covered point with GT (val)
    train_set = ESSPointDataset(cfg.data_root, cfg.train_split, cfg.data_root_2d_fused_feature, cfg.num_points,
                                info.num_classes, label_source='pseudo', pseudo_label_path=cfg.pseudo_label_path,
                                feat_dim=text_embeddings.shape[1], seed=cfg.manual_seed, cache=cfg.cache_scenes)
    check_upstream(cfg.pseudo_label_path, 'plg', train_set.scenes, 'ESS training', refresh_command(
        'vlm_ps_generation/generation_vlm.py', cfg.pseudo_label_path, 'plg_config.yaml',
        'vlm_ps_generation/generation_vlm.sh'), current_inputs=train_set.reader.scene_inputs)
    sampler = EpochShuffleSampler(len(train_set), seed=cfg.manual_seed)
    # drop_last as upstream: every step sees batch_size scenes
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              drop_last=True)
    if len(train_loader) == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(train_set)} training scenes in "
                         f"'{cfg.data_root}/{cfg.train_split}': no full batch; lower batch_size")
    val_set = ESSSceneDataset(cfg.data_root, cfg.val_split, val_feature_root(cfg), info.num_classes,
                              feat_dim=text_embeddings.shape[1], cache=cfg.cache_scenes)
    val_loader = DataLoader(val_set, batch_size=1, shuffle=False, num_workers=cfg.workers, collate_fn=collate_scene)
    logger.info(f'{len(train_set)} train scenes ({len(train_loader)} steps / epoch), {len(val_set)} val scenes')

    # ---- model: adapter + frozen text classifier; Adam + StepLR as upstream
    model = build_adapter(cfg, text_embeddings).to(device)
    criterion = nn.CrossEntropyLoss(ignore_index=info.unlabeled_index)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.base_lr, betas=tuple(cfg.betas), eps=1e-8,
                                 weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epoch, gamma=cfg.multiplier)
    start_epoch, best_miou, best_epoch, history = 0, -math.inf, None, []
    if cfg.resume:
        state = load_checkpoint(cfg.resume, model, optimizer, scheduler, map_location=device)
        check_same_schedule(cfg.resume, state, cfg, ('base_lr', 'step_epoch', 'multiplier'),
                            'the StepLR schedule (base_lr x multiplier every step_epoch epochs) is kept in the '
                            'checkpoint')
        repair_best(cfg.save_path, cfg.resume, state, logger.info)
        start_epoch, best_miou, best_epoch = state['epoch'], state['best_metric'], state['best_epoch']
        history = [tuple(h) for h in state['extra'].get('val_miou', [])]  # (epoch, val mIoU)
        logger.info(f"resumed from '{cfg.resume}': {start_epoch} epochs done, best val mIoU {best_miou:.4f}")
    writer = create_writer(cfg.save_path, enabled=cfg.tensorboard)

    # ---- loop (TensorBoard's x-axis: optimiser steps, as ESG's)
    timer = Timer()
    for epoch in range(start_epoch, cfg.epochs):
        lr = step_scheduler_at_epoch_start(scheduler)
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loss = train_one_epoch(model, train_loader, criterion, optimizer, device, epoch, f'epoch {epoch + 1}/{cfg.epochs}',
                               batch_scene_names(sampler, train_set.scenes.__getitem__, cfg.batch_size))
        scalars, message, is_best = {'train/loss': loss, 'train/lr': lr}, '', False
        # upstream validates after every epoch (eval_freq 1); the last epoch is always validated
        if (epoch + 1) % cfg.eval_freq == 0 or epoch + 1 == cfg.epochs:
            covered, all_points = validate(model, val_loader, info, device, logger.info)
            history.append((epoch + 1, covered['miou']))
            is_best = covered['miou'] > best_miou
            best_miou = max(best_miou, covered['miou'])
            best_epoch = epoch + 1 if is_best else best_epoch
            scalars.update({'val/miou': covered['miou'], 'val/miou_all_points': all_points['miou'],
                            **metric.per_class_scalars(covered, 'val/iou')})
            message = (f"  val mIoU {covered['miou']:.4f} (covered points)  {all_points['miou']:.4f} (all points, "
                       f"uncovered = wrong)  best {best_miou:.4f}{'  *' if is_best else ''}")
        save_best_and_last(cfg.save_path, is_best, model=model, optimizer=optimizer, scheduler=scheduler,
                           epoch=epoch + 1, best_metric=best_miou, best_epoch=best_epoch,
                           extra={'val_miou': history, 'config': dict(cfg)})
        log_scalars(writer, scalars, (epoch + 1) * len(train_loader))
        eta = format_eta(timer.elapsed() / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1))
        logger.info(f'epoch {epoch + 1}/{cfg.epochs}  lr {lr:.2e}  loss {loss:.4f}{message}  '
                    f'[{timer.elapsed():.1f} s, ETA {eta}]')
    close_writer(writer)
    if history:
        best_epoch, best = max(history, key=lambda h: h[1])
        logger.info(f"done: best val mIoU {best:.4f} at epoch {best_epoch}; "
                    f"checkpoints in '{cfg.save_path}' (best.pth, last.pth)")
    return best_miou


if __name__ == '__main__':
    run_cli(main)
