"""Time and peak memory of query.py on a large scan, written as a phone / LiDAR scanner app writes it.

    python bench/own_scan.py --scene data/demo_3d/val/scene0016_00_vh_clean_2.pth --points 5000000
    python bench/own_scan.py ... --config config/scannet/openseg_eval.yaml model_path <ckpt> device cuda

Makes ``<out>/scan_<points>.ply`` from a scene: points drawn with Gaussian jitter of half the scene's sampling step
until the scan has ``--points`` points, y-up (as ARKit apps export), binary little-endian, float x y z, float normals,
uchar colours and a float confidence. Then runs ``query.py ... input <that file> input_up_axis y`` in a child process
and prints its wall time and peak resident memory (the child's ``ru_maxrss``). Extra ``key value`` pairs go to
query.py (e.g. ``test_repeats 1``, ``max_voxels 500000``, ``voxel_size 0.02``).
"""
import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np

from dataset.formats import load_scene_3d


def write_scanner_ply(scene_path, points, path, seed=0):
    from plyfile import PlyData, PlyElement
    scene = load_scene_3d(scene_path)
    rng = np.random.default_rng(seed)
    if points <= 0:  # the scene's own points, unchanged (an export of the room itself)
        points, source, sigma = len(scene.coords), np.arange(len(scene.coords)), 0.0
    else:
        source = rng.integers(0, len(scene.coords), points)
        # jitter by half the scene's sampling step: the copies spread over the surface instead of piling up on
        # the original samples (a real dense scan is uniform), and the surfaces get the ~1 cm noise of a phone scan
        from pipeline.visualize import point_spacing
        sigma = 0.5 * point_spacing(scene.coords)
    xyz = scene.coords[source] + rng.normal(0, sigma, (points, 3)).astype(np.float32)
    rgb = np.clip(np.rint((scene.colors[source] + 1) * 127.5), 0, 255).astype(np.uint8)
    v = np.empty(points, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('nx', '<f4'), ('ny', '<f4'),
                                ('nz', '<f4'), ('red', 'u1'), ('green', 'u1'), ('blue', 'u1'), ('confidence', '<f4')])
    # z-up scene -> y-up file: (x, y, z) -> (x, z, -y); input_up_axis y turns it back
    v['x'], v['y'], v['z'] = xyz[:, 0], xyz[:, 2], -xyz[:, 1]
    v['nx'], v['ny'], v['nz'] = 0, 1, 0
    v['red'], v['green'], v['blue'] = rgb.T
    v['confidence'] = rng.random(points).astype(np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    PlyData([PlyElement.describe(v, 'vertex')], text=False, byte_order='<').write(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scene', required=True, help='a .pth scene to densify')
    parser.add_argument('--points', type=int, default=5_000_000, help='0: the scene\'s own points, no jitter')
    parser.add_argument('--out', default='out/own_scan')
    parser.add_argument('--config', default='config/demo/openseg_eval.yaml')
    parser.add_argument('--queries', default='chair;bed')
    args, opts = parser.parse_known_args()
    ply = os.path.join(args.out, f'scan_{args.points}.ply' if args.points > 0 else 'scan.ply')
    if not os.path.isfile(ply):
        start = time.perf_counter()
        write_scanner_ply(args.scene, args.points, ply)
        print(f'wrote {ply} ({os.path.getsize(ply) / 2 ** 20:.0f} MiB) in {time.perf_counter() - start:.1f} s')
    command = [sys.executable, 'query.py', '--config', args.config, 'input', ply, 'input_up_axis', 'y',
               'queries', args.queries, 'save_folder',
               os.path.join(args.out, f'result_{args.points}' if args.points > 0 else 'result')] + opts
    print(' '.join(command))
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # KiB -> GiB (Linux)
    what = f'{args.points:,} points' if args.points > 0 else 'the scene itself'
    print(f'{what}: query.py {wall:.1f} s wall, peak resident memory {peak:.2f} GiB')


if __name__ == '__main__':
    main()
