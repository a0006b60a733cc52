"""The demo's comparison table: the paper's rows at demo scale, all on val, all points, no tags at test.

    python run/demo_summary.py --exp exp/demo --timings exp/demo/demo_timings.tsv

Reads what the stages wrote into the experiment folder ``--exp``:
  - ``ess/ess_eval_metrics.json`` (ESS inference): the 2D fused features and the ESS-adapted embeddings,
    each scored by argmax over the class embeddings (no tags) and by the PLG formula with the val scenes'
    GT classes as scene tags (the PLG reference line);
  - ``plg_refined_val/plg_summary.json`` when it exists (PLG on val with the reference row's tags and per-point
    scoring, labels refined within superpoints: beyond the paper);
  - for each 3D network (``esg_fused``: distilled from the raw fused features, OpenScene's 3D distillation;
    ``esg``: distilled from the ESS embeddings, 3DSS-VLG; ``supervised``: cross-entropy on GT labels, the
    ceiling), ``<run>/result_eval/eval_summary.json`` (evaluate.py) and ``<run>/esg_summary.json`` (its
    validation curve). A run whose folder does not exist is listed as not run; a folder without its results
    is an error (the stage did not finish).
Writes ``demo_curves.png`` (validation curves of the 3D networks against the 2D lines), ``demo_per_class.png``
and ``demo_summary.json`` into ``--exp``. "all points" counts a point without a 2D feature as a miss: the
fair comparison with a 3D network, which labels every point; "covered" is upstream's metric for 2D labels.
"""
import argparse
import json
import os

from pipeline.visualize import learning_curve_png, per_class_columns_png
from util.io import atomic_write_text

# (row label, ESS inference variant); the tagged rows use GT tags, the others see no tag
TWO_D_ROWS = (
    ('2D fused features, argmax (OpenScene 2D fusion)', 'raw fused, argmax', False),
    ('ESS-adapted embeddings, argmax', 'ESS adapted, argmax', False),
    ('PLG pseudo labels (GT tags; reference)', 'raw fused, scene-label mask (PLG formula per point)', True),
)
# beyond the paper: PLG on val with the same GT tags and per-point scoring as the reference row, its labels refined
# within superpoints (plg_refine superpoints; its run folder under --exp, listed when it exists)
REFINED_PLG_ROW = ('PLG refined by superpoints (GT tags; not paper)', 'plg_refined_val')
# (row label, short name for the pictures, run folder under --exp)
NETWORK_ROWS = (
    ('3D net from raw fused (OpenScene 3D distill.)', 'from raw fused', 'esg_fused'),
    ('3D net from ESS embeddings (3DSS-VLG)', 'from ESS (3DSS-VLG)', 'esg'),
    ('3D net, GT labels (ceiling, same short run)', 'GT labels (ceiling)', 'supervised'),
)


def read_json(path, stage):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' is missing: the {stage} stage did not finish; "
                                f"see its log in the same folder")
    with open(path) as f:
        return json.load(f)


def network_runs(exp):
    """{run folder: (eval_summary, esg_summary)} of the 3D networks that were run."""
    runs = {}
    for _, _, run in NETWORK_ROWS:
        folder = os.path.join(exp, run)
        if os.path.isdir(folder):
            runs[run] = (read_json(os.path.join(folder, 'result_eval', 'eval_summary.json'), f'evaluate ({run})'),
                         read_json(os.path.join(folder, 'esg_summary.json'), f'ESG training ({run})'))
    if not runs:
        raise FileNotFoundError(f"'{exp}' holds none of the 3D network folders "
                                f"{', '.join(r for _, _, r in NETWORK_ROWS)}: run ESG training and evaluate.py first")
    return runs


def curve_steps(train):
    """(steps, val mIoU) of an ESG run's validation history."""
    epochs, mious = zip(*train['val_miou'])
    return [e * train['steps_per_epoch'] for e in epochs], list(mious)


