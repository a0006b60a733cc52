"""Precompute the superpoints PLG's refinement pools over (``plg_refine superpoints``; dataset/superpoints.py).

    python -m prep.superpoints --data_root data/scannet_3d --split train --out data/scannet_superpoints
    # then: plg_refine superpoints superpoint_root data/scannet_superpoints (or set superpoint_root in dataset.yaml)

For every scene of the split(s): with ``--source auto`` (PLG's default) a scene that has ScanNet's over-segmentation
(``<scene>_vh_clean_2.0.010000.segs.json`` next to its ``.pth``, in ``--out`` or in ``--out/<scene>/``) needs
nothing and is only counted; the others get the graph segmentation of their points, written to
``<out>/<scene>_superpoints.npy`` with a provenance record (``<out>/superpoints_manifest.jsonl``). A rerun skips the
scenes whose cached superpoints are current (same scene file, same parameters) and recomputes the others;
``--source graph`` computes every scene even where a segs.json exists. PLG computes what is missing itself, so this
command only moves the work ahead (e.g. onto a machine with many cores, one process per split).
"""
import argparse
import time

from util.cli import run_cli


def get_parser():
    p = argparse.ArgumentParser(prog='python -m prep.superpoints', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data_root', required=True, help='3D scenes: <data_root>/<split>/<scene>.pth')
    p.add_argument('--split', nargs='+', default=['train'], help='split(s) to segment')
    p.add_argument('--out', required=True, help="the cache folder (PLG's superpoint_root)")
    p.add_argument('--source', default='auto', choices=['auto', 'graph'],
                   help="auto: scenes with ScanNet's segs.json need nothing; graph: segment every scene")
    p.add_argument('--scenes', nargs='*', default=None, help='only these scenes (names as scene0000_00)')
    p.add_argument('--overwrite', action='store_true', help='recompute cached superpoints that are still current')
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    import numpy as np

    from dataset.formats import list_scenes, load_scene_3d, scene_name
    from dataset.superpoints import SuperpointSource
    from util.progress import progress
    paths = [p for split in args.split for p in list_scenes(args.data_root, split)]
    if args.scenes is not None:
        wanted = set(args.scenes)
        paths = [p for p in paths if scene_name(p) in wanted]
        missing = wanted - {scene_name(p) for p in paths}
        if missing:
            raise SystemExit(f'scenes not found in {args.data_root}/{{{",".join(args.split)}}}: {sorted(missing)}')
    sizes = []
    start = time.time()
    with SuperpointSource(args.out, args.source, log=print) as source:
        for path in progress(paths, 'superpoints', log=print, unit='scene'):
            scene = scene_name(path)
            pt = load_scene_3d(path)
            found, kind = source.locate(scene, path, pt.coords, pt.colors, overwrite=args.overwrite)
            ids = source.load(found, len(pt.coords))
            sizes.append((len(ids), int(ids.max()) + 1))
            if kind == 'computed':
                print(f'{scene}: {sizes[-1][1]} superpoints of {len(ids)} points -> {found}')
        counts, seconds = dict(source.counts), source.seconds
    points, segments = np.array(sizes).sum(0) if sizes else (0, 0)
    print(f"superpoints of {len(paths)} scenes in {time.time() - start:.1f} s: {counts['computed']} computed "
          f"({seconds:.1f} s), {counts['cached']} already current, {counts['segs.json']} with ScanNet's segs.json; "
          f"{segments} superpoints, {points / max(segments, 1):.0f} points each on average -> {args.out}")
    return {'counts': counts, 'seconds': seconds, 'scenes': len(paths), 'superpoints': int(segments)}


if __name__ == '__main__':
    run_cli(main)
