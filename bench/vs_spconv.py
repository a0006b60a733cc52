"""Benchmark: our engine against native spconv on the CPU, one ESG training step and the kernel maps alone.

One step = the input tensor (kernel maps are rebuilt every step: every batch has new coordinates), forward of
DisNet(arch, 768), the cosine distillation loss to fixed random unit targets, backward, Adam. spconv runs the
same network with the same weights (``bench/spconv_native.py``, checked equal to ours before timing). The
contenders alternate round by round (``--rounds``; each round: one warm-up step and ``--steps`` timed steps
per contender) and the table gives medians over all timed steps, so a slow spell of the machine hits both.

Kernel maps: ``maps_in_step`` is the time spent inside the step building coordinate sets and kernel maps (ours:
``strided_coordinate_set`` / ``build_kernel_map``; spconv: ``get_indice_pairs``), ``maps_alone`` the same
builds replayed by themselves, as a step requests them, on a warm process.

    python bench/vs_spconv.py                                   # both rooms, 14A and 18A, 1 and 2 threads
    python bench/vs_spconv.py --rooms demo --archs MinkUNet14A --threads 1 --rounds 3

Rooms: ``demo``, a room of the demo's synthetic world (20,000 points) at the demo's 10 cm voxels;
``scan``, the same kind of room sampled at 300,000 points (a ScanNet scan's density) at 2 cm. Both are
generated (about 20 s for the second) and kept in ``--cache``.

spconv 2.3's CPU scatter-add gives wrong rows with more than one thread (docs/sparse_engine.md): its rows at
2 threads time spconv as it ships, and say how far its output is from ours (relative to the output's scale).
Needs spconv (``pip install spconv==2.3.8``, CPU build).
"""
import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spconv_native  # noqa: E402

import models.sparse as ME  # noqa: E402
from models.disnet import DisNet  # noqa: E402
from models.sparse import kmap  # noqa: E402
from pipeline.losses import cosine_distance  # noqa: E402

ROOMS = {'demo': (20_000, 0.10), 'scan': (150_000, 0.02)}


def room_voxels(name, cache):
    """Voxel coordinates [V, 4] (batch 0) of room ``name``, generated once and cached."""
    points, voxel = ROOMS[name]
    path = os.path.join(cache, f'vs_spconv_{name}.npy')
    if not os.path.exists(path):
        from dataset.label_constants import dataset_info
        from dataset.voxelizer import sparse_quantize
        from synthetic.features import make_text_embeddings
        from synthetic.rooms import room_types
        from synthetic.writer import make_scene
        info = dataset_info('scannet')
        scene = make_scene(info, make_text_embeddings(info), room_types('scannet')[0][0], 'scene0000_00', 0,
                           num_points=points)
        v, _, _ = sparse_quantize(scene['coords'], voxel)
        os.makedirs(cache, exist_ok=True)
        np.save(path + '.tmp.npy', v)
        os.replace(path + '.tmp.npy', path)
    v = np.load(path)
    return torch.from_numpy(np.concatenate([np.zeros((len(v), 1), np.int32), v], 1))


