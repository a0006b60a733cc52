"""Point3DLoader / FusedFeatureLoader on files written exactly as OpenScene writes them."""
import os

import numpy as np
import pytest
import torch

from dataset.feature_loader import FusedFeatureLoader, collation_fn, collation_fn_eval_all, covered_voxel_features
from dataset.formats import FormatError
from dataset.point_loader import Point3DLoader

N = 1500
D = 8


def index_colors(n):
    """Colours in [-1, 1] whose 0-255 values encode the point index (base 16 in channels 0 and 1)."""
    idx = np.arange(n)
    rgb = np.stack([idx % 16, idx // 16, np.full(n, 7)], 1).astype(np.float32)
    return rgb / 127.5 - 1.0


def decode_index(feats):
    rgb = np.rint((feats.numpy().astype(np.float64) + 1.0) * 127.5).astype(np.int64)
    assert np.all(rgb[:, 2] == 7)
    return rgb[:, 0] + 16 * rgb[:, 1]


def write_scene(folder, name, n=N, seed=0, colors=None):
    """OpenScene layout: torch.save of a numpy tuple, float labels with -100 and 255."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1.5, (n, 3)).astype(np.float32)
    labels = rng.integers(0, 20, n).astype(np.float64)
    labels[::7] = -100
    labels[3::11] = 255
    os.makedirs(folder, exist_ok=True)
    torch.save((coords, index_colors(n) if colors is None else colors, labels), os.path.join(folder, name))
    return coords, labels


def write_features(folder, fname, n=N, seed=0, frac=0.6, dim=D, numpy_mask=False):
    """OpenScene fusion output: {'feat': float16 [M, D], 'mask_full': bool [N]}; column 0 = point index."""
    rng = np.random.default_rng(seed)
    mask = rng.random(n) < frac
    idx = np.nonzero(mask)[0]
    feat = torch.from_numpy(np.concatenate([idx[:, None], rng.normal(size=(len(idx), dim - 1))], 1)).half()
    os.makedirs(folder, exist_ok=True)
    torch.save({'feat': feat, 'mask_full': mask if numpy_mask else torch.from_numpy(mask)}, os.path.join(folder, fname))
    return feat, mask


@pytest.fixture
def scannet(tmp_path):
    """Two ScanNet-named train scenes with 5 feature files each (different random subsets), one val scene."""
    root, feat_root = str(tmp_path / 'scannet_3d'), str(tmp_path / 'feat')
    scenes = {}
    for s in range(2):
        name = f'scene000{s}_00'
        coords, labels = write_scene(os.path.join(root, 'train'), name + '_vh_clean_2.pth', seed=s)
        feats = [write_features(feat_root, f'{name}_{k}.pt', seed=10 * s + k) for k in range(5)]
        scenes[name] = (coords, labels, feats)
    coords, labels = write_scene(os.path.join(root, 'val'), 'scene0100_00_vh_clean_2.pth', seed=7)
    scenes['scene0100_00'] = (coords, labels,
                              [write_features(feat_root, 'scene0100_00_0.pt', seed=99, numpy_mask=True)])
    return root, feat_root, scenes


def expected_labels(labels):
    out = labels.astype(np.int64)
    out[out < 0] = 255
    return out


def voxel_groups(inverse, num_voxels):
    first = np.full(num_voxels, np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, np.arange(len(inverse)))
    return first


# ----------------------------------------------------------------------------- Point3DLoader
def test_point_loader_openscene_file(scannet):
    root, _, scenes = scannet
    loader = Point3DLoader(root, voxel_size=0.05, split='train', loop=3, input_color=True, seed=0)
    assert len(loader) == 6 and loader.scene_name(4) == 'scene0000_00'
    coords, feats, labels = loader[0]
    assert coords.dtype == torch.int32 and coords.shape[1] == 4 and torch.all(coords[:, 0] == 1)
    assert torch.all(coords[:, 1:] >= 0) and feats.shape == (coords.shape[0], 3) and labels.dtype == torch.int64
    kept = decode_index(feats)
    orig = expected_labels(scenes['scene0000_00'][1])
    assert np.array_equal(labels.numpy(), orig[kept]) and set(labels.unique().tolist()) >= {255}
    # input_color False -> all-ones input (upstream default)
    _, ones, _ = Point3DLoader(root, voxel_size=0.05, split='train', seed=0)[0]
    assert torch.all(ones == 1)


@pytest.mark.parametrize('aug', [False, True])
def test_point_loader_labels_follow_points(scannet, aug):
    """Colour encodes the point index: every voxel's label is its first point's label, the inverse maps
    each point to a voxel whose kept point is the lowest index of its group, through elastic distortion,
    random rotation / scale, voxelisation and flips."""
    root, _, scenes = scannet
    loader = Point3DLoader(root, voxel_size=0.05, split='train', aug=aug, eval_all=True, input_color=True, seed=1)
    if aug:  # colour augmentation would destroy the encoding: keep the geometric part of the pipeline
        loader.input_transforms.transforms = loader.input_transforms.transforms[:1]
    plain = Point3DLoader(root, voxel_size=0.05, split='train', eval_all=False, input_color=True, seed=1)
    loader.aug = plain.aug = aug
    if aug:
        plain.input_transforms.transforms = plain.input_transforms.transforms[:1]
    for i in range(2):
        coords, feats, labels, inverse = loader[i]
        orig = expected_labels(scenes[loader.scene_name(i)][1])
        assert np.array_equal(labels.numpy(), orig)  # eval_all: labels of all original points, in order
        kept = decode_index(feats)
        assert inverse.shape == (N,) and int(inverse.max()) == coords.shape[0] - 1
        assert np.array_equal(kept, voxel_groups(inverse.numpy(), coords.shape[0]))
        c2, f2, l2 = plain[i]  # same seed / epoch / index -> same voxelisation, voxel labels = kept labels
        assert torch.equal(c2, coords) and np.array_equal(l2.numpy(), orig[kept])


def test_point_loader_determinism_and_epochs(scannet):
    root, _, _ = scannet
    a = Point3DLoader(root, voxel_size=0.05, split='train', aug=True, input_color=True, seed=3)
    b = Point3DLoader(root, voxel_size=0.05, split='train', aug=True, input_color=True, seed=3, memcache_init=True)
    for x, y in zip(a[1], b[1]):
        assert torch.equal(x, y)
    first = a[1]
    a.set_epoch(1)
    assert not torch.equal(a[1][1], first[1])
    a.set_epoch(0)
    assert torch.equal(a[1][1], first[1])
    assert not torch.equal(Point3DLoader(root, voxel_size=0.05, split='train', loop=2, aug=True,
                                         input_color=True, seed=3)[3][1], first[1])  # loop copies differ


def test_dataloader_workers_are_deterministic(scannet):
    root, feat_root, _ = scannet
    ds = FusedFeatureLoader(root, feat_root, voxel_size=0.05, split='train', aug=True, input_color=True, seed=5, loop=2)
    runs = []
    for workers in (0, 2):
        dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collation_fn)
        runs.append([b for b in dl])
    for b0, b2 in zip(*runs):
        for x, y in zip(b0, b2):
            assert torch.equal(x, y)


def test_bad_scene_files_name_the_file(tmp_path):
    folder = tmp_path / 'd' / 'train'
    write_scene(str(folder), 'bad_colour.pth', colors=np.full((N, 3), 2.0, np.float32))
    with pytest.raises(FormatError, match='bad_colour.pth.*\\[-1, 1\\]'):
        Point3DLoader(str(tmp_path / 'd'), split='train')[0]
    os.remove(folder / 'bad_colour.pth')
    (folder / 'corrupt.pth').write_bytes(b'not a torch file at all')
    with pytest.raises(RuntimeError, match='corrupt.pth'):
        Point3DLoader(str(tmp_path / 'd'), split='train')[0]
    with pytest.raises(FileNotFoundError, match='nosplit'):
        Point3DLoader(str(tmp_path / 'd'), split='nosplit')


# ----------------------------------------------------------------------------- FusedFeatureLoader
def test_feature_loader_train_matches_brute_force(scannet):
    root, feat_root, scenes = scannet
    loader = FusedFeatureLoader(root, feat_root, voxel_size=0.05, split='train', eval_all=True,
                                input_color=True, feat_dim=D, seed=0)
    chosen = {name: set() for name in ('scene0000_00', 'scene0001_00')}
    for epoch in range(6):
        loader.set_epoch(epoch)
        for i in range(2):
            coords, feats, labels, feat_3d, mask, inverse = loader[i]
            name = loader.scene_name(i)
            files = scenes[name][2]
            kept = decode_index(feats)
            assert np.array_equal(kept, voxel_groups(inverse.numpy(), coords.shape[0]))
            # which of the 5 files was read: the one whose coverage matches the kept points' mask
            k = [j for j, (_, m) in enumerate(files) if np.array_equal(m[kept], mask.numpy())]
            assert len(k) == 1
            assert loader.feature_file(i, loader.item_rng(i)) == os.path.join(feat_root, f'{name}_{k[0]}.pt')
            feat_k, mask_k = files[k[0]]
            rows = {p: r for r, p in enumerate(np.nonzero(mask_k)[0])}  # brute force: row of each covered point
            expect = [feat_k[rows[p]] for v, p in enumerate(kept) if mask_k[p]]
            assert feat_3d.dtype == torch.float16 and feat_3d.shape == (int(mask.sum()), D)
            assert torch.equal(feat_3d, torch.stack(expect))
            assert np.array_equal(feat_3d[:, 0].float().numpy(), kept[mask.numpy()])
    for epoch in range(40):  # the random k covers every file
        loader.set_epoch(epoch)
        for i in range(2):
            chosen[loader.scene_name(i)].add(os.path.basename(loader.feature_file(i, loader.item_rng(i)))[-4])
    assert all(s == set('01234') for s in chosen.values()), chosen


def test_covered_voxel_features_small():
    mask_full = torch.tensor([False, True, True, False, True])
    feat = torch.tensor([[1.0], [2.0], [4.0]])  # rows of points 1, 2, 4
    out, mask = covered_voxel_features(feat, mask_full, torch.tensor([3, 4, 0, 1]))
    assert mask.tolist() == [False, True, False, True] and out[:, 0].tolist() == [4.0, 1.0]


def test_feature_loader_val_scatters_features(scannet):
    root, feat_root, scenes = scannet
    loader = FusedFeatureLoader(root, feat_root, voxel_size=0.05, split='val', eval_all=True, input_color=True,
                                feat_dim=D, seed=0)
    coords, feats, labels, feat_3d, mask, inverse = loader[0]
    feat, mask_full = scenes['scene0100_00'][2][0]
    kept = decode_index(feats)
    assert feat_3d.shape == (coords.shape[0], D) and np.array_equal(mask.numpy(), mask_full[kept])
    full = torch.zeros(N, D, dtype=torch.float16)
    full[torch.from_numpy(mask_full)] = feat
    assert torch.equal(feat_3d, full[kept]) and torch.all(feat_3d[~mask] == 0)
    assert np.array_equal(labels.numpy(), expected_labels(scenes['scene0100_00'][1]))


def test_collate_batch_index_and_inverse_offsets(scannet):
    root, feat_root, _ = scannet
    loader = FusedFeatureLoader(root, feat_root, voxel_size=0.05, split='train', eval_all=True, input_color=True,
                                seed=0)
    items = [loader[0], loader[1]]
    coords, feats, labels, feat_3d, mask, inverse = collation_fn_eval_all(items)
    v0 = items[0][0].shape[0]
    assert coords[:v0, 0].eq(0).all() and coords[v0:, 0].eq(1).all()
    assert torch.equal(coords[:, 1:], torch.cat([items[0][0][:, 1:], items[1][0][:, 1:]]))
    assert torch.equal(feats[inverse], torch.cat([items[0][1][items[0][5]], items[1][1][items[1][5]]]))
    assert labels.shape == (2 * N,) and feat_3d.shape[0] == int(mask.sum())
    assert torch.all(items[0][0][:, 0] == 1)  # collate does not modify the items
    train = collation_fn([it[:5] for it in items])
    assert len(train) == 5 and torch.equal(train[0], coords)


def test_feature_loader_skips_scenes_without_features(tmp_path, scannet):
    root, feat_root, _ = scannet
    for k in range(5):
        os.remove(os.path.join(feat_root, f'scene0001_00_{k}.pt'))
    loader = FusedFeatureLoader(root, feat_root, voxel_size=0.05, split='train', seed=0)
    assert loader.skipped_scenes == ['scene0001_00'] and len(loader) == 1 and loader.scene_name(0) == 'scene0000_00'
    empty = tmp_path / 'empty_feat'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='empty_feat'):
        FusedFeatureLoader(root, str(empty), voxel_size=0.05, split='train')


def test_single_feature_file_without_suffix(tmp_path):
    root, feat_root = str(tmp_path / 's3dis'), str(tmp_path / 'f')
    write_scene(os.path.join(root, 'train'), 'Area_1_office_1.pth')
    write_features(feat_root, 'Area_1_office_1.pt')
    loader = FusedFeatureLoader(root, feat_root, voxel_size=0.05, split='train', feat_dim=D, seed=0)
    assert loader.feature_files[0] == [os.path.join(feat_root, 'Area_1_office_1.pt')]
    assert loader[0][3].shape[1] == D


@pytest.mark.parametrize('case, error, pattern', [
    ('mask_length', FormatError, r"mask_full' has 1499 entries but the 3D scene has 1500"),
    ('rows', FormatError, r"'feat' has \d+ rows but 'mask_full' marks"),
    ('dim', FormatError, r'expected feature dimension 8'),
    ('corrupt', RuntimeError, r'cannot read fused features'),
])
def test_bad_feature_files_name_the_file(tmp_path, case, error, pattern):
    root, feat_root = str(tmp_path / 'd'), str(tmp_path / 'f')
    write_scene(os.path.join(root, 'train'), 'room.pth')
    path = os.path.join(feat_root, 'room_0.pt')
    if case == 'mask_length':
        write_features(feat_root, 'room_0.pt', n=N - 1)
    elif case == 'rows':
        feat, mask = write_features(feat_root, 'room_0.pt')
        torch.save({'feat': feat[:-1], 'mask_full': torch.from_numpy(mask)}, path)
    elif case == 'dim':
        write_features(feat_root, 'room_0.pt', dim=D + 4)
    else:
        os.makedirs(feat_root)
        with open(path, 'wb') as f:
            f.write(b'\x80\x02garbage')
    loader = FusedFeatureLoader(root, feat_root, voxel_size=0.05, split='train', feat_dim=D, seed=0)
    with pytest.raises(error, match=pattern) as info:
        loader[0]
    assert 'room_0.pt' in str(info.value)