def summarise(exp, timings=''):
    """The table as lines of text, and the numbers behind it (also written to demo_summary.json)."""
    ess = read_json(os.path.join(exp, 'ess', 'ess_eval_metrics.json'), 'ESS inference')
    runs = network_runs(exp)
    split = next(iter(runs.values()))[0]['split']
    if split not in ess:
        raise KeyError(f"ESS inference scored splits {sorted(ess)}, not '{split}'; "
                       f"add it to 'splits' of the ESS eval config")
    two_d = {label: ess[split][variant] for label, variant, _ in TWO_D_ROWS}
    first_eval, first_train = next(iter(runs.values()))
    lines = [f"3DSS-VLG demo: {split} split, {first_eval['num_scenes']} scenes, {first_eval['num_points']} labelled "
             f"points; 3D networks: {first_train['arch_3d']}, {first_train['steps']} steps of batch "
             f"{first_train['batch_size']}, {first_eval['test_repeats']} voxelisations at test",
             f"{'labels':<50s} {'tags':>4s} {'mIoU all pts':>12s} {'covered':>8s}",
             '-' * 78]
    numbers = {'split': split, 'rows': {}}
    for label, _, tagged in TWO_D_ROWS:
        r = two_d[label]
        lines.append(f"{label:<50s} {'GT' if tagged else 'no':>4s} "
                     f"{r['miou_all_points']:12.4f} {r['miou_covered']:8.4f}")
        numbers['rows'][label] = {'miou_all_points': r['miou_all_points'], 'miou_covered': r['miou_covered']}
    refined_folder = os.path.join(exp, REFINED_PLG_ROW[1])
    if os.path.isdir(refined_folder):
        plg = read_json(os.path.join(refined_folder, 'plg_summary.json'), 'PLG (refined, val)')
        if plg.get('split') != split:
            raise ValueError(f"'{refined_folder}' holds PLG labels of split '{plg.get('split')}', the table is about "
                             f"'{split}'")
        # PLG's mIoU counts uncovered points as misses (all points); its upstream mIoU drops them (covered)
        lines.append(f"{REFINED_PLG_ROW[0]:<50s} {'GT':>4s} {plg['miou']:12.4f} {plg['miou_upstream']:8.4f}")
        numbers['rows'][REFINED_PLG_ROW[0]] = {'miou_all_points': plg['miou'], 'miou_covered': plg['miou_upstream'],
                                               'coverage': plg['coverage']}
    lines.append('-' * 78)
    for label, _, run in NETWORK_ROWS:
        if run not in runs:
            lines.append(f"{label:<50s} {'no':>4s} {'not run':>12s}  ('{os.path.join(exp, run)}' does not exist)")
            continue
        ev, _ = runs[run]
        lines.append(f"{label:<50s} {'no':>4s} {ev['miou_all_points']:12.4f} {'':>8s}")
        numbers['rows'][label] = {'miou_all_points': ev['miou_all_points']}
    lines.append('-' * 78)
    lines += verdict(two_d, runs)

    curves = [(short, *curve_steps(runs[run][1])) for _, short, run in NETWORK_ROWS
              if run in runs and runs[run][1]['val_miou']]
    if curves:
        path = os.path.join(exp, 'demo_curves.png')
        learning_curve_png(path, curves, references=[(label.split(' (')[0] + ', all points',
                                                      two_d[label]['miou_all_points'])
                                                     for label, _, _ in TWO_D_ROWS],
                           title=f"3D networks on the demo's {split} split ({first_train['arch_3d']}, 1 voxelisation)")
        lines.append(f"validation curves: {path}")
    class_names = [n for n, v in first_eval['iou'].items() if v is not None]
    series = [(label.split(' (')[0], two_d[label]['iou_all_points']) for label, _, _ in TWO_D_ROWS[:2]]
    series += [(short, runs[run][0]['iou']) for _, short, run in NETWORK_ROWS if run in runs]
    path = os.path.join(exp, 'demo_per_class.png')
    per_class_columns_png(path, class_names, series, title=f'demo {split}: per-class IoU, all points, no tags')
    lines.append(f"per-class IoU: {path}")
    if timings and os.path.isfile(timings):
        lines.append(wall_times(timings))
    numbers['curves'] = {run: runs[run][1]['val_miou'] for run in runs}
    atomic_write_text(os.path.join(exp, 'demo_summary.json'), json.dumps(numbers, indent=2))
    return lines, numbers


def verdict(two_d, runs):
    """The ordering in words: what each 3D network beats, and which of the two distillations wins."""
    fused_2d = two_d[TWO_D_ROWS[0][0]]['miou_all_points']
    ess_2d = two_d[TWO_D_ROWS[1][0]]['miou_all_points']
    plg = two_d[TWO_D_ROWS[2][0]]['miou_all_points']
    lines = []
    if 'esg' in runs:
        esg = runs['esg'][0]['miou_all_points']
        lines.append(f"3DSS-VLG's 3D network {'beats' if esg > ess_2d else 'does NOT beat'} its ESS teacher "
                     f"({esg:.4f} vs {ess_2d:.4f}) and {'beats' if esg > plg else 'does NOT beat'} the tagged PLG "
                     f"labels ({plg:.4f})")
        if 'esg_fused' in runs:
            fused = runs['esg_fused'][0]['miou_all_points']
            lines.append(f"ESS before distillation (3DSS-VLG) vs distilling the raw 2D features (OpenScene): "
                         f"{esg:.4f} vs {fused:.4f}, {esg - fused:+.4f}; the 2D features alone: {fused_2d:.4f}")
        if 'supervised' in runs:
            sup = runs['supervised'][0]['miou_all_points']
            if sup > fused_2d:
                lines.append(f"the network trained on GT labels (not the method) reaches {sup:.4f}: 3DSS-VLG closes "
                             f"{(esg - fused_2d) / (sup - fused_2d):.0%} of the gap between the 2D features and it")
            else:
                lines.append(f"the network trained on GT labels (not the method) reaches {sup:.4f} in the same steps, "
                             f"below the 2D features too: at this budget the 3D networks are limited by their "
                             f"training time, not by their targets (README, 'What the demo shows': the ceiling's "
                             f"curve)")
    return lines


def wall_times(path):
    total, parts = 0.0, []
    with open(path) as f:
        for line in f:
            name, ms = line.rstrip('\n').split('\t')
            total += float(ms) / 1000
            parts.append(f'{name} {float(ms) / 1000:.0f} s')
    return f"wall time {total:.0f} s ({total / 60:.1f} min): " + ', '.join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--exp', default='exp/demo', help='the experiment folder (exp_root of the configs)')
    parser.add_argument('--timings', default='', help="the demo's stage timings (run/demo.sh writes them)")
    args = parser.parse_args(argv)
    lines, _ = summarise(args.exp, args.timings)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
