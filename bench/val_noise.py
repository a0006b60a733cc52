"""How noisy upstream's validation protocols are, i.e. how much chance decides which epoch becomes best.pth.

Upstream validates ESS on ``num_points`` covered points drawn anew per val scene each epoch, and ESG on one fresh
random voxelisation of the val scenes each epoch. This project scores every covered point (ESS) and the same
seeded voxelisation every epoch (ESG), so two epochs differ only by their weights. On an experiment folder this
script re-scores checkpoints under upstream's protocols with many draws and prints the spread: when it is as
large as the differences between epochs, upstream's best.pth is picked by the draw.

    python bench/val_noise.py --exp exp/demo --draws 20
"""
import argparse
import os
import platform

import numpy as np
import torch

from dataset.ess_loader import ESSSceneDataset
from dataset.label_constants import dataset_info
from pipeline import metric
from pipeline.inference import predict_split
from pipeline.networks import build_adapter, build_disnet
from pipeline.schemas import ESS_INFERENCE, ESS_TRAINING, EVALUATION
from pipeline.stage import class_text_embeddings, eval_split, network_values
from util.checkpoint import load_checkpoint
from util.config import resolve_config


def ess_upstream_miou(model, dataset, info, num_points, rng):
    """Val mIoU (covered points) on ``num_points`` covered points drawn per scene, upstream's ESS protocol."""
    conf = np.zeros((info.num_classes + 1, info.num_classes + 1), np.int64)
    for i in range(len(dataset)):
        item = dataset[i]
        mask = item['mask_full'].numpy()
        covered = int(mask.sum())
        choice = rng.choice(covered, num_points, replace=covered < num_points)
        with torch.no_grad():
            pred = model(item['feat'][choice].float()).argmax(1).numpy()
        conf += metric.confusion_matrix(pred, item['gt'][mask][choice], info.num_classes)
    return metric.evaluate_confusion(conf, info.labels)['miou']


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--exp', default='exp/demo')
    p.add_argument('--draws', type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f'# {platform.machine()}, torch {torch.__version__}; experiment {args.exp}, {args.draws} draws')

    cfg = resolve_config(ESS_INFERENCE, os.path.join(args.exp, 'ess', 'ess_infer_config.yaml'))
    train_cfg = resolve_config(ESS_TRAINING, os.path.join(args.exp, 'ess', 'ess_train_config.yaml'))
    info = dataset_info(cfg.labelset)
    text = class_text_embeddings(cfg, info)
    dataset = ESSSceneDataset(cfg.data_root, cfg.val_split, cfg.data_root_2d_fused_feature, info.num_classes)
    for name in ('best.pth', 'last.pth'):
        model = build_adapter(text, cfg.feature_2d_extractor, cfg.adapter_reduction, cfg.adapter_alpha).eval()
        state = load_checkpoint(os.path.join(args.exp, 'ess', name), model)
        draws = [ess_upstream_miou(model, dataset, info, train_cfg.num_points, np.random.default_rng(d))
                 for d in range(args.draws)]
        print(f"ESS {name} (epoch {state['epoch']}): upstream protocol ({train_cfg.num_points} points per scene) "
              f"mIoU {np.mean(draws):.4f} +- {np.std(draws):.4f} (min {min(draws):.4f}, max {max(draws):.4f})")

    eval_cfg = resolve_config(EVALUATION, os.path.join(args.exp, 'esg', 'result_eval', 'eval_config.yaml'))
    model = build_disnet(**network_values(eval_cfg))
    state = load_checkpoint(os.path.join(args.exp, 'esg', 'best.pth'), model)
    val = eval_split(eval_cfg, eval_cfg.split)
    draws = []
    for d in range(args.draws):
        val.seed = 1000 + d  # another random rotation / scale of every val scene (the loader draws from its seed)
        conf, _ = predict_split(model, val, text, device=torch.device('cpu'), test_repeats=1, seed=1000 + d)
        draws.append(metric.evaluate_confusion(conf, info.labels)['miou'])
    print(f"ESG best.pth (epoch {state['epoch']}): one random voxelisation per validation (upstream) "
          f"mIoU {np.mean(draws):.4f} +- {np.std(draws):.4f} (min {min(draws):.4f}, max {max(draws):.4f})")


if __name__ == '__main__':
    main()
