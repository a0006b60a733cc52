"""Kernel maps: the fast ways (pooling pairs, block index, mirrored offsets) give exactly the pairs of a brute
force search over all coordinate pairs, on every kind of set the network meets and the edge cases it may.

The oracle below is independent of ``kmap``'s lookups: it compares every output coordinate plus every offset
with every input coordinate, in plain integer arithmetic.
"""
import pytest
import torch

from models.sparse import kmap
from models.sparse.kmap import KernelGenerator, build_kernel_map, strided_coordinate_set


def brute_force_pairs(src, dst, generator, region_stride, transposed):
    """{offset index: sorted list of (in row, out row)} by comparing all coordinates."""
    offsets = generator.offsets(region_stride)
    a, b = src.coordinates.long(), dst.coordinates.long()
    pairs = {}
    for k, d in enumerate(offsets):
        shift = torch.cat([torch.zeros(1, dtype=torch.long), d])
        target = b - shift if transposed else b + shift
        eq = (target[:, None, :] == a[None, :, :]).all(2)          # [N_out, N_in]
        out_rows, in_rows = torch.nonzero(eq, as_tuple=True)
        pairs[k] = sorted(zip(in_rows.tolist(), out_rows.tolist()))
    return pairs


def map_pairs(km):
    result = {}
    for k in range(km.kernel_volume):
        i, o = km.pairs(k)
        result[k] = sorted(zip(i.tolist(), o.tolist()))
    return result


def cloud(n=300, side=12, batches=2, seed=0, lo=0):
    g = torch.Generator().manual_seed(seed)
    parts = []
    for b in range(batches):
        flat = torch.randperm(side ** 3, generator=g)[:n]
        xyz = torch.stack([flat % side, (flat // side) % side, flat // side ** 2], 1) + lo
        parts.append(torch.cat([torch.full((n, 1), b), xyz], 1))
    c = torch.cat(parts).int()
    return c[torch.randperm(len(c), generator=g)]


def pyramid(coords, levels=4):
    sets = {1: kmap.CoordinateSet(coords, check_unique=True)}
    for s in (2 ** i for i in range(1, levels + 1)):
        sets[s] = strided_coordinate_set(sets[s // 2], s)
    return sets


@pytest.mark.parametrize('lo', [0, -37])
@pytest.mark.parametrize('stride', [1, 2, 4])
@pytest.mark.parametrize('kernel_size,dilation', [(1, 1), (3, 1), (5, 1), (3, 2), (2, 1), (3, 3), (7, 1)])
def test_submanifold_maps_equal_brute_force(kernel_size, dilation, stride, lo):
    sets = pyramid(cloud(lo=lo))
    s = sets[stride]
    g = KernelGenerator(kernel_size, dilation=dilation)
    km = build_kernel_map(s, s, g, stride, False)
    assert map_pairs(km) == brute_force_pairs(s, s, g, stride, False)
    assert km.in_idx.dtype == km.out_idx.dtype == torch.int32
    if kernel_size % 2:
        assert km.identity_offset == g.volume // 2


@pytest.mark.parametrize('stride', [1, 2, 4])
@pytest.mark.parametrize('transposed', [False, True])
def test_down_and_up_maps_equal_brute_force(stride, transposed):
    """Kernel 2 stride 2 between a set and the set floored from it: each fine row meets one coarse row."""
    sets = pyramid(cloud(lo=-21, seed=1))
    fine, coarse = sets[stride], sets[2 * stride]
    g = KernelGenerator(2, 2)
    src, dst = (coarse, fine) if transposed else (fine, coarse)
    km = build_kernel_map(src, dst, g, stride, transposed)
    assert map_pairs(km) == brute_force_pairs(src, dst, g, stride, transposed)
    assert km.offset_ptr[-1] == len(fine)  # exactly one pair per fine row


def test_other_maps_fall_back_to_the_search_and_agree():
    """A strided 3x3x3 conv (not a pooling kernel) and a kernel reaching further than the block index serves
    take the sorted-key search; both still equal brute force."""
    sets = pyramid(cloud(seed=2))
    g = KernelGenerator(3, 2)
    km = build_kernel_map(sets[1], sets[2], g, 1, False)
    assert map_pairs(km) == brute_force_pairs(sets[1], sets[2], g, 1, False)
    wide = KernelGenerator(3, dilation=4)  # reach 4 voxels > the block index's 3
    km = build_kernel_map(sets[1], sets[1], wide, 1, False)
    assert map_pairs(km) == brute_force_pairs(sets[1], sets[1], wide, 1, False)


def test_neighbour_blocks_dense_grid_and_search_agree(monkeypatch):
    """Far-apart coordinates (a sparse scan of a large site) are served by the search instead of the dense grid
    of blocks; both give the same maps."""
    coords = cloud(seed=3)
    coords[::7, 1:] *= 50  # spread a seventh of the points over a large volume
    coords = torch.unique(coords, dim=0)
    dense = build_kernel_map(*(2 * [kmap.CoordinateSet(coords, True)]), KernelGenerator(3), 1, False)
    monkeypatch.setattr(kmap, '_DENSE_BLOCK_GRID', 0)
    s = kmap.CoordinateSet(coords, True)
    searched = build_kernel_map(s, s, KernelGenerator(3), 1, False)
    assert map_pairs(dense) == map_pairs(searched) == brute_force_pairs(s, s, KernelGenerator(3), 1, False)


def test_single_point_and_empty_sets():
    one = kmap.CoordinateSet(torch.tensor([[0, 5, -3, 2]], dtype=torch.int32), True)
    km = build_kernel_map(one, one, KernelGenerator(3), 1, False)
    assert km.bounds[-1] == 1 and km.identity_offset == 13 and km.pairs(13)[0].tolist() == [0]
    empty = kmap.CoordinateSet(torch.zeros((0, 4), dtype=torch.int32), True)
    km = build_kernel_map(empty, empty, KernelGenerator(3), 1, False)
    assert km.bounds[-1] == 0 and km.kernel_volume == 27


def test_strided_set_remembers_its_parent_rows():
    sets = pyramid(cloud(lo=-9, seed=4), levels=2)
    fine, coarse = sets[1], sets[2]
    floored = torch.div(fine.coordinates[:, 1:], 2, rounding_mode='floor') * 2
    assert coarse.parent is fine and coarse.stride == 2
    assert torch.equal(coarse.coordinates[coarse.parent_rows][:, 1:], floored)
    assert torch.equal(coarse.coordinates[coarse.parent_rows][:, 0], fine.coordinates[:, 0])
