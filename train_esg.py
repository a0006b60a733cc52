"""ESG, Embeddings Soft-Guidance Stage (paper §3.4; docs/method.md): distil the ESS embeddings into a 3D network.

    python train_esg.py --config config/scannet/openseg_train.yaml [key value ...]
    torchrun --nproc_per_node=4 train_esg.py --config config/scannet/openseg_train.yaml   # DDP

A sparse 3D U-Net (DisNet = MinkUNet18A, input: point colours on 2 cm voxels) regresses, for every voxel
that has one, the ESS-adapted ("indoor-aware") embedding written by ``eval_openseg_pre_train.py``:
    loss = mean over covered voxels of (1 - cos(f_3D(v), e_ESS(v)))        (or L1, ``loss_type: l1``)
Voxels no view saw get no loss; the network fills them from geometry and colour.
``loss_type: supervised_ce`` is not the method but its ceiling: the same network trained with the
cross-entropy of ``f_3D(v) @ T^T`` against the ground-truth label of every annotated voxel (no 2D
feature used), the fully supervised line of the paper's tables. Validation scores
argmax(f_3D(v) @ T^T) per point against GT through ``pipeline.inference.predict_split``, the very code
``evaluate.py`` runs. ``best.pth`` (by val mIoU) and ``last.pth`` go to ``save_path``;
``resume <save_path>/last.pth`` continues exactly (the data order and the augmentations of an epoch
depend only on (manual_seed, epoch, rank)). A fresh run into a folder that holds checkpoints is refused
unless ``overwrite True``; the folder is locked while the run writes (``util/run_folder.py``). A batch the
network cannot train on (no covered voxel, or one voxel at the coarsest level) is skipped with a warning
naming its scenes; a non-finite loss stops the run, naming the scenes and what went wrong.
"""
import json
import math
import os
import time

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from dataset import fused_features
from dataset.label_constants import IGNORE_LABEL, dataset_info
from pipeline import training
from pipeline.inference import forward_voxels, predict_split
from pipeline.losses import SUPERVISED_LOSS, distillation_loss, supervised_cross_entropy
from pipeline.metric import evaluate_confusion, fmiou_classes, format_table, per_class_scalars
from pipeline.networks import build_disnet
from pipeline.schemas import ESG_TRAINING
from pipeline.stage import class_text_embeddings, eval_split, network_values, run_stage
from util import distributed as du
from util.checkpoint import check_same_schedule, save_best_and_last, unwrap_model
from util.cli import run_cli
from util.io import atomic_write_text
from util.misc import AverageMeter, batch_scene_names, format_eta, set_seed
from util.provenance import check_upstream, refresh_command
from util.tensorboard import create_writer, log_scalars

SCHEMA = ESG_TRAINING


# ----------------------------------------------------------------------------- schedule and loss
SCHEDULE_KEYS = ('epochs', 'loop', 'batch_size', 'base_lr', 'power', 'lr_x10_after_first_step')  # fixed for a run
def learning_rate(step, cfg, max_iter):
    """lr of optimiser step ``step`` (0-based), as upstream run/esg.py.

    Upstream builds Adam with base_lr, so step 0 runs at base_lr; after every step it sets every param
    group to ``10 * poly(base_lr, step + 1)`` (its ``index_split = 0`` puts all groups in the x10 branch),
    so from step 1 on the effective lr is 10x base_lr, decaying with power ``power`` to 0 at the last step.
    ``lr_x10_after_first_step: False`` gives the plain poly schedule.
    """
    if step == 0:
        return cfg.base_lr
    poly = cfg.base_lr * (1.0 - step / max_iter) ** cfg.power
    return poly * 10.0 if cfg.lr_x10_after_first_step else poly


# ----------------------------------------------------------------------------- data
def build_train_set(cfg, feat_dim):
    """Voxelised train scenes with the ESS embedding of every covered voxel; the augmentation of an item
    is a function of (manual_seed, epoch, index) (see dataset/point_loader.py)."""
    from dataset.feature_loader import FusedFeatureLoader
    return FusedFeatureLoader(datapath_prefix=cfg.data_root, datapath_prefix_feat=cfg.esg_targets,
                              voxel_size=cfg.voxel_size, split=cfg.train_split, aug=cfg.aug, loop=cfg.loop,
                              input_color=cfg.input_color, feat_dim=feat_dim, seed=cfg.manual_seed,
                              num_classes=dataset_info(cfg.labelset).num_classes,
                              missing_scenes=cfg.missing_scenes)


