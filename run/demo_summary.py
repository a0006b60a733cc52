"""The demo's one table: does every stage add mIoU on val (PLG < ESS-adapted labels < ESG network, docs/method.md)?

    python run/demo_summary.py --exp exp/demo --timings exp/demo/demo_timings.tsv

Reads what the stages wrote: ``<exp>/ess/ess_eval_metrics.json`` (ESS inference scores the raw fused
features with the PLG formula, i.e. the PLG pseudo labels, and the ESS-adapted ones on every split),
``<exp>/esg/result_eval/eval_summary.json`` (evaluate.py, the ESG network) and the stage timings. Coverage, the
share of val points that have a 2D feature, is read from the fused-feature masks given in the eval config.
Two mIoU columns: 'covered' is upstream's metric (a point without 2D feature is dropped from IoU),
'all points' counts it as a miss, the fair comparison with a 3D network that labels every point.
"""
import argparse
import json
import os



from dataset.formats import fused_feature_files, list_scenes, load_scene_fused_features, scene_name
from util.config import resolve_config
from pipeline.visualize import learning_curve_png

PLG_ROW = 'raw fused, scene-label mask (PLG formula per point)'
ESS_ROWS = ('ESS adapted, scene-label mask (adapted pseudo labels)', 'ESS adapted, argmax')


def read_json(path, stage):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' is missing: the {stage} stage did not finish; see its log in the same folder")
    with open(path) as f:
        return json.load(f)


def coverage(data_root, split, feat_root):
    covered = total = 0
    for path in list_scenes(data_root, split):
        _, mask = load_scene_fused_features(fused_feature_files(feat_root, scene_name(path)))
        covered, total = covered + int(mask.sum()), total + int(mask.numel())
    return covered / max(total, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--exp', default='exp/demo')
    parser.add_argument('--eval_config', default='config/demo/openseg_eval.yaml')
    parser.add_argument('--timings', default='')
    args = parser.parse_args()

    ess = read_json(os.path.join(args.exp, 'ess', 'ess_eval_metrics.json'), 'ESS inference')
    esg = read_json(os.path.join(args.exp, 'esg', 'result_eval', 'eval_summary.json'), 'evaluate')
    import evaluate  # its schema resolves the eval config
    cfg = resolve_config(evaluate.SCHEMA, args.eval_config)
    split = esg['split']
    if split not in ess:
        raise KeyError(f"ESS inference scored splits {sorted(ess)}, not '{split}'; add it to 'splits' of the ESS eval config")
    cov = coverage(cfg.data_root, split, cfg.data_root_2d_fused_feature)

    esg_train = read_json(os.path.join(args.exp, 'esg', 'esg_summary.json'), 'ESG training')
    # PLG and the ESS "mask" rows use the val scenes' GT classes as their scene tags (the PLG formula needs
    # tags); the ESS argmax and ESG rows see no tags, as a 3D network at test time
    rows = [('PLG pseudo labels (GT tags as scene tags)', ess[split][PLG_ROW], cov),
            ('ESS-adapted labels (GT tags as scene tags)', ess[split][ESS_ROWS[0]], cov),
            ('ESS-adapted embeddings (argmax, no tags)', ess[split][ESS_ROWS[1]], cov)]
    lines = [f"3DSS-VLG demo, {split} split ({esg['num_scenes']} scenes, {esg['num_points']} labelled points); "
             f"ESG: {esg_train['arch_3d']}, {esg_train['steps']} steps of batch {esg_train['batch_size']}",
             f"{'labels':<44s} {'mIoU covered':>12s} {'mIoU all pts':>12s} {'coverage':>9s}",
             '-' * 80]
    for name, r, c in rows:
        lines.append(f"{name:<44s} {r['miou_covered']:12.4f} {r['miou_all_points']:12.4f} {c:9.3f}")
    lines.append(f"{'ESG 3D network (no tags, ' + str(esg['test_repeats']) + ' voxelisations)':<44s} {esg['miou']:12.4f} "
                 f"{esg['miou_all_points']:12.4f} {esg['coverage']:9.3f}")
    lines.append('-' * 80)
    plg_all = ess[split][PLG_ROW]['miou_all_points']
    verdict = 'beats' if esg['miou_all_points'] > plg_all else 'does NOT beat'
    lines.append(f"ESG network {verdict} the PLG pseudo labels on {split}: {esg['miou_all_points']:.4f} vs {plg_all:.4f} "
                 f"(all points; 'covered' leaves points without a 2D feature out, as upstream's metric)")
    if esg['miou_all_points'] <= plg_all:
        lines.append("  why (README, 'What the demo shows'): the demo trains ESG on 0.2 % of upstream's scene passes, and "
                     "on 16 training rooms longer training overfits the view noise of its targets")
    # the ESG validation curve against the labels it should beat (a picture of the table's last lines)
    if esg_train['val_miou']:
        steps_per_epoch = esg_train['steps'] / esg_train['epochs']
        epochs, mious = zip(*esg_train['val_miou'])
        learning_curve_png(os.path.join(args.exp, 'demo_esg_curve.png'), [e * steps_per_epoch for e in epochs], mious,
                           references=[('PLG pseudo labels, all points', plg_all),
                                       ('ESS argmax, all points', ess[split][ESS_ROWS[1]]['miou_all_points'])],
                           title=f"ESG ({esg_train['arch_3d']}) on the demo's {split} split")
        lines.append(f"ESG validation curve: {os.path.join(args.exp, 'demo_esg_curve.png')}")
    if args.timings and os.path.isfile(args.timings):
        total = 0.0
        parts = []
        with open(args.timings) as f:
            for line in f:
                name, ms = line.rstrip('\n').split('\t')
                total += float(ms) / 1000
                parts.append(f'{name} {float(ms) / 1000:.0f} s')
        lines.append(f"wall time {total:.0f} s ({total / 60:.1f} min): " + ', '.join(parts))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
