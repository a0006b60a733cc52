"""How much of the Triton implicit GEMM's work is useful, per layer and per training step (no GPU needed).

The implicit GEMM gives a program a tile of BLOCK_M output rows; it runs every kernel offset that any row of
its tile has, for all rows of the tile. Useful multiply-adds are pairs x C_in x C_out; executed ones are
(active offsets of each tile) x BLOCK_M x C_in x C_out. This script runs DisNet(MinkUNet18A) once on the
benchmark's synthetic ScanNet-scale rooms, records every convolution's kernel map, and prints the useful
share of the executed work under each row order (``memory``: rows as stored, ``mask``: rows sorted by their
neighbour mask, what ``sparse_conv_row_order: mask`` does), for the forward product and the feature-gradient
product (the weight gradient runs over the pairs and wastes nothing), and the step's total.

    python bench/tile_occupancy.py                    # one 185k-voxel room, BLOCK_M 64
    python bench/tile_occupancy.py --batch-size 4 --block-m 32,64,128
"""
import argparse
import collections
import time

import torch
from sparse_unet import VOXELS_PER_SCENE, make_batch

import models.sparse as ME
from models.disnet import DisNet
from models.sparse import dispatch, settings
from models.sparse.reference import reference_sparse_conv
from models.sparse.triton.plan import mask_order, neighbour_table, tile_occupancy


def record_layers(coords, feats):
    """[(kernel_map, C_in, C_out)] of every convolution of one DisNet(MinkUNet18A) forward pass."""
    calls = []

    def recorder(features, kernel, kernel_map, num_out):
        calls.append((kernel_map, kernel.shape[-2], kernel.shape[-1]))
        return reference_sparse_conv(features, kernel, kernel_map, num_out)

    dispatch.register('reference', recorder)  # the reference path, seen on its way through
    try:
        torch.manual_seed(0)
        model = DisNet('MinkUNet18A', 768).eval()
        with torch.no_grad(), settings.using(conv='reference'):
            model(ME.SparseTensor(feats, coords))
    finally:
        dispatch.register('reference', reference_sparse_conv)
    return calls


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--scale', type=float, default=1.0, help=f'fraction of a ScanNet scene ({VOXELS_PER_SCENE} voxels)')
    p.add_argument('--block-m', default='64', help='comma list of tile heights (BLOCK_M)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    block_ms = [int(b) for b in args.block_m.split(',')]
    coords, feats = make_batch(args.batch_size, args.scale, args.seed)
    t0 = time.perf_counter()
    layers = record_layers(coords, feats)
    print(f'# bench/tile_occupancy.py: DisNet(MinkUNet18A), batch {args.batch_size} x scale {args.scale}: '
          f'{len(coords)} voxels, {len(layers)} convolutions ({time.perf_counter() - t0:.0f} s to build)')
    # group the layers by kernel map: occupancy is a property of the map, work scales with C_in x C_out
    by_map = collections.OrderedDict()
    for km, c_in, c_out in layers:
        if km.kernel_volume == 1 and km.identity_offset == 0:
            continue  # 1x1 convs are dense matmuls (cuBLAS), no tiles to waste
        by_map.setdefault(id(km), (km, []))[1].append(c_in * c_out)
    print('# useful share of executed work, memory order / mask-sorted rows, per BLOCK_M: forward, feature grad')
    print(f'{"kernel map":>12} {"K":>4} {"rows":>8} {"pairs/row":>9} {"layers":>6} {"GMAC/step":>9} '
          + ' '.join(f'{f"fwd {b}":>11} {f"grad {b}":>11}' for b in block_ms))
    useful = 0.0
    executed = collections.Counter()
    for km, channel_products in by_map.values():
        cc = sum(channel_products)
        stride_in, stride_out = _strides(layers, km)
        cells = []
        for transposed in (False, True):
            nb = neighbour_table(km, transposed)
            pairs = int((nb >= 0).sum())
            useful += pairs * cc
            order = mask_order(nb)
            for b in block_ms:
                for name, o in (('memory', None), ('mask', order)):
                    occ = tile_occupancy(nb, o, b)
                    executed[(name, b)] += pairs * cc / occ
                    cells.append((b, transposed, name, occ))
        # weight gradient: every pair once
        useful += km.in_idx.numel() * cc
        for key in list(executed):
            executed[key] += km.in_idx.numel() * cc
        share = {(b, t, name): occ for b, t, name, occ in cells}
        label = f'{stride_in}->{stride_out} k{round(km.kernel_volume ** (1 / 3))}'
        print(f'{label:>12} {km.kernel_volume:>4} {km.num_out:>8} {km.in_idx.numel() / km.num_out:>9.1f} '
              f'{len(channel_products):>6} {3 * km.in_idx.numel() * cc / 1e9:>9.1f} '
              + ' '.join(f'{share[(b, t, "memory")]:>4.2f} / {share[(b, t, "mask")]:.2f}'
                         for b in block_ms for t in (False, True)))
    print(f'# step total (forward + feature grad + weight grad of every conv with K > 1; the 1x1 convs are dense '
          f'matmuls and not counted): {useful / 1e9:.1f} GMAC useful')
    for b in block_ms:
        mem, mask = executed[('memory', b)], executed[('mask', b)]
        print(f'# BLOCK_M {b:>3}: executed {mem / 1e9:.1f} GMAC in memory order (useful share {useful / mem:.2f}), '
              f'{mask / 1e9:.1f} GMAC mask-sorted (useful share {useful / mask:.2f}): {mem / mask:.2f}x less work')


def _strides(layers, km):
    """(input, output) tensor stride of a kernel map, from its row counts (for the label only)."""
    sizes = {}
    for other, _, _ in layers:
        if other.kernel_volume > 1 and other.num_in == other.num_out:
            sizes.setdefault(other.num_in, None)
    ranked = sorted(sizes, reverse=True)  # finest (most rows) first: stride 1, 2, 4, ...
    stride = {n: 2 ** i for i, n in enumerate(ranked)}
    return stride.get(km.num_in, '?'), stride.get(km.num_out, '?')


if __name__ == '__main__':
    main()