def epoch_seed(cfg, epoch, rank):
    """Seed of the global RNGs for one epoch (the random shift of the batch; the loader's augmentation and
    the sampler's order are functions of (manual_seed, epoch) on their own), so resume is exact."""
    return cfg.manual_seed + 1000 * epoch + rank


# ----------------------------------------------------------------------------- one epoch / validation
COARSEST_STRIDE = 16  # MinkUNet's four stride-2 levels: BatchNorm there needs >= 2 voxels in a batch


def unusable_batch(coords, mask, target='an ESS embedding (no 2D view covers them)'):
    """Why a batch cannot train the network (None if it can): no voxel with a target (``mask``: an ESS
    embedding, or a GT label for the supervised ceiling; the loss is empty), or a single voxel at the
    coarsest level (BatchNorm needs two values per channel in training)."""
    if not bool(mask.any()):
        return f'no voxel of these scenes has {target}'
    coarse = torch.cat([coords[:, :1], torch.div(coords[:, 1:4], COARSEST_STRIDE, rounding_mode='floor')], 1)
    if torch.unique(coarse, dim=0).shape[0] < 2:
        return (f'{coords.shape[0]} voxels fall into one voxel at the coarsest level (stride {COARSEST_STRIDE}), too '
                f'small for BatchNorm')
    return None


def non_finite_loss_message(loss, epoch, step, scenes, feats, feat_3d, model, amp):
    """Where a non-finite loss came from: the batch's inputs or targets (a bad file), or the network."""
    return training.non_finite_loss_message(
        'ESG', loss, epoch, step, scenes,
        [(feats, 'the input colours hold NaN / Inf; fix the 3D scene files'),
         (feat_3d, 'the ESS embeddings of these scenes hold NaN / Inf; rerun ESS inference (overwrite True)')], model,
        'inputs, targets and weights are finite, so the forward pass overflowed'
        + ('; turn amp off or use bf16' if amp not in ('off', False) else '; lower base_lr'))


def train_one_epoch(model, loader, optimizer, scaler, cfg, device, epoch, logger, writer, batch_scenes, text_embeddings,
                    validation_left=lambda: 0.0):
    """One epoch; ``validation_left()`` estimates the seconds the remaining validations take (for the ETA)."""
    model.train()
    loss_meter, step_time = AverageMeter(), AverageMeter()
    steps = len(loader)
    max_iter = cfg.epochs * steps
    lr = learning_rate(epoch * steps, cfg, max_iter)  # returned as is if the loader is empty
    supervised = cfg.loss_type == SUPERVISED_LOSS  # the ceiling: GT labels of every annotated voxel, no 2D feature
    end = time.perf_counter()
    for i, (coords, feats, labels, feat_3d, mask) in enumerate(loader):
        step = epoch * steps + i
        lr = learning_rate(step, cfg, max_iter)
        for group in optimizer.param_groups:
            group['lr'] = lr
        # as upstream: a random integer shift of the whole batch, so stride-2 pooling sees another grid
        coords[:, 1:4] += (torch.rand(3) * 100).type_as(coords)
        if int(mask.sum()) != feat_3d.shape[0]:
            raise RuntimeError(f'the loader returned {feat_3d.shape[0]} ESS embeddings for {int(mask.sum())} '
                               f'covered voxels; dataset/feature_loader.py is inconsistent')
        why = (unusable_batch(coords, labels != IGNORE_LABEL, 'a GT label') if supervised else
               unusable_batch(coords, mask))
        # every rank must take the same decision, or DDP's gradient all-reduce would wait forever
        if du.any_rank(why is not None, device=device if device.type == 'cuda' else 'cpu'):
            logger.warning(f'epoch {epoch + 1} step {i + 1}: skipped, '
                           + (f'scenes {", ".join(batch_scenes(i))}: {why}' if why else 'a batch on another process '
                              'cannot be trained on'))
            continue
        output = forward_voxels(model, coords, feats, device, cfg.amp)
        if supervised:
            loss = supervised_cross_entropy(output, labels.to(device), text_embeddings)
        else:
            loss = distillation_loss(output[mask.to(device)], feat_3d.to(device), cfg.loss_type)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(non_finite_loss_message(loss.item(), epoch, i, batch_scenes(i), feats, feat_3d,
                                                             model, cfg.amp))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_meter.update(loss.item(), coords.shape[0])
        step_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        log_scalars(writer, {'train/loss_step': loss.item(), 'train/lr': lr}, step + 1)
        if (i + 1) % cfg.print_freq == 0 or i + 1 == steps:
            eta = format_eta((max_iter - step - 1) * step_time.avg + validation_left())
            logger.info(f'epoch [{epoch + 1}/{cfg.epochs}][{i + 1}/{steps}]  loss {loss_meter.val:.4f} '
                        f'({loss_meter.avg:.4f})  lr {lr:.2e}  {step_time.avg:.2f} s/step  ETA {eta}')
    return loss_meter.avg, lr


