"""dataset/fused_features.py, the one lookup of fused 2D features, and the loaders' public protocol: ``read_scene``,
the repeat rule (``repeat_item`` / ``scene_and_repeat``) and ``has_fused_features``."""
import os

import numpy as np
import pytest
import torch

from dataset import formats, fused_features
from dataset.ess_loader import ESSPointDataset, ESSSceneDataset
from dataset.feature_loader import FusedFeatureLoader
from dataset.point_loader import Point3DLoader, repeat_item, scene_and_repeat
from dataset.scan_io import ScanLoader
from pipeline.query import SceneSubset

N, D = 400, 6


def write_scene(root, split, name, seed):
    """A scene of N points whose colours encode the point index (so a loader's item names its scene and points)."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1.2, (N, 3)).astype(np.float32)
    idx = np.arange(N)
    colors = (np.stack([idx % 16, idx // 16, np.full(N, seed % 200)], 1) / 127.5 - 1.0).astype(np.float32)
    labels = rng.integers(0, 20, N)
    formats.save_scene_3d(os.path.join(root, split, f'{name}.pth'), coords, colors, labels)
    return coords, labels


def write_features(folder, name, mask, full):
    formats.save_fused_features(os.path.join(folder, f'{name}.pt'), torch.from_numpy(full[mask]),
                                torch.from_numpy(mask))


@pytest.fixture
def data(tmp_path):
    """train: 'room' (three files, random subsets of one fusion) and 'room_0' (one file, which is also the name a
    k=0 file of 'room' would have); val: 'hall' (one file). One feature folder for both splits."""
    root, feat = str(tmp_path / '3d'), str(tmp_path / 'feat')
    rng = np.random.default_rng(0)
    truth = {}
    for split, name, seed in (('train', 'room', 1), ('train', 'room_0', 2), ('val', 'hall', 3)):
        write_scene(root, split, name, seed)
        full = rng.normal(size=(N, D)).astype(np.float16).astype(np.float32)
        visible = rng.random(N) < 0.7
        masks = [visible & (rng.random(N) < 0.5) for _ in range(3 if name == 'room' else 1)]
        for k, mask in enumerate(masks):
            write_features(feat, f'{name}_{k + 1}' if name == 'room' else name, mask, full)
        truth[name] = (full, np.logical_or.reduce(masks))
    return root, feat, truth


# ----------------------------------------------------------------------------- the feature root of a split
def test_feature_root_with_and_without_a_separate_val_folder():
    assert fused_features.feature_root('/f', '', 'train', 'val') == '/f'
    assert fused_features.feature_root('/f', '', 'val', 'val') == '/f'  # '' = the same folder
    assert fused_features.feature_root('/f', None, 'val', 'val') == '/f'
    assert fused_features.feature_root('/f', '/fv', 'val', 'val') == '/fv'
    assert fused_features.feature_root('/f', '/fv', 'train', 'val') == '/f'
    assert fused_features.feature_root('/f', '/fv', 'test', 'val') == '/f'  # only the val split has its own
    assert fused_features.feature_root('/f', '/fv', 'val', 'test') == '/f'  # ... whatever val_split names
    assert fused_features.feature_root('/f', '/fv', 'test', 'test') == '/fv'


# ----------------------------------------------------------------------------- a scene's files and features
def test_feature_files_are_formats_rule_and_tell_scenes_apart(data):
    root, feat, _ = data
    assert fused_features.feature_files is formats.fused_feature_files  # one rule, kept for formats' users
    scenes = fused_features.scene_names(root)
    assert scenes == {'room', 'room_0', 'hall'}
    names = lambda s, sc: [os.path.basename(p) for p in fused_features.feature_files(feat, s, sc)]  # noqa: E731
    assert names('room', scenes) == ['room_1.pt', 'room_2.pt', 'room_3.pt']  # room_0.pt is scene room_0's
    assert names('room', ()) == ['room_0.pt', 'room_1.pt', 'room_2.pt', 'room_3.pt']  # without the names: taken
    assert names('room_0', scenes) == ['room_0.pt']
    assert fused_features.feature_files(feat, 'nowhere', scenes, required=False) == []
    with pytest.raises(FileNotFoundError, match="no fused features for scene 'nowhere'"):
        fused_features.feature_files(feat, 'nowhere', scenes)


def test_point_features_are_the_mask_scatter_of_the_merged_files(data):
    root, feat, truth = data
    scenes = fused_features.scene_names(root)
    for name, (full, union) in truth.items():
        merged, mask, files = fused_features.scene_features(feat, name, num_points=N, feat_dim=D, scenes=scenes)
        assert len(files) == (3 if name == 'room' else 1)
        assert np.array_equal(mask.numpy(), union) and merged.dtype == torch.float16
        assert merged.shape == (union.sum(), D)
        points, point_mask = fused_features.point_features(feat, name, N, D, scenes)
        assert points.dtype == torch.float32 and points.shape == (N, D)
        assert torch.equal(point_mask, mask)
        scatter = torch.zeros(N, D)
        scatter[mask] = merged.float()  # the scatter every caller used to write itself
        assert torch.equal(points, scatter)
        assert torch.equal(points, fused_features.expand_to_points(merged, mask))
        assert np.array_equal(points.numpy()[union], full[union]) and not points.numpy()[~union].any()
        # the loaders' expansion keeps the files' dtype
        assert torch.equal(fused_features.expand_to_points(merged, mask, torch.float16), scatter.half())
    with pytest.raises(formats.FormatError, match='has 401 points'):
        fused_features.point_features(feat, 'hall', N + 1, D, scenes)


def test_coverage_is_the_mask_of_the_point_features(data):
    root, feat, truth = data
    scenes = fused_features.scene_names(root)
    for name, (_, union) in truth.items():
        covered = fused_features.coverage(feat, name, N, scenes)
        assert covered.dtype == bool and np.array_equal(covered, union)
        assert np.array_equal(covered, fused_features.point_features(feat, name, N, D, scenes)[1].numpy())
    assert fused_features.coverage('', 'hall', N, scenes) is None  # no folder given
    assert fused_features.coverage(os.path.join(feat, 'missing'), 'hall', N, scenes) is None
    assert fused_features.coverage(feat, 'nowhere', N, scenes) is None  # no file of the scene (own scans)


def test_every_loader_reads_features_through_the_module(data):
    root, feat, truth = data
    reader = ESSSceneDataset(root, 'train', feat, 20, feat_dim=D)
    for i, name in enumerate(reader.scenes):
        item = reader[i]
        merged, mask, files = fused_features.scene_features(feat, name, N, D, fused_features.scene_names(root))
        assert item['feat_paths'] == files and torch.equal(item['feat'], merged)
        assert torch.equal(item['mask_full'], mask)
        assert reader.reader.scene_inputs(name)[1:] == files
    loader = FusedFeatureLoader(root, feat, voxel_size=0.05, split='train', feat_dim=D, seed=0)
    assert [[os.path.basename(f) for f in files] for files in loader.feature_files] == \
        [['room_1.pt', 'room_2.pt', 'room_3.pt'], ['room_0.pt']]
    val = FusedFeatureLoader(root, feat, voxel_size=0.05, split='val', eval_all=True, input_color=True, feat_dim=D,
                             seed=0)
    _, _, _, feat_3d, mask, inverse = val[0]
    full, union = truth['hall']
    kept = np.full(feat_3d.shape[0], N)
    np.minimum.at(kept, inverse.numpy(), np.arange(N))  # the kept (first) point of each voxel
    assert np.array_equal(mask.numpy(), union[kept])
    assert np.array_equal(feat_3d.float().numpy(), np.where(union[kept][:, None], full[kept], 0))


# ----------------------------------------------------------------------------- the repeat rule
def test_repeat_item_round_trips():
    for n in (1, 2, 7):
        items = set()
        for i in range(n):
            for r in range(4):
                item = repeat_item(i, r, n)
                assert scene_and_repeat(item, n) == (i, r)
                items.add(item)
        assert items == set(range(4 * n))  # every item of a loader with loop 4 is exactly one (scene, repeat)
    assert repeat_item(3, 0, 5) == 3 and repeat_item(3, 2, 5) == 13


def test_repeat_item_is_what_the_loader_serves(data):
    root, feat, _ = data
    loader = Point3DLoader(root, voxel_size=0.05, split='train', aug=True, loop=3, eval_all=True, input_color=True,
                           seed=4)
    n = len(loader.data_paths)
    assert len(loader) == 3 * n
    first = {}
    for item in range(len(loader)):
        i, r = scene_and_repeat(item, n)
        coords, feats, labels, inverse = loader[item]
        assert np.array_equal(labels.numpy(), loader.read_scene(i)[2])  # item i + r * n is scene i ...
        assert loader.scene_name(item) == loader.scene_name(i)
        # ... drawn from the item's own stream: the same as asking for it again, another one than repeat 0
        assert torch.equal(loader[repeat_item(i, r, n)][0], coords)
        if r == 0:
            first[i] = coords
        else:
            assert not (coords.shape == first[i].shape and torch.equal(coords, first[i]))
    features = FusedFeatureLoader(root, feat, voxel_size=0.05, split='train', aug=True, loop=2, eval_all=True,
                                  seed=4, feat_dim=D)
    for item in range(len(features)):
        i, _ = scene_and_repeat(item, n)
        assert np.array_equal(features[item][2].numpy(), features.read_scene(i)[2])


def test_scene_subset_keeps_the_full_numbering(data):
    root, _, _ = data
    base = Point3DLoader(root, voxel_size=0.05, split='train', eval_all=True, input_color=True, seed=2)
    subset = SceneSubset(base, [1])
    for r in range(3):
        a = subset[repeat_item(0, r, len(subset))]
        b = base[repeat_item(1, r, len(base.data_paths))]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for x, y in zip(subset.read_scene(0), base.read_scene(1)):
        assert np.array_equal(x, y)
    assert subset.scene_name(0) == 'room_0' and subset.datapath_prefix == base.datapath_prefix


# ----------------------------------------------------------------------------- explicit attributes
def test_loaders_say_whether_their_scenes_have_fused_features(data, tmp_path):
    root, feat, _ = data
    scan = str(tmp_path / 'scan.pth')
    formats.save_scene_3d(scan, np.random.default_rng(0).uniform(0, 1, (50, 3)).astype(np.float32),
                          np.zeros((50, 3), np.float32), np.zeros(50, np.int64))
    points = Point3DLoader(root, split='val')
    scans = ScanLoader([scan], voxel_size=0.1)
    assert points.has_fused_features and not scans.has_fused_features
    assert FusedFeatureLoader(root, feat, split='val', feat_dim=D).has_fused_features
    assert ESSSceneDataset(root, 'val', feat, 20).has_fused_features
    assert ESSPointDataset(root, 'val', feat, 10, 20, label_source='gt').has_fused_features
    assert SceneSubset(points, [0]).has_fused_features and not SceneSubset(scans, [0]).has_fused_features
    for cls in (Point3DLoader, ScanLoader, FusedFeatureLoader, SceneSubset):
        assert hasattr(cls, 'read_scene') and not hasattr(cls, '_read_scene')  # public, no private alias
    assert scans.read_scene(0)[0].shape == (50, 3)
    for dead in ('use_cache', 'datapath_feat', 'identifier'):
        assert not hasattr(points, dead) and not hasattr(FusedFeatureLoader(root, feat, split='val'), dead)
    assert not hasattr(points.voxelizer, 'ignore_label')


def test_fused_features_are_refused_for_own_scans(data, tmp_path):
    from pipeline.inference import predict_split
    scan = str(tmp_path / 'scan.pth')
    formats.save_scene_3d(scan, np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="own scans"):
        predict_split(None, ScanLoader([scan], voxel_size=0.1), torch.zeros(2, D), device=torch.device('cpu'),
                      feature_type='fusion', fused_feature_root=data[1])
