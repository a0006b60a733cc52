"""How fast the demo's 3D networks learn, and what changes that: the evidence behind config/demo/openseg_train.yaml.

    python bench/demo_learning.py                                   # every variant, 30 epochs (480 steps) each
    python bench/demo_learning.py --epochs 100 --eval_freq 5 'supervised, lr 1e-4'   # the ceiling's curve
    python bench/demo_learning.py --list

Run after ``make demo`` (it reads the demo's data and ESS embeddings). Each variant is ``train_esg.py`` with the
demo config and a few overrides, one CPU thread per run, ``--parallel`` runs side by side; the output folder
(``--out``, default exp/demo_learning/<variant>) holds each run's log and checkpoints. Prints, per variant, val
mIoU (all points, one voxelisation) at every validation and seconds per step, with two references that see no
3D shape: an MLP on each point's colour, and on colour and height above the floor
(``bench/colour_baseline.py``). Writes ``demo_learning.json`` and ``demo_learning.png`` into ``--out``.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAIN = 'config/demo/openseg_train.yaml'
EVAL = 'config/demo/openseg_eval.yaml'
FUSED = 'config/demo/openseg_train_fused.yaml'
SUPERVISED = 'config/demo/supervised_train.yaml'
# name: (config, overrides); learning rates are base_lr (upstream's schedule runs at 10 x base_lr after step 1)
VARIANTS = {
    'lr 1e-4 (upstream)': (TRAIN, ['base_lr', '0.0001']),
    'lr 3e-4': (TRAIN, ['base_lr', '0.0003']),
    'lr 1e-3': (TRAIN, ['base_lr', '0.001']),
    'lr 1e-4, no augmentation': (TRAIN, ['base_lr', '0.0001', 'aug', 'False']),
    'lr 3e-4, batch 4': (TRAIN, ['base_lr', '0.0003', 'batch_size', '4']),
    'raw fused targets, lr 1e-3': (FUSED, ['base_lr', '0.001']),
    'supervised, lr 1e-4': (SUPERVISED, ['base_lr', '0.0001']),
}


def folder_name(variant):
    return ''.join(c if c.isalnum() else '_' for c in variant).strip('_')


def run_variant(variant, args):
    config, overrides = VARIANTS[variant]
    save = os.path.join(args.out, folder_name(variant))
    cmd = [sys.executable, os.path.join(ROOT, 'train_esg.py'), '--config', os.path.join(ROOT, config),
           'save_path', save, 'epochs', str(args.epochs), 'eval_freq', str(args.eval_freq), 'threads', '1',
           'tensorboard', 'False', *overrides]
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    with open(save + '.log', 'w') as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'))
    if rc != 0:
        raise RuntimeError(f"variant '{variant}' failed (exit {rc}); see '{save}.log'")
    with open(os.path.join(save, 'esg_summary.json')) as f:
        summary = json.load(f)
    running, per_scene = batchnorm_gap(save)
    return {'variant': variant, 'overrides': overrides, 'config': config, 'steps': summary['steps'],
            'best_running_bn': running, 'best_per_scene_bn': per_scene,
            'steps_per_epoch': summary['steps_per_epoch'], 'val_miou': summary['val_miou'],
            's_per_step': summary['wall_time_s'] / summary['steps'], 'wall_s': time.time() - start}


def batchnorm_gap(save):
    """val mIoU of ``<save>/best.pth`` with BatchNorm's running statistics (what validation and evaluate.py use)
    and with each scene's own statistics (BatchNorm in train mode at test time, weights untouched): at batch 1
    the network is trained on per-scene statistics, and the gap says what the running averages cost. The
    network is rebuilt and loaded as evaluate.py does, from the checkpoint's own config."""
    import torch

    from dataset.label_constants import dataset_info
    from pipeline.inference import predict_split
    from pipeline.metric import evaluate_confusion
    from pipeline.networks import build_model
    from pipeline.schemas import EVALUATION
    from pipeline.stage import class_text_embeddings, eval_split, network_values
    from util.config import resolve_config
    cfg = resolve_config(EVALUATION, os.path.join(ROOT, EVAL),
                         ['model_path', os.path.join(save, 'best.pth'), 'test_repeats', '1'])
    info = dataset_info(cfg.labelset)
    model, _ = build_model(cfg.model_path, network_values(cfg), torch.device('cpu'), print)
    text = class_text_embeddings(cfg, info, 'cpu')
    val = eval_split(cfg, cfg.split)
    plain_eval = model.eval

    def eval_with_scene_statistics():
        plain_eval()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
                m.momentum = 0.0  # normalise by the scene's statistics, leave the running ones as they are
        return model

    scores = []
    for eval_mode in (plain_eval, eval_with_scene_statistics):
        model.eval = eval_mode
        with torch.no_grad():
            conf, _ = predict_split(model, val, text, device=torch.device('cpu'), seed=cfg.manual_seed)
        scores.append(evaluate_confusion(conf, info.labels)['miou'])
    return scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('variants', nargs='*', help='names from --list (default: all)')
    p.add_argument('--epochs', type=int, default=30)
    p.add_argument('--eval_freq', type=int, default=10)
    p.add_argument('--parallel', type=int, default=2, help='runs side by side, one thread each')
    p.add_argument('--out', default=os.path.join(ROOT, 'exp', 'demo_learning'))
    p.add_argument('--data_root', default=os.path.join(ROOT, 'data', 'demo_3d'), help='for the no-shape references')
    p.add_argument('--list', action='store_true')
    args = p.parse_args(argv)
    if args.list:
        for name, (config, overrides) in VARIANTS.items():
            print(f'{name:<28s} {config} {" ".join(overrides)}')
        return None
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f'unknown variant(s) {unknown}; --list shows {list(VARIANTS)}')
    variants = args.variants or list(VARIANTS)
    if os.path.exists(args.out) and any(os.path.exists(os.path.join(args.out, folder_name(v))) for v in variants):
        raise SystemExit(f"'{args.out}' already holds runs of these variants: remove it or pass another --out")

    from bench.colour_baseline import per_point_baseline
    from pipeline.visualize import learning_curve_png
    references = [(f'MLP on {inputs.replace("_", " + ")}', per_point_baseline(args.data_root, inputs=inputs)['miou'])
                  for inputs in ('colour', 'colour_height')]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda v: run_variant(v, args), variants))

    print(f"# {args.epochs} epochs each, val mIoU (all points, 1 voxelisation) at the validation steps")
    for name, value in references:
        print(f'{name:<28s} {value:.3f} (no 3D shape)')
    for r in results:
        curve = ' '.join(f'{e * r["steps_per_epoch"]}:{m:.3f}' for e, m in r['val_miou'])
        best = max(m for _, m in r['val_miou'])
        print(f"{r['variant']:<28s} best {best:.3f} (per-scene BN {r['best_per_scene_bn']:.3f})  "
              f"{r['s_per_step']:.2f} s/step  [{curve}]")
    with open(os.path.join(args.out, 'demo_learning.json'), 'w') as f:
        json.dump({'references': references, 'runs': results}, f, indent=2)
    learning_curve_png(os.path.join(args.out, 'demo_learning.png'),
                       [(r['variant'], [e * r['steps_per_epoch'] for e, _ in r['val_miou']],
                         [m for _, m in r['val_miou']]) for r in results],
                       references=references, title="the demo's 3D networks: val mIoU against steps")
    return results


if __name__ == '__main__':
    main()
