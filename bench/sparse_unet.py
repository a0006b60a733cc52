"""Benchmark: one training step of DisNet(MinkUNet18A -> 768) on synthetic ScanNet-scale rooms.

A step = build the SparseTensor (kernel maps are rebuilt every step, as in training where every batch
has new coordinates), forward, cosine-distance loss to random unit targets (the distillation loss),
backward, Adam. Prints the median ms/step over ``--steps`` after ``--warmup`` steps, voxels/s, peak
memory, and the share of the step spent building coordinates, kernel maps and the Triton path's forward
gather plans (map_share, timed by wrapping the functions that build them: ``timing_kernel_maps``; the
feature-gradient plans are built in backward and count in ms/step only). With spconv importable it also
times native spconv (``bench/spconv_native.py``: the same network from spconv's own layers) on the same voxels.

    python bench/sparse_unet.py                                # CUDA if present, full size
    python bench/sparse_unet.py --device cpu --scale 0.05 --steps 2 --batch-sizes 1
    python bench/sparse_unet.py --dtype fp32,bf16,fp16 --batch-sizes 1,4 --conv reference,triton,spconv
    python bench/sparse_unet.py --conv triton --row-orders mask,memory --autotune   # tuning runs

``--row-orders`` times the Triton path with its rows sorted by neighbour mask (the default) and/or in memory
order; ``--autotune`` lets Triton's autotuner pick the tile shapes (its first steps include the tuning, so
raise ``--warmup``) and prints the configurations it chose.
"""
import argparse
import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

import models.sparse as ME
from models.disnet import DisNet
from models.sparse import dispatch, kmap, settings
from pipeline.losses import cosine_distance

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spconv_native  # noqa: E402

VOXELS_PER_SCENE = 185_000  # a ScanNet scene at 2 cm has about this many occupied voxels


def synthetic_room(rng, scale):
    """Voxel coordinates [N, 3] of a room: floor, four walls and a few boxes (surfaces only)."""
    target = VOXELS_PER_SCENE * scale
    side = max(int(np.sqrt(target / 3.6)), 8)      # floor side^2 + walls 2*side^2 + boxes ~0.6*side^2
    height = side // 2
    g = np.arange(side)
    gx, gy = np.meshgrid(g, g, indexing='ij')
    floor = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size, int)], 1)
    h = np.arange(height)
    wx, wz = np.meshgrid(g, h, indexing='ij')
    walls = [np.stack([wx.ravel(), np.full(wx.size, y), wz.ravel()], 1) for y in (0, side - 1)]
    walls += [np.stack([np.full(wx.size, x), wx.ravel(), wz.ravel()], 1) for x in (0, side - 1)]
    boxes = []
    for _ in range(6):
        size = rng.integers(side // 10 + 2, side // 4 + 3, size=3)
        lo = rng.integers(1, side - size[:2].max() - 1, size=2)
        bx, by, bz = (np.arange(s) for s in size)
        for axis in range(3):  # the faces of the box at both ends of each axis (top and sides)
            a, b = [bx, by, bz][(axis + 1) % 3], [bx, by, bz][(axis + 2) % 3]
            ma, mb = np.meshgrid(a, b, indexing='ij')
            for end in (0, size[axis] - 1):
                face = np.zeros((ma.size, 3), int)
                face[:, axis] = end
                face[:, (axis + 1) % 3] = ma.ravel()
                face[:, (axis + 2) % 3] = mb.ravel()
                boxes.append(face + np.array([lo[0], lo[1], 0]))
    xyz = np.concatenate([floor] + walls + boxes)
    xyz = xyz + rng.integers(-1, 2, size=xyz.shape) * (rng.random(xyz.shape) < 0.05)  # surface jitter
    return np.unique(xyz, axis=0)


def make_batch(batch_size, scale, seed):
    rng = np.random.default_rng(seed)
    coords = [np.concatenate([np.full((len(r), 1), b), r], 1)
              for b, r in enumerate(synthetic_room(rng, scale) for _ in range(batch_size))]
    coords = torch.from_numpy(np.concatenate(coords)).int()
    feats = torch.from_numpy(rng.random((len(coords), 3), dtype=np.float32))
    return coords, feats


def autocast_for(device, dtype):
    if dtype == 'fp32':
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}[dtype])