def validate(model, val_set, text_embeddings, cfg, device, dist_info, log=None):
    """Val mIoU through the shared prediction path; scenes are split over ranks, counts all-reduced."""
    # the bare network: validation must not go through DDP's forward (it syncs buffers across ranks, which
    # would hang when the ranks hold different numbers of val scenes)
    net = unwrap_model(model)
    du.broadcast_buffers(net)  # every rank scores with the BN statistics the checkpoint holds
    conf, _ = predict_split(net, val_set, text_embeddings, device=device,
                         test_repeats=cfg.val_repeats, seed=cfg.manual_seed, amp=cfg.amp,
                         rank=dist_info.rank, world_size=dist_info.world_size, workers=cfg.workers, log=log)
    conf = du.all_reduce_array(conf, device=device if device.type == 'cuda' else 'cpu')
    return evaluate_confusion(conf, dataset_info(cfg.labelset).labels, fmiou_exclude=cfg.fmiou_exclude or None)


def validation_outcome(result, val_repeats, val_split, logger):
    """What the training loop makes of one validation: its mIoU, TensorBoard scalars and text, or None (validation
    switched off) for a val split without any labelled point (an mIoU of 0 would freeze best.pth at epoch 1)."""
    if result['num_points'] == 0:
        logger.warning(f"val split '{val_split}' has no labelled point: validation is switched off and "
                       f"best.pth follows last.pth (evaluate False skips it from the start)")
        return None
    votes = f'{val_repeats}vox'  # voxelisations summed; evaluate.py sums test_repeats of them
    # beside mIoU (which picks best.pth): f-mIoU and, for ScanNet200, head / common / tail mIoU (pipeline/metric.py)
    extra = {f'val/fmiou_{votes}': result['fmiou']} if result.get('fmiou') is not None else {}
    extra.update({f'val/miou_{split}_{votes}': v for split, v in result.get('split_miou', {}).items()})
    text = f"  mAcc {result['macc']:.4f}" + (f"  f-mIoU {result['fmiou']:.4f}" if result.get('fmiou') is not None
                                             else '')
    return training.Validation(result['miou'], {f'val/miou_{votes}': result['miou'],
                                                f'val/macc_{votes}': result['macc'], **extra,
                                                **per_class_scalars(result, f'val/iou_{votes}')},
                               text, f"  ({val_repeats} voxelisation"
                               f"{'s' if val_repeats > 1 else ''}; evaluate.py sums test_repeats)")


