"""python -m synthetic: write a synthetic ScanNet- or S3DIS-like dataset (docs/synthetic_data.md).

    python -m synthetic --out data --name demo --dataset scannet --num-train 16 --num-val 4 --points 20000 \\
        --seed 0 --features rendered [--overwrite]
"""
import argparse

from synthetic.writer import make_synthetic_dataset
from util.cli import run_cli


def get_parser():
    p = argparse.ArgumentParser(prog='python -m synthetic',
                                description='Write a synthetic ScanNet/S3DIS-like dataset (docs/synthetic_data.md).',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default='data', help='output folder')
    p.add_argument('--name', default='demo', help='dataset name: <out>/<name>_3d, <name>_multiview, ...')
    p.add_argument('--dataset', default='scannet', choices=['scannet', 's3dis'], help='label space')
    p.add_argument('--num-train', type=int, default=16, help='training rooms')
    p.add_argument('--num-val', type=int, default=4, help='validation rooms')
    p.add_argument('--points', type=int, default=20000, help='points per scene')
    p.add_argument('--seed', type=int, default=0, help='every random draw of the world follows it')
    p.add_argument('--feat-dim', type=int, default=768, help='width of the fused features and text embeddings')
    p.add_argument('--overwrite', action='store_true', help='regenerate existing files')
    p.add_argument('--features', default='rendered', choices=['simulated', 'rendered'],
                   help="fused features: 'simulated' (formula on analytic visibility, fast) or 'rendered' "
                        "(ray-cast RGB-D + 2D feature frames fused by prep/fusion.py)")
    p.add_argument('--verbose', action='store_true', help='one line per scene')
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    res = make_synthetic_dataset(args.out, args.name, args.dataset, args.num_train, args.num_val, args.points,
                                 args.seed, args.feat_dim, args.overwrite, verbose=args.verbose,
                                 features=args.features)
    print(f"synthetic {args.dataset} dataset '{args.name}' in {args.out} ({res['seconds']:.1f} s, "
          f"{res['skipped']} existing scenes kept; --overwrite regenerates)")
    print(f"  3D scenes:       {res['data_root']}/{{train,val}}/")
    print(f"  fused features:  {res['feature_root']}/<scene>_0.pt")
    print(f"  text embeddings: {res['text_embeddings_path']}")
    print(f"  query phrases:   {res['query_phrases_path']} (their text embeddings: {res['query_embeddings_path']})")
    for split, s in res['stats'].items():
        print(f"  {split:5s}: {s['scenes']} scenes, {s['points']} points, 2D coverage {s['coverage']:.3f}, "
              f"PLG mIoU {s['plg_miou']:.4f} (upstream: / all classes), {s['plg_miou_present']:.4f} "
              f"(mean over present classes)")
    return res


if __name__ == '__main__':
    run_cli(main)
