"""How much PLG's deliberate differences from upstream change its pseudo labels at real point density.

The project's PLG voxelises each scene in its own frame and scores in float32. Upstream's PLG loader
voxelises a randomly rotated / scaled copy of the scene (its Voxelizer keeps augmentation on), so which
point represents a voxel changes from run to run, and it scores in float16 on the GPU. This script builds
dense rooms (``synthetic/dense_room.py``: 150k points, several points per 2 cm voxel) and prints, per room,
the share of points whose pseudo label changes and the pseudo-label mIoU (against GT, unlabeled counted
wrong) under
  - the project's rule (no rotation, float32);
  - upstream's rotated voxelisation (``--rotations`` random draws, the loader's bounds);
  - float16 scoring;
  - per-point scoring (``plg_per_point True``), for scale.

    python bench/plg_fidelity.py --rooms 3 --rotations 5
"""
import argparse
import os
import platform
import time

import numpy as np
import torch

from dataset.label_constants import dataset_info
from dataset.point_loader import Point3DLoader
from dataset.voxelizer import Voxelizer, sparse_quantize
from pipeline.metric import evaluate
from pipeline.pseudo_labels import MASKED_SCORE, plg_scene, scene_label_mask
from synthetic.dense_room import dense_room

INFO = dataset_info('scannet')


def labels_from_representatives(kept, inverse, rows, feat, text, scene_mask, half=False):
    """The PLG rule for given voxel representatives: score each representative, copy to its voxel's points."""
    n_classes = text.shape[0]
    rep_rows = rows[kept]
    scored = rep_rows >= 0
    f = torch.from_numpy(feat[rep_rows[scored]])
    t = torch.from_numpy(text)
    if half:
        f, t = f.half(), t.half()
    prob = torch.softmax((f @ t.t()).float() if not half else (f @ t.t()), dim=1).float()
    prob[:, ~torch.from_numpy(scene_mask)] = MASKED_SCORE
    vox = np.full(kept.shape[0], n_classes, np.int64)
    vox[scored] = prob.argmax(1).numpy()
    return vox[inverse]


def miou(pred, gt):
    return evaluate(pred, gt, INFO.labels, no_feature_in_iou=True)['miou']


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rooms', type=int, default=3)
    p.add_argument('--rotations', type=int, default=5)
    p.add_argument('--points', type=int, default=150_000)
    p.add_argument('--voxel-size', type=float, default=0.02)
    args = p.parse_args()
    print(f'# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, numpy {np.__version__}')
    loader_bounds = Point3DLoader  # upstream's PLG loader uses the same bounds as its point loader
    voxelizer = Voxelizer(voxel_size=args.voxel_size, use_augmentation=True,
                          scale_augmentation_bound=loader_bounds.SCALE_AUGMENTATION_BOUND,
                          rotation_augmentation_bound=loader_bounds.ROTATION_AUGMENTATION_BOUND)
    print(f"{'room':>4} {'pts/voxel':>9} {'mixed':>6} {'rule':<34} {'changed':>8} {'mIoU':>7}")
    for room in range(args.rooms):
        start = time.perf_counter()
        coords, _, gt, feat, mask, text = dense_room(seed=room, num_points=args.points)
        scene_mask = scene_label_mask(gt, INFO.num_classes)
        rows = np.full(mask.shape[0], -1, np.int64)
        rows[mask] = np.arange(int(mask.sum()))
        covered_feat = feat[mask]
        ours, _ = plg_scene(coords, torch.from_numpy(covered_feat), mask, torch.from_numpy(text), scene_mask,
                            voxel_size=args.voxel_size)
        _, kept, inverse = sparse_quantize(coords, args.voxel_size)
        density = coords.shape[0] / kept.shape[0]
        mixed = (gt[kept][inverse] != gt).mean()  # points whose voxel representative has another GT class
        rows_out = [('project: own frame, float32', ours)]
        for r in range(args.rotations):
            rng = np.random.default_rng([room, r])
            *_, rot_inverse, rot_kept = voxelizer.voxelize(coords, np.zeros_like(coords), None, return_ind=True,
                                                           rng=rng)
            rows_out.append((f'upstream: rotated voxelisation #{r + 1}',
                             labels_from_representatives(rot_kept, rot_inverse, rows, covered_feat, text, scene_mask)))
        rows_out.append(('float16 scoring', labels_from_representatives(kept, inverse, rows, covered_feat, text,
                                                                        scene_mask, half=True)))
        per_point, _ = plg_scene(coords, torch.from_numpy(covered_feat), mask, torch.from_numpy(text), scene_mask,
                                 per_point=True)
        rows_out.append(('per-point scoring (plg_per_point)', per_point))
        for name, pred in rows_out:
            print(f'{room:>4} {density:9.2f} {mixed:6.3f} {name:<34} '
                  f'{(pred != ours).mean():8.4f} {miou(pred, gt):7.4f}')
        print(f'#   room {room}: {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