class Timers:
    """Wraps the map builders of both engines: ``seconds`` adds up their time, ``calls`` records their
    arguments for the replay."""

    def __init__(self):
        from spconv.pytorch import ops
        self.seconds, self.calls, self.record = 0.0, [], False
        self.wrapped = [(kmap, 'strided_coordinate_set'), (kmap, 'build_kernel_map'), (ops, 'get_indice_pairs')]
        self.originals = [getattr(m, n) for m, n in self.wrapped]
        for (module, name), fn in zip(self.wrapped, self.originals):
            setattr(module, name, self._timed(fn))

    def _timed(self, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            if self.record:
                self.calls.append((fn, args, kwargs))
            return out
        return call

    def restore(self):
        for (module, name), fn in zip(self.wrapped, self.originals):
            setattr(module, name, fn)


class Contender:
    def __init__(self, name, model, make_input, n, timers):
        self.name, self.model, self.make_input, self.timers = name, model, make_input, timers
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.target = torch.nn.functional.normalize(torch.randn(n, 768, generator=torch.Generator().manual_seed(1)),
                                                    dim=1)
        self.step_s, self.map_s, self.replay_s = [], [], []

    def step(self, timed):
        self.timers.seconds = 0.0
        t0 = time.perf_counter()
        out = self.model(self.make_input())
        loss = cosine_distance(out, self.target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if timed:
            self.step_s.append(time.perf_counter() - t0)
            self.map_s.append(self.timers.seconds)

    def replay_maps(self):
        """The map builds of one step, recorded, then rerun by themselves (ours: on a fresh coordinate manager,
        so nothing is cached)."""
        self.timers.calls, self.timers.record = [], True
        self.step(timed=False)
        self.timers.record = False
        calls = self.timers.calls
        t0 = time.perf_counter()
        if self.name == 'ours':
            replay_ours(calls, self.make_input)
        else:
            for fn, args, kwargs in calls:
                fn(*args, **kwargs)
        self.replay_s.append(time.perf_counter() - t0)


def replay_ours(calls, make_input):
    x = make_input()  # the stride-1 set (its sort is part of the input tensor, as in a step)
    m = x.coordinate_manager
    for fn, args, _ in calls:
        if fn.__name__ == 'strided_coordinate_set':
            fn(*args)
        else:
            src, dst, generator, region_stride, transposed = args
            fn(src, dst, generator, region_stride, transposed)
    return m


def run(arch, coords, rounds, steps):
    torch.manual_seed(0)
    n = len(coords)
    feats = torch.rand(n, 3, generator=torch.Generator().manual_seed(2))
    ours = DisNet(arch, 768)
    spconv_native.check_equal(ours, coords, feats, 1)
    wrong = spconv_native.difference(ours, coords, feats, 1) if torch.get_num_threads() > 1 else 0.0
    native = spconv_native.native_unet(ours)
    timers = Timers()
    try:
        contenders = [Contender('ours', ours, lambda: ME.SparseTensor(feats, coords), n, timers),
                      Contender('spconv', native, lambda: spconv_native.native_input(coords, feats, 1), n, timers)]
        for c in contenders:
            c.step(timed=False)
        for _ in range(rounds):
            for c in contenders:
                c.step(timed=False)
                for _ in range(steps):
                    c.step(timed=True)
                c.replay_maps()
    finally:
        timers.restore()
    return {c.name: (statistics.median(c.step_s), statistics.median(c.map_s), statistics.median(c.replay_s))
            for c in contenders}, wrong


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rooms', default='demo,scan')
    p.add_argument('--archs', default='MinkUNet14A,MinkUNet18A')
    p.add_argument('--threads', default='1,2')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--steps', type=int, default=2, help='timed steps per contender and round')
    p.add_argument('--cache', default='bench_logs')
    args = p.parse_args()
    warnings.filterwarnings('ignore')
    try:
        import spconv
    except ImportError:
        raise SystemExit('bench/vs_spconv.py needs spconv: pip install spconv==2.3.8 (CPU build)')
    print('# bench/vs_spconv.py: one ESG training step (input + maps + forward + cosine loss + backward + Adam), '
          'medians; maps in ms')
    print(f'# machine: {platform.machine()} {platform.processor() or ""}, {os.cpu_count()} cores | python '
          f'{platform.python_version()} | torch {torch.__version__} | spconv {spconv.__version__} | '
          f'{args.rounds} rounds x {args.steps} steps, interleaved')
    print(f'{"room":>5} {"network":>12} {"voxels":>8} {"threads":>7} {"ours_ms":>8} {"spconv_ms":>9} '
          f'{"ours/spconv":>11} {"maps_in_step ours/spconv":>24} {"maps_alone ours/spconv":>22}')
    for room in args.rooms.split(','):
        coords = room_voxels(room, args.cache)
        for threads in [int(t) for t in args.threads.split(',')]:
            torch.set_num_threads(threads)
            for arch in args.archs.split(','):
                r, wrong = run(arch, coords, args.rounds, args.steps)
                (o, om, orp), (s, sm, srp) = r['ours'], r['spconv']
                mark = f'  (spconv output off by {wrong:.0%} of its scale)' if wrong > 1e-3 else ''
                print(f'{room:>5} {arch:>12} {len(coords):>8} {threads:>7} {o * 1e3:>8.0f} {s * 1e3:>9.0f} '
                      f'{o / s:>11.2f} {f"{om * 1e3:.0f} / {sm * 1e3:.0f}":>24} '
                      f'{f"{orp * 1e3:.0f} / {srp * 1e3:.0f}":>22}{mark}', flush=True)


if __name__ == '__main__':
    main()