# ----------------------------------------------------------------------------- main
def train(cfg, dist_info, device, logger):
    """The whole stage on one process of ``dist_info`` -> (model, summary dict)."""
    set_seed(cfg.manual_seed)
    info = dataset_info(cfg.labelset)
    fmiou_classes(info.labels, cfg.fmiou_exclude)  # a class the label set lacks stops the run now, not at validation
    text_embeddings = class_text_embeddings(cfg, info, 'cpu')

    # ---- data: each rank takes batch_size / world_size scenes per step (upstream divides it the same way)
    if cfg.batch_size % dist_info.world_size:
        raise ValueError(f'batch_size {cfg.batch_size} must be a multiple of the {dist_info.world_size} processes')
    from dataset.feature_loader import collation_fn
    train_set = build_train_set(cfg, text_embeddings.shape[1])
    scenes = [train_set.scene_name(i) for i in range(len(train_set.data_paths))]
    all_scenes = fused_features.scene_names(cfg.data_root)  # ESS inference's inputs: one appearing since is stale
    check_upstream(cfg.esg_targets, 'ess', scenes, 'ESG training', refresh_command(
        'eval_openseg_pre_train.py', os.path.join(cfg.exp_root, 'ess'), 'ess_infer_config.yaml', 'run/ess_eval.sh'),
        current_inputs=lambda scene: fused_features.feature_files(cfg.data_root_2d_fused_feature, scene,
                                                                  all_scenes, required=False))
    sampler = DistributedSampler(train_set, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True,
                                 seed=cfg.manual_seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size // dist_info.world_size, sampler=sampler,
                              num_workers=cfg.workers, collate_fn=collation_fn, drop_last=True)
    if len(train_loader) == 0:
        raise ValueError(f'batch_size {cfg.batch_size} is larger than the {len(train_set)} training samples '
                         f"(scenes x loop) of '{cfg.data_root}/{cfg.train_split}': no full batch; lower batch_size")
    val_set = eval_split(cfg, cfg.val_split) if cfg.evaluate else None
    logger.info(f'{len(train_set)} train samples (loop {cfg.loop}), {len(train_loader)} steps / epoch per process'
                + (f', {len(val_set.data_paths)} val scenes' if val_set is not None else ''))

    # ---- model and optimiser (Adam, poly schedule set by hand every step as upstream)
    model = build_disnet(**network_values(cfg)).to(device)
    if dist_info.distributed:
        model = du.wrap_ddp(model, device, sync_bn=cfg.sync_bn)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.base_lr)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == 'fp16' else None
    last_result = None  # of this run's last validation, tabled at the end

    def run_epoch(epoch, validation_left):  # TensorBoard's x-axis: optimiser steps
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        scenes_of = batch_scene_names(sampler, train_set.scene_name, cfg.batch_size // dist_info.world_size)
        loss, lr = train_one_epoch(model, train_loader, optimizer, scaler, cfg, device, epoch, logger, trainer.writer,
                                   scenes_of, text_embeddings, validation_left)
        return du.all_reduce_mean(loss, device=device if device.type == 'cuda' else 'cpu'), lr

    def validate_epoch(epoch):
        nonlocal last_result
        result = validate(model, val_set, text_embeddings, cfg, device, dist_info, logger.info)
        outcome = validation_outcome(result, cfg.val_repeats, cfg.val_split, logger)
        if outcome is not None:
            last_result = result
        return outcome

    def table_last_validation():
        if last_result is not None:
            logger.info('last validation:\n' + format_table(last_result))

    # without validation (evaluate False, or a val split without labels) best.pth follows last.pth
    trainer = training.Trainer(model=model, optimizer=optimizer, epochs=cfg.epochs, steps_per_epoch=len(train_loader),
                               run_epoch=run_epoch, validate=validate_epoch if val_set is not None else None,
                               eval_freq=cfg.eval_freq, save_path=cfg.save_path, logger=logger, report='step',
                               keep_losses=True, epoch_seed=lambda epoch: epoch_seed(cfg, epoch, dist_info.rank),
                               extra=lambda: {'config': dict(cfg),
                                              'grad_scaler': scaler.state_dict() if scaler else None},
                               after_train=table_last_validation, save=save_best_and_last,
                               main_process=du.is_main_process(), barrier=du.barrier)
    if cfg.resume:
        state = trainer.resume(cfg.resume, map_location=device, check=lambda state: check_same_schedule(
            cfg.resume, state, {k: cfg[k] for k in SCHEDULE_KEYS},
            'the poly learning rate of every step depends on the total number '
            'of steps (epochs x loop x scenes / batch_size)'))
        if scaler is not None and state['extra'].get('grad_scaler'):
            scaler.load_state_dict(state['extra']['grad_scaler'])  # fp16: the loss scale goes on where it was
    trainer.fit(create_writer(cfg.save_path, dist_info.rank, enabled=cfg.tensorboard))
    summary = {'best_val_miou': trainer.best_metric if trainer.history else None, 'val_miou': trainer.history,
               'train_loss': trainer.losses, 'epochs': cfg.epochs, 'steps': cfg.epochs * len(train_loader),
               'steps_per_epoch': len(train_loader), 'arch_3d': cfg.arch_3d, 'batch_size': cfg.batch_size,
               'loss_type': cfg.loss_type, 'world_size': dist_info.world_size, 'wall_time_s': trainer.timer.elapsed(),
               'train_scenes': len(scenes), 'skipped_scenes': train_set.skipped_scenes}
    if du.is_main_process():
        atomic_write_text(os.path.join(cfg.save_path, 'esg_summary.json'), json.dumps(summary, indent=2))
    return model, summary


# what a run writes into its folder; a fresh run into a folder holding any of them is refused (util/run_folder.py)
RUN_OUTPUTS = ('last.pth', 'best.pth', 'esg_summary.json', 'tensorboard')


def main(argv=None):
    return run_stage(argv, SCHEMA, lambda cfg, stage: train(cfg, stage.dist, stage.device, stage.logger)[1],
                     title='ESG training', record='esg', folder='save_path', distributed=True, sparse=True,
                     resume_outputs=RUN_OUTPUTS, experiment_inputs=('esg_targets',))


if __name__ == '__main__':
    run_cli(main)
