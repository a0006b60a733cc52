"""sparse_quantize, Voxelizer and the augmentation transforms (dataset/voxelizer.py, dataset/augmentation.py)."""
import numpy as np
import pytest

import dataset.augmentation as t
from dataset.voxelizer import Voxelizer, axis_rotation, sparse_quantize

ROT = ((-np.pi / 64, np.pi / 64), (-np.pi / 64, np.pi / 64), (-np.pi, np.pi))


def first_point_per_voxel(inverse, num_voxels):
    first = np.full(num_voxels, np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, np.arange(len(inverse)))
    return first


# ----------------------------------------------------------------------------- sparse_quantize
@pytest.mark.parametrize('voxel_size', [0.02, 0.05, 1.0])
def test_sparse_quantize_inverse_and_first_point(voxel_size):
    rng = np.random.default_rng(0)
    coords = rng.uniform(-1.5, 2.0, (20000, 3)).astype(np.float32)
    coords[100:200] = coords[0]  # many duplicates of point 0: they must map to point 0's voxel
    voxel_coords, kept, inverse = sparse_quantize(coords, voxel_size)
    assert voxel_coords.dtype == np.int32 and kept.dtype == np.int64 and inverse.dtype == np.int64
    expected = np.floor(coords / voxel_size)
    assert np.array_equal(voxel_coords[inverse], expected)            # every point's voxel
    assert len(np.unique(voxel_coords, axis=0)) == len(voxel_coords)  # one row per voxel
    assert np.array_equal(kept, first_point_per_voxel(inverse, len(kept)))  # lowest index represents
    assert np.array_equal(voxel_coords, expected[kept])
    assert np.all(inverse[100:200] == inverse[0])


def test_sparse_quantize_exact_small_case():
    coords = np.array([[0.01, 0.0, 0.0], [0.5, 0.5, 0.5], [0.02, 0.03, 0.04], [-0.01, 0.0, 0.0]])
    voxel_coords, kept, inverse = sparse_quantize(coords, 0.1)
    rows = {tuple(v): i for i, v in enumerate(voxel_coords)}
    assert set(rows) == {(0, 0, 0), (5, 5, 5), (-1, 0, 0)}
    assert kept[rows[(0, 0, 0)]] == 0 and kept[rows[(5, 5, 5)]] == 1 and kept[rows[(-1, 0, 0)]] == 3
    assert inverse.tolist() == [rows[(0, 0, 0)], rows[(5, 5, 5)], rows[(0, 0, 0)], rows[(-1, 0, 0)]]


def test_sparse_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match=r'\[N, 3\]'):
        sparse_quantize(np.zeros((4, 2)), 0.1)
    with pytest.raises(ValueError, match='positive'):
        sparse_quantize(np.zeros((4, 3)), 0.0)
    with pytest.raises(ValueError, match='NaN'):
        sparse_quantize(np.full((4, 3), np.nan), 0.1)
    v, k, i = sparse_quantize(np.zeros((0, 3)), 0.1)
    assert v.shape == (0, 3) and k.shape == (0,) and i.shape == (0,)


# ----------------------------------------------------------------------------- Voxelizer
def test_axis_rotation_is_upstream_matrix():
    from scipy.linalg import expm
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = 1
        for theta in (-2.0, 0.3, np.pi):
            assert np.allclose(axis_rotation(axis, theta), expm(np.cross(np.eye(3), e * theta)))


def test_voxelizer_without_augmentation_is_floor_shifted():
    rng = np.random.default_rng(1)
    coords = rng.uniform(-1, 1, (3000, 3)).astype(np.float32)
    vox = Voxelizer(voxel_size=0.05)
    vc, feats, labels, inverse, kept = vox.voxelize(coords, coords.copy(), np.arange(3000), return_ind=True)
    grid = np.floor(coords.astype(np.float64) / 0.05)
    assert np.array_equal(vc[inverse], grid - grid.min(0))
    assert np.array_equal(labels, kept) and np.array_equal(feats, coords[kept])


def test_voxelizer_mixed_voxel_takes_first_points_label():
    # upstream passes no labels to the quantiser and indexes labels with the first-occurrence index
    coords = np.array([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.03, 0.01, 0.02], [0.3, 0.3, 0.3]], np.float32)
    labels = np.array([7, 3, 3, 255])
    vc, _, out_labels, inverse = Voxelizer(0.1).voxelize(coords, np.zeros((4, 3)), labels)
    assert sorted(out_labels.tolist()) == [7, 255]
    assert out_labels[inverse[0]] == 7 and inverse[0] == inverse[1] == inverse[2]


