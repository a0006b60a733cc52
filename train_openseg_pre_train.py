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
from dataset.fused_features import feature_root
from dataset.label_constants import dataset_info
from pipeline import metric, training
from pipeline.networks import build_adapter
from pipeline.schemas import ESS_TRAINING
from pipeline.stage import class_text_embeddings, run_stage
from util.checkpoint import check_same_schedule, save_best_and_last
from util.cli import run_cli
from util.misc import AverageMeter, batch_scene_names, set_seed
from util.progress import progress
from util.provenance import check_upstream, refresh_command
from util.tensorboard import create_writer

CHUNK = 65536  # points per forward pass at validation: bounds memory on 500k-point scenes

SCHEMA = ESS_TRAINING


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
    return training.non_finite_loss_message(
        'ESS', loss, epoch, batch, scenes,
        [(feats, 'the fused features of these scenes hold NaN / Inf; fix or regenerate their feature files')], model,
        'inputs and weights are finite, so the logits overflowed; lower base_lr', network='adapter', unit='batch')


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
    return run_stage(argv, SCHEMA, lambda cfg, stage: train(cfg, stage.device, stage.logger), title='ESS training',
                     record='ess_train', folder='save_path', resume_outputs=RUN_OUTPUTS,
                     experiment_inputs=('pseudo_label_path',))


def train(cfg, device, logger):
    set_seed(cfg.manual_seed)
    info = dataset_info(cfg.labelset)
    text_embeddings = class_text_embeddings(cfg, info, 'cpu')

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
    val_root = feature_root(cfg.data_root_2d_fused_feature, cfg.data_root_2d_fused_feature_val, cfg.val_split,
                            cfg.val_split)
    val_set = ESSSceneDataset(cfg.data_root, cfg.val_split, val_root, info.num_classes,
                              feat_dim=text_embeddings.shape[1], cache=cfg.cache_scenes)
    val_loader = DataLoader(val_set, batch_size=1, shuffle=False, num_workers=cfg.workers, collate_fn=collate_scene)
    logger.info(f'{len(train_set)} train scenes ({len(train_loader)} steps / epoch), {len(val_set)} val scenes')

    # ---- model: adapter + frozen text classifier; Adam + StepLR as upstream
    model = build_adapter(text_embeddings, cfg.feature_2d_extractor, cfg.adapter_reduction,
                          cfg.adapter_alpha).to(device)
    criterion = nn.CrossEntropyLoss(ignore_index=info.unlabeled_index)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.base_lr, betas=tuple(cfg.betas), eps=1e-8,
                                 weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epoch, gamma=cfg.multiplier)

    def run_epoch(epoch, validation_left):  # the StepLR schedule is upstream's: stepped before the epoch's steps
        lr = step_scheduler_at_epoch_start(scheduler)
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        scenes_of = batch_scene_names(sampler, train_set.scenes.__getitem__, cfg.batch_size)
        return train_one_epoch(model, train_loader, criterion, optimizer, device, epoch,
                               f'epoch {epoch + 1}/{cfg.epochs}', scenes_of), lr

    def validate_epoch(epoch):
        covered, all_points = validate(model, val_loader, info, device, logger.info)
        return training.Validation(covered['miou'], {'val/miou': covered['miou'],
                                                     'val/miou_all_points': all_points['miou'],
                                                     **metric.per_class_scalars(covered, 'val/iou')},
                                   f" (covered points)  {all_points['miou']:.4f} (all points, uncovered = wrong)")

    # upstream validates after every epoch (eval_freq 1); the last epoch is always validated
    trainer = training.Trainer(model=model, optimizer=optimizer, scheduler=scheduler, epochs=cfg.epochs,
                               steps_per_epoch=len(train_loader), run_epoch=run_epoch, validate=validate_epoch,
                               eval_freq=cfg.eval_freq, save_path=cfg.save_path, logger=logger, report='epoch',
                               extra=lambda: {'config': dict(cfg)}, done_note=' (best.pth, last.pth)',
                               save=save_best_and_last)
    if cfg.resume:
        trainer.resume(cfg.resume, map_location=device, check=lambda state: check_same_schedule(
            cfg.resume, state, {k: cfg[k] for k in ('base_lr', 'step_epoch', 'multiplier')},
            'the StepLR schedule (base_lr x multiplier every step_epoch epochs) is kept in the checkpoint'))
    # TensorBoard's x-axis: optimiser steps, as ESG's
    return trainer.fit(create_writer(cfg.save_path, enabled=cfg.tensorboard)).best_metric


if __name__ == '__main__':
    run_cli(main)
