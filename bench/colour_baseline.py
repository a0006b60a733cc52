"""Per-point baselines that see no 3D shape: what a world offers without geometry.

    python bench/colour_baseline.py --data_root data/demo_3d [--inputs colour|colour_height] [--steps 1500]

A small MLP is trained with cross-entropy on every annotated point of the train split and scored on every
point of the val split (``pipeline.metric.evaluate``, the metric of the 3D networks). ``colour`` sees the
point's RGB only; ``colour_height`` adds its height above the scene's lowest point. A 3D network that
learns the world's shapes must beat both: on a world whose classes differ only by colour (or by colour
and height) the 3D network has nothing more to learn, and the supervised ceiling collapses onto these lines.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from dataset.formats import list_scenes, load_scene_3d
from dataset.label_constants import IGNORE_LABEL, dataset_info
from pipeline.metric import evaluate

INPUTS = ('colour', 'colour_height')


def point_inputs(scene, inputs):
    """float32 [N, 3 or 4]: colours in [-1, 1] (and the height above the scene's floor, in metres)."""
    if inputs not in INPUTS:
        raise ValueError(f'inputs must be one of {INPUTS}, found {inputs!r}')
    x = [np.asarray(scene.colors, np.float32)]
    if inputs == 'colour_height':
        z = np.asarray(scene.coords[:, 2], np.float32)
        x.append((z - z.min())[:, None])
    return np.concatenate(x, 1)


def load_split(data_root, split, inputs):
    xs, ys = [], []
    for path in list_scenes(data_root, split):
        s = load_scene_3d(path)
        xs.append(point_inputs(s, inputs))
        ys.append(np.asarray(s.labels, np.int64))
    if not xs:
        raise FileNotFoundError(f"no scenes in '{data_root}/{split}'")
    return np.concatenate(xs), np.concatenate(ys)


def per_point_baseline(data_root, labelset='scannet', inputs='colour', steps=1500, batch=4096, hidden=64, lr=3e-3,
                       seed=0, train_split='train', val_split='val'):
    """Train the MLP for ``steps`` minibatches; returns pipeline.metric.evaluate's dict on ``val_split``."""
    info = dataset_info(labelset)
    x_train, y_train = load_split(data_root, train_split, inputs)
    keep = y_train != IGNORE_LABEL
    x_train, y_train = torch.from_numpy(x_train[keep]), torch.from_numpy(y_train[keep])
    x_val, y_val = load_split(data_root, val_split, inputs)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, info.num_classes))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(len(x_train), (batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        pred = net(torch.from_numpy(x_val)).argmax(1).numpy()
    return evaluate(pred, y_val, info.labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data_root', default='data/demo_3d')
    p.add_argument('--labelset', default='scannet')
    p.add_argument('--inputs', default='colour', choices=INPUTS)
    p.add_argument('--steps', type=int, default=1500)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    r = per_point_baseline(args.data_root, args.labelset, args.inputs, args.steps, seed=args.seed)
    info = dataset_info(args.labelset)
    out = {'inputs': args.inputs, 'val_miou': r['miou'],
           'iou': {info.labels[c]: round(float(r['iou'][c]), 4) for c in range(info.num_classes) if r['present'][c]}}
    print(json.dumps(out, indent=1))
    return out


if __name__ == '__main__':
    main()