def test_voxelizer_augmented_keeps_alignment_and_bounds():
    rng = np.random.default_rng(2)
    n = 5000
    coords = rng.uniform(0, 2, (n, 3)).astype(np.float32)
    labels = rng.integers(0, 20, n)
    feats = np.stack([np.arange(n), labels, np.zeros(n)], 1).astype(np.float64)  # feature = (index, label)
    vox = Voxelizer(0.05, use_augmentation=True, scale_augmentation_bound=(0.9, 1.1), rotation_augmentation_bound=ROT)
    vc, f, lab, inverse, kept = vox.voxelize(coords, feats, labels, return_ind=True, rng=np.random.default_rng(5))
    assert np.array_equal(kept, first_point_per_voxel(inverse, len(kept)))
    assert np.array_equal(f[:, 0], kept) and np.array_equal(lab, labels[kept]) and np.array_equal(f[:, 1], lab)
    assert vc.min() == 0 and np.all(vc.min(0) == 0)
    # points sharing a voxel are within one (scaled, rotated) voxel diagonal of the kept point
    gap = np.linalg.norm(coords - coords[kept[inverse]], axis=1)
    assert gap.max() < np.sqrt(3) * 0.05 / 0.9 + 1e-6
    # same rng seed -> same voxelisation; another seed -> another rotation
    again = vox.voxelize(coords, feats, labels, return_ind=True, rng=np.random.default_rng(5))
    other = vox.voxelize(coords, feats, labels, return_ind=True, rng=np.random.default_rng(6))
    assert np.array_equal(again[0], vc) and np.array_equal(again[3], inverse)
    assert not (len(other[0]) == len(vc) and np.array_equal(other[0], vc))


def test_transformation_matrix_ranges():
    vox = Voxelizer(0.02, use_augmentation=True, scale_augmentation_bound=(0.9, 1.1), rotation_augmentation_bound=ROT)
    yaws = []
    for seed in range(200):
        m_v, m_r = vox.get_transformation_matrix(np.random.default_rng(seed))
        rot = m_r[:3, :3]
        assert np.allclose(rot @ rot.T, np.eye(3)) and np.isclose(np.linalg.det(rot), 1.0)
        assert rot[2, 2] >= np.cos(np.pi / 32) - 1e-9  # only small tilts about x and y
        scale = m_v[0, 0] * 0.02
        assert 0.9 <= scale <= 1.1 and np.allclose(np.diag(m_v)[:3], m_v[0, 0])
        yaws.append(np.arctan2(rot[1, 0], rot[0, 0]))
    # full turn about z: all four quadrants are reached
    assert len(np.unique(np.floor((np.array(yaws) + np.pi) / (np.pi / 2)))) == 4


def test_voxelizer_clip_bound():
    coords = np.stack(np.meshgrid(*[np.linspace(0, 1, 11)] * 3, indexing='ij'), -1).reshape(-1, 3)
    vox = Voxelizer(0.1, clip_bound=((-0.25, 0.25), (-0.25, 0.25), (-0.25, 0.25)))
    vc, feats, labels, inverse = vox.voxelize(coords, coords.copy(), np.zeros(len(coords), int))
    assert np.all(np.abs(feats - 0.5) < 0.25 + 1e-9) and len(inverse) == 5 ** 3


def test_voxelizer_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match='differ in length'):
        Voxelizer(0.1).voxelize(np.zeros((4, 3)), np.zeros((3, 3)), np.zeros(4))


