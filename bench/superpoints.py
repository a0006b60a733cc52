"""The graph superpoints at ScanNet's point count: seconds per step, segments, purity, and what the PLG refinement
does with them (dataset/superpoints.py, pipeline/pseudo_labels.py; docs/method.md, "PLG refinement").

Rooms of the synthetic world (``synthetic.writer.make_scene``, simulated fused features, 150k points by default;
``--world dense``: the box room of ``synthetic/dense_room.py``, whose objects stand flush against walls and floor
with their back faces sampled too, coplanar with them, which no scan has); per room: the k-NN graph (k-d tree, PCA
normals, edge weights), the Felzenszwalb-Huttenlocher merges and the small-segment pass, the number of superpoints,
their purity (share of labelled points whose GT is their superpoint's majority class) and the per-point PLG mIoU
(over the classes present, unlabeled counted wrong) without and with the refinement: graph superpoints pooled by
mean and by vote, and the synthetic world's ScanNet-like segments (``synthetic/segments.py``; pure by construction).

    python bench/superpoints.py --rooms 4 --points 150000
"""
import argparse
import os
import platform
import time

import numpy as np

from dataset.label_constants import IGNORE_LABEL, dataset_info
from dataset.superpoints import GRAPH_PARAMS, graph_segmentation
from pipeline.pseudo_labels import plg_scene, plg_scene_refined, scene_label_mask
from synthetic.dense_room import dense_room
from synthetic.features import make_text_embeddings
from synthetic.rooms import room_types
from synthetic.writer import make_scene

INFO = dataset_info('scannet')


def purity(ids, labels):
    keep = labels != IGNORE_LABEL
    keys, counts = np.unique(ids[keep] * 1000 + labels[keep], return_counts=True)
    best = np.zeros(ids.max() + 1)
    np.maximum.at(best, keys // 1000, counts)
    return best.sum() / keep.sum()


def miou(pred, gt):
    """Mean IoU over the classes present in GT (an unlabeled point counts as a miss)."""
    ious = []
    for c in np.unique(gt[gt != IGNORE_LABEL]):
        tp = np.sum((pred == c) & (gt == c))
        ious.append(tp / (np.sum((pred == c) & (gt != IGNORE_LABEL)) + np.sum(gt == c) - tp))
    return float(np.mean(ious))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rooms', type=int, default=4, help='rooms (one of each room type in turn)')
    p.add_argument('--points', type=int, default=150_000, help='points per room (ScanNet: ~150k)')
    p.add_argument('--world', default='synthetic', choices=['synthetic', 'dense'], help='the rooms (docstring)')
    args = p.parse_args(argv)
    print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS='
          f"{os.environ.get('OMP_NUM_THREADS', '-')}; graph parameters {GRAPH_PARAMS}")
    print('room          points  graph_s  merge_s  small_s  total_s  rounds  superpoints  purity  | mIoU: PLG'
          '  graph_mean  graph_vote  segs_mean (segs: n, purity)')
    text = make_text_embeddings(INFO, 768, 0)
    types = [t[0] for t in room_types('scannet')]
    for r in range(args.rooms):
        segs = None
        if args.world == 'dense':
            coords, colors, labels, feat, mask, text = dense_room(seed=r, num_points=args.points)
            feat, name = feat[mask], f'dense {r}'
        else:
            name = types[r % len(types)]
            scene = make_scene(INFO, text, name, f'scene{9000 + r}_00', 9000 + r, num_points=args.points)
            coords, colors, labels = scene['coords'], scene['colors'], scene['labels']
            feat, mask, segs = scene['feat'], scene['mask_full'], scene['segments']
        timings = {}
        start = time.perf_counter()
        ids = graph_segmentation(coords, colors, timings=timings)
        total = time.perf_counter() - start
        tags = scene_label_mask(labels, INFO.num_classes)
        base, _ = plg_scene(coords, feat, mask, text, tags, per_point=True)
        runs = [base] + [plg_scene_refined(coords, feat, mask, text, tags, ids, per_point=True, pool=pool)[0]
                         for pool in ('mean', 'vote')]
        if segs is not None:
            runs.append(plg_scene_refined(coords, feat, mask, text, tags, segs, per_point=True)[0])
        scores = ''.join(f'  {miou(x, labels):10.4f}' for x in runs)
        about_segs = '' if segs is None else f'  ({len(np.unique(segs))}, {purity(segs, labels):.4f})'
        print(f"{name:12s}  {len(coords):6d}  {timings['graph']:7.2f}  {timings['merge']:7.2f}  {timings['small']:7.2f}"
              f"  {total:7.2f}  {timings['rounds']:6d}  {ids.max() + 1:11d}  {purity(ids, labels):.4f}  |{scores}"
              f"{about_segs}", flush=True)


if __name__ == '__main__':
    main()