def peak_memory_mib(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timing_kernel_maps(device):
    """Within the block, ``timer.seconds`` adds up the time spent in the engine's builders of strided coordinate
    sets and kernel maps and in the implementations' preparation of new maps (each called once per new set or
    map); ``timer.seconds = 0`` starts a new count. The engine keeps no timer: the functions are wrapped here."""
    timer = SimpleNamespace(seconds=0.0)
    wrapped = [(kmap, 'strided_coordinate_set'), (kmap, 'build_kernel_map'), (dispatch, 'prepare')]
    originals = [getattr(module, name) for module, name in wrapped]

    def timed(fn):
        def call(*args):
            t0 = time.perf_counter()
            result = fn(*args)
            sync(device)  # asynchronous CUDA work belongs to the build that launched it
            timer.seconds += time.perf_counter() - t0
            return result
        return call

    for (module, name), fn in zip(wrapped, originals):
        setattr(module, name, timed(fn))
    try:
        yield timer
    finally:
        for (module, name), fn in zip(wrapped, originals):
            setattr(module, name, fn)


def time_training_steps(model, make_input, num_voxels, device, dtype, steps, warmup, on_step=None):
    """Seconds of each timed training step (input built, forward, cosine loss to random unit targets, backward,
    Adam) after ``warmup`` steps, and the peak memory; ``on_step(input, seconds)`` sees every timed step (no
    input is kept alive beyond its step, so the peak is one step's). The same loop times both engines."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == 'fp16'))
    target = torch.nn.functional.normalize(torch.randn(num_voxels, 768, device=device), dim=1)
    times = []
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        x = make_input()
        with autocast_for(device, dtype):
            out = model(x)
        loss = cosine_distance(out.F if hasattr(out, 'F') else out, target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            if on_step is not None:
                on_step(x, times[-1])
    return times, peak_memory_mib(device)


def bench_ours(coords, feats, device, dtype, steps, warmup, conv='reference', row_order='mask', autotune=False):
    torch.manual_seed(0)
    model = DisNet('MinkUNet18A', 768).to(device)
    coords, feats = coords.to(device), feats.to(device)
    map_share = []

    def make_input(timer):
        timer.seconds = 0.0  # each step builds its kernel maps anew (a new batch has new coordinates), as in training
        return ME.SparseTensor(feats, coords)

    with settings.using(conv=conv, row_order=row_order, autotune=autotune), timing_kernel_maps(device) as timer:
        times, mem = time_training_steps(model, lambda: make_input(timer), len(coords), device, dtype, steps, warmup,
                                         on_step=lambda x, t: map_share.append(timer.seconds / t))
    return statistics.median(times), statistics.median(map_share), mem


def bench_spconv(coords, feats, batch_size, device, dtype, steps, warmup):
    """Native spconv (``bench/spconv_native.py``: the same MinkUNet18A from spconv's own layers and rulebooks)."""
    torch.manual_seed(0)
    model = spconv_native.native_unet(DisNet('MinkUNet18A', 768)).to(device)
    c, f = coords.to(device), feats.to(device)
    times, mem = time_training_steps(model, lambda: spconv_native.native_input(c, f, batch_size), len(c), device,
                                     dtype, steps, warmup)
    return statistics.median(times), mem


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch-sizes', default='1,4')
    p.add_argument('--dtype', default=None, help='comma list of fp32,bf16,fp16 (default: fp32 on CPU, '
                                                 'all three on CUDA)')
    p.add_argument('--conv', default=None, help='comma list of sparse_conv implementations: reference,triton,spconv '
                                                '(default: all three on CUDA, spconv where it imports; reference '
                                                'on CPU)')
    p.add_argument('--row-orders', default='mask', help='comma list of Triton row orders (sparse_conv_row_order): '
                                                        'mask,none')
    p.add_argument('--autotune', action='store_true', help='Triton rows: autotune the tile shapes '
                                                           '(sparse_conv_autotune; CUDA)')
    p.add_argument('--scale', type=float, default=1.0, help='fraction of a ScanNet scene (185k voxels)')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    device = torch.device(args.device)
    dtypes = (args.dtype or ('fp32,bf16,fp16' if device.type == 'cuda' else 'fp32')).split(',')
    try:
        import spconv.pytorch  # noqa: F401
        has_spconv = True
    except ImportError:
        has_spconv = False
    default_convs = ('reference,triton' + (',spconv' if has_spconv else '')) if device.type == 'cuda' else 'reference'
    convs = (args.conv or default_convs).split(',')
    for d in dtypes:
        if d not in ('fp32', 'bf16', 'fp16'):
            raise SystemExit(f'--dtype: unknown {d!r}, expected fp32, bf16 or fp16')
    for c in convs:
        if c not in settings.CONVS:
            raise SystemExit(f'--conv: unknown {c!r}, expected one of {", ".join(settings.CONVS)}')
    row_orders = args.row_orders.split(',')
    for r in row_orders:
        if r not in settings.ROW_ORDERS:
            raise SystemExit(f'--row-orders: unknown {r!r}, expected one of {", ".join(settings.ROW_ORDERS)}')
    variants = [(c, r) for c in convs for r in (row_orders if c == 'triton' else [None])]

    print('# bench/sparse_unet.py: one training step of DisNet(MinkUNet18A, 768), cosine loss, Adam')
    print(f'# machine: {platform.machine()} {platform.processor() or ""} | python {platform.python_version()} '
          f'| torch {torch.__version__} | threads {torch.get_num_threads()}')
    if device.type == 'cuda':
        print(f'# device: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})')
    else:
        print('# device: cpu (peak_rss is the process peak so far: later rows inherit earlier peaks)')
    print(f'# scale {args.scale} (x {VOXELS_PER_SCENE} voxels/scene), steps {args.steps} (median) after '
          f'{args.warmup} warm-up, native spconv: {"yes" if has_spconv else "not installed"} (spconv has no bf16 '
          f'path: its autocast casts to fp16, so bf16 rows are not compared)')
    mem_name = 'peak_alloc_MiB' if device.type == 'cuda' else 'peak_rss_MiB'
    print(f'{"batch":>5} {"dtype":>5} {"conv":>12} {"voxels":>9} {"ms/step":>9} {"voxels/s":>10} {mem_name:>14} '
          f'{"map_share":>9} {"spconv_ms":>9} {"spconv_MiB":>10} {"ours/spconv":>11}')
    for bs in [int(b) for b in args.batch_sizes.split(',')]:
        coords, feats = make_batch(bs, args.scale, args.seed)
        for dtype in dtypes:
            sp = None
            if has_spconv and dtype != 'bf16':
                try:
                    sp = bench_spconv(coords, feats, bs, device, dtype, args.steps, args.warmup)
                except Exception as err:  # report and go on: the other rows are still worth having
                    print(f'# spconv failed on {device} ({type(err).__name__}: {str(err).splitlines()[0][:120]})')
            for conv, row_order in variants:
                if conv == 'spconv' and dtype == 'bf16':
                    continue  # no bf16 path in spconv
                sec, share, mem = bench_ours(coords, feats, device, dtype, args.steps, args.warmup, conv,
                                             row_order or 'mask', args.autotune)
                label = conv if row_order is None else f'{conv}:{row_order}' + ('+tune' if args.autotune else '')
                sp_ms, sp_mem, ratio = ('-', '-', '-') if sp is None else \
                    (f'{sp[0] * 1e3:.1f}', f'{sp[1]:.0f}', f'{sec / sp[0]:.2f}')
                print(f'{bs:>5} {dtype:>5} {label:>12} {len(coords):>9} {sec * 1e3:>9.1f} {len(coords) / sec:>10.0f} '
                      f'{mem:>14.0f} {share:>9.1%} {sp_ms:>9} {sp_mem:>10} {ratio:>11}', flush=True)
    if args.autotune and 'triton' in convs:
        from models.sparse.triton import kernels
        for kernel, chosen in kernels.tuned_configs().items():
            for key, config in chosen.items():
                print(f'# autotuned {kernel} {key}: {config}')


if __name__ == '__main__':
    main()