# ----------------------------------------------------------------------------- augmentation
def label_scene(n=4000, seed=0):
    """Points whose colour encodes their label (red channel = 10 * label)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 20, n)
    coords = rng.uniform(0, 3, (n, 3))
    colors = np.stack([10.0 * labels, rng.uniform(0, 255, n), rng.uniform(0, 255, n)], 1)
    return coords, colors, labels


@pytest.mark.parametrize('transform', [
    t.ChromaticAutoContrast(), t.ChromaticTranslation(0.1), t.ChromaticJitter(0.05),
    t.HueSaturationTranslation(0.5, 0.2)])
def test_colour_transforms_touch_colours_only(transform):
    coords, colors, labels = label_scene()
    changed = 0
    for seed in range(20):
        c_out, f_out, l_out = transform(coords.copy(), colors.copy(), labels.copy(), rng=np.random.default_rng(seed))
        assert np.array_equal(c_out, coords) and np.array_equal(l_out, labels)
        assert f_out.shape == colors.shape and np.isfinite(f_out).all()
        assert f_out.min() >= 0 and f_out.max() <= 255 + 1e-9
        changed += not np.allclose(f_out, colors)
    assert changed > 0


def test_chromatic_translation_is_one_offset():
    coords, colors, labels = label_scene()
    colors = np.full_like(colors, 128.0)
    for seed in range(10):
        _, out, _ = t.ChromaticTranslation(0.1)(coords, colors.copy(), labels, rng=np.random.default_rng(seed))
        offset = out - colors
        assert np.allclose(offset, offset[0]) and np.abs(offset).max() <= 25.5 + 1e-9


def test_chromatic_jitter_std():
    coords, colors, labels = label_scene(20000)
    colors = np.full_like(colors, 128.0)
    stds = []
    for seed in range(5):
        _, out, _ = t.ChromaticJitter(0.05)(coords, colors.copy(), labels, rng=np.random.default_rng(seed))
        if not np.array_equal(out, colors):
            stds.append((out - colors).std())
    assert stds and np.allclose(stds, 0.05 * 255, rtol=0.05)


def test_auto_contrast_constant_channel_has_no_nan():
    coords, colors, labels = label_scene()
    colors[:, 1] = 127.5
    for seed in range(30):
        _, out, _ = t.ChromaticAutoContrast()(coords, colors.copy(), labels, rng=np.random.default_rng(seed))
        assert np.isfinite(out).all() and np.allclose(out[:, 1], 127.5)


def test_hsv_round_trip_matches_colorsys():
    import colorsys
    rng = np.random.default_rng(3)
    rgb = rng.uniform(0, 255, (500, 3))
    rgb[:3] = [[0, 0, 0], [40, 40, 40], [255, 0, 0]]
    hsv = t.rgb_to_hsv(rgb)
    ref = np.array([colorsys.rgb_to_hsv(*(x / 255.0)) for x in rgb]) * [1, 1, 255]
    assert np.allclose(hsv, ref)
    assert np.array_equal(t.hsv_to_rgb(hsv), np.floor(rgb + 1e-9).astype(np.uint8))
    # zero hue / saturation change keeps colours up to the uint8 truncation
    _, out, _ = t.HueSaturationTranslation(0.0, 0.0)(None, rgb.copy(), None, rng=np.random.default_rng(0))
    assert np.abs(out - rgb).max() < 1.0


def test_horizontal_flip_mirrors_x_y_only():
    coords, colors, labels = label_scene()
    coords = np.floor(coords / 0.05)
    seen = set()
    for seed in range(40):
        out, f, l = t.RandomHorizontalFlip('z', False)(coords.copy(), colors, labels, rng=np.random.default_rng(seed))
        assert np.array_equal(out[:, 2], coords[:, 2]) and f is colors and l is labels
        flips = []
        for axis in (0, 1):
            same = np.array_equal(out[:, axis], coords[:, axis])
            assert same or np.array_equal(out[:, axis], coords[:, axis].max() - coords[:, axis])
            flips.append(not same)
        seen.add(tuple(flips))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_elastic_distortion_is_smooth_and_seeded():
    rng = np.random.default_rng(4)
    coords = rng.uniform(0, 3, (3000, 3))
    coords[1] = coords[0]
    aug = t.ElasticDistortion(((0.2, 0.4), (0.8, 1.6)))
    out = aug(coords.copy(), rng=np.random.default_rng(0))
    assert out.shape == coords.shape and np.array_equal(out[0], out[1])  # a function of position
    assert np.array_equal(out, aug(coords.copy(), rng=np.random.default_rng(0)))
    moved = np.linalg.norm(out - coords, axis=1)
    assert 0 < moved.mean() and moved.max() < 2.0
    # smooth: two points 1 mm apart move by nearly the same vector
    near = coords[:200] + 1e-3
    both = aug(np.concatenate([coords[:200], near]), rng=np.random.default_rng(0))
    assert np.abs((both[:200] - coords[:200]) - (both[200:] - near)).max() < 0.05


def test_compose_and_dropout_keep_alignment():
    coords, colors, labels = label_scene()
    pipeline = t.Compose([t.RandomDropout(0.2, 1.0), t.RandomHorizontalFlip('z', False)])
    c, f, l = pipeline(coords.copy(), colors.copy(), labels.copy(), rng=np.random.default_rng(0))
    assert len(c) == len(f) == len(l) == int(len(coords) * 0.8)
    assert np.array_equal(f[:, 0] / 10, l)  # each surviving point keeps its own label
    assert np.array_equal(c[:, 2], coords[np.isin(colors[:, 1], f[:, 1]), 2])  # dropout keeps point order
