"""Synthetic data (synthetic/): formats, determinism, CLIP-like text similarities, coverage and
the calibrated PLG quality (docs/synthetic_data.md)."""
import os
import re

import numpy as np
import pytest
import torch

from dataset.formats import (
    fused_feature_files,
    list_scenes,
    load_fused_features,
    load_scene_3d,
    load_text_embeddings,
    scene_name,
)
from dataset.label_constants import IGNORE_LABEL, dataset_info
from pipeline.metric import evaluate
from pipeline.pseudo_labels import pseudo_labels_from_features, scene_label_mask
from synthetic.features import confused_as, make_text_embeddings, similar_pairs
from synthetic.geometry import Primitive, Room
from synthetic.rooms import make_room
from synthetic.scan import _inside_primitives, camera_visibility, look_at_pose, ray_cast
from synthetic.writer import make_scene, make_synthetic_dataset

SMALL = dict(num_train=4, num_val=1, points_per_scene=6000, seed=0)


@pytest.fixture(scope='module')
def scannet_small(tmp_path_factory):
    out = tmp_path_factory.mktemp('syn')
    return make_synthetic_dataset(str(out), 'toy', 'scannet', **SMALL)


def _load_split(res, split, info):
    scenes = []
    for path in list_scenes(res['data_root'], split):
        s = load_scene_3d(path)
        (feat_path,) = fused_feature_files(res['feature_root'], scene_name(path))
        feat, mask = load_fused_features(feat_path, num_points=len(s.coords), feat_dim=768)
        scenes.append((scene_name(path), s, feat, mask))
    return scenes


def test_formats_and_layout(scannet_small):
    info = dataset_info('scannet')
    res = scannet_small
    text = load_text_embeddings(res['text_embeddings_path'], num_classes=20, feat_dim=768)
    assert text.shape == (20, 768)
    train = list_scenes(res['data_root'], 'train')
    val = list_scenes(res['data_root'], 'val')
    assert [os.path.basename(p) for p in train] == [f'scene{i:04d}_00_vh_clean_2.pth' for i in range(4)]
    assert [os.path.basename(p) for p in val] == ['scene0004_00_vh_clean_2.pth']
    label_sets = []
    for split in ('train', 'val'):
        for name, s, feat, mask in _load_split(res, split, info):
            assert os.path.basename(fused_feature_files(res['feature_root'], name)[0]) == f'{name}_0.pt'
            raw = torch.load(fused_feature_files(res['feature_root'], name)[0], weights_only=True)
            assert raw['feat'].dtype == torch.float16 and raw['mask_full'].dtype == torch.bool
            assert s.coords.shape == (6000, 3) and s.has_labels
            assert s.colors.min() >= -1 and s.colors.max() <= 1
            valid = s.labels[s.labels != IGNORE_LABEL]
            assert valid.min() >= 0 and valid.max() < 20
            ignored = np.mean(s.labels == IGNORE_LABEL)
            assert 0.005 < ignored < 0.08, ignored   # 'a few %' unannotated, as real scans
            assert feat.shape == (int(mask.sum()), 768)
            label_sets.append(frozenset(np.unique(valid).tolist()))
    assert len(set(label_sets)) == len(label_sets)  # scene-level labels differ between scenes
    assert set().union(*label_sets[:4]) == set(range(20))  # every class occurs in 4 train scenes


def test_deterministic_per_seed(tmp_path):
    kw = dict(num_train=2, num_val=1, points_per_scene=2500)
    a = make_synthetic_dataset(str(tmp_path / 'a'), 'd', 'scannet', seed=3, **kw)
    b = make_synthetic_dataset(str(tmp_path / 'b'), 'd', 'scannet', seed=3, **kw)
    c = make_synthetic_dataset(str(tmp_path / 'c'), 'd', 'scannet', seed=4, **kw)
    info = dataset_info('scannet')
    for split in ('train', 'val'):
        for (na, sa, fa, ma), (nb, sb, fb, mb), (nc, sc, fc, mc) in zip(
                _load_split(a, split, info), _load_split(b, split, info), _load_split(c, split, info)):
            assert na == nb == nc
            for x, y in ((sa.coords, sb.coords), (sa.colors, sb.colors), (sa.labels, sb.labels)):
                assert x.tobytes() == y.tobytes()
            assert fa.numpy().tobytes() == fb.numpy().tobytes() and torch.equal(ma, mb)
            assert sa.coords.tobytes() != sc.coords.tobytes()
            assert not (ma.shape == mc.shape and torch.equal(ma, mc))
    assert np.load(a['text_embeddings_path']).tobytes() == np.load(b['text_embeddings_path']).tobytes()
    assert np.load(a['text_embeddings_path']).tobytes() != np.load(c['text_embeddings_path']).tobytes()


def test_existing_rooms_are_reused_only_when_made_with_the_same_settings(tmp_path):
    kw = dict(num_train=2, num_val=1, points_per_scene=2500)
    first = make_synthetic_dataset(str(tmp_path), 'd', 'scannet', seed=3, **kw)
    assert make_synthetic_dataset(str(tmp_path), 'd', 'scannet', seed=3, **kw)['skipped'] == 3
    # other settings into the same folder: every room is made again, none of the old ones is kept
    again = make_synthetic_dataset(str(tmp_path), 'd', 'scannet', seed=3, num_train=2, num_val=1, points_per_scene=3000)
    assert again['skipped'] == 0 and again['stats']['train']['points'] != first['stats']['train']['points']


@pytest.mark.parametrize('dataset', ['scannet', 's3dis'])
def test_text_embedding_similarity_bands(dataset):
    info = dataset_info(dataset)
    for seed in range(3):
        text = make_text_embeddings(info, 768, seed)
        assert text.shape == (info.num_classes, 768)
        np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
        sim = text @ text.T
        pair = np.zeros_like(sim, dtype=bool)
        for a, b in similar_pairs(info):
            i, j = info.labels.index(a), info.labels.index(b)
            pair[i, j] = pair[j, i] = True
        other = ~pair & ~np.eye(len(sim), dtype=bool)
        assert sim[pair].min() >= 0.8 and sim[pair].max() <= 0.9
        assert sim[other].min() >= 0.6 and sim[other].max() <= 0.75
        # every real systematic confusion goes to a class with a similar text embedding
        conf, strength = confused_as(info)
        for c in np.flatnonzero(strength >= 0.3):  # (floor leans weakly toward wall)
            assert pair[c, conf[c]], info.labels[c]


def test_coverage_and_plg_calibration(scannet_small):
    """Coverage 80-95 %; per-point PLG mIoU (upstream definition, uncovered = wrong) in [0.5, 0.75];
    pseudo labels never leave the scene-level label."""
    info = dataset_info('scannet')
    text = load_text_embeddings(scannet_small['text_embeddings_path'], 20, 768)
    preds, gts, covered, total = [], [], 0, 0
    for name, s, feat, mask in _load_split(scannet_small, 'train', info):
        scene_mask = scene_label_mask(s.labels, 20)
        lab, _ = pseudo_labels_from_features(feat, text, scene_mask)
        assert scene_mask[lab].all(), name
        pred = np.full(len(s.labels), info.unlabeled_index)
        pred[mask.numpy()] = lab
        preds.append(pred)
        gts.append(s.labels)
        covered += int(mask.sum())
        total += len(mask)
    coverage = covered / total
    assert 0.80 <= coverage <= 0.95, coverage
    result = evaluate(np.concatenate(preds), np.concatenate(gts), info.labels)
    assert 0.5 <= result['miou'] <= 0.75, result['miou']
    stats = scannet_small['stats']['train']
    assert stats['plg_miou'] == pytest.approx(result['miou'])
    assert stats['coverage'] == pytest.approx(coverage)


def test_systematic_confusion_is_resolved_by_scene_label(scannet_small):
    """The systematic confusion ESS can learn to undo: points of a class are labelled right far more often
    in scenes whose label lacks the confusable class than in scenes that have it."""
    info = dataset_info('scannet')
    text = load_text_embeddings(scannet_small['text_embeddings_path'], 20, 768)
    conf, strength = confused_as(info)
    right = {True: [0, 0], False: [0, 0]}
    for name, s, feat, mask in _load_split(scannet_small, 'train', info):
        scene_mask = scene_label_mask(s.labels, 20)
        lab, _ = pseudo_labels_from_features(feat, text, scene_mask)
        gt = s.labels[mask.numpy()]
        for c in np.flatnonzero(strength >= 1.0):
            sel = gt == c
            if sel.any():
                key = bool(scene_mask[conf[c]])
                right[key][0] += int((lab[sel] == c).sum())
                right[key][1] += int(sel.sum())
    acc_absent = right[False][0] / right[False][1]
    acc_present = right[True][0] / right[True][1]
    assert acc_absent > 0.85 and acc_present < acc_absent - 0.2, (acc_absent, acc_present)


def test_s3dis_layout(tmp_path):
    res = make_synthetic_dataset(str(tmp_path), 'toy', 's3dis', num_train=4, num_val=2, points_per_scene=3000)
    train = [scene_name(p) for p in list_scenes(res['data_root'], 'train')]
    val = [scene_name(p) for p in list_scenes(res['data_root'], 'val')]
    assert all(re.fullmatch(r'Area_[1-46]_[A-Za-z]+_\d+', n) for n in train), train
    assert all(re.fullmatch(r'Area_5_[A-Za-z]+_\d+', n) for n in val), val
    load_text_embeddings(res['text_embeddings_path'], num_classes=13, feat_dim=768)
    labels = np.concatenate([load_scene_3d(p).labels for p in list_scenes(res['data_root'], 'train')])
    assert set(np.unique(labels[labels != IGNORE_LABEL]).tolist()) == set(range(13))


def _toy_room():
    """Floor box under a 1 m cube at x in [2, 3] and a cylinder (r 0.5, centre (5, 0)), no walls."""
    info = dataset_info('scannet')
    prims = [Primitive('box', np.array([-10., -10., -1.]), np.array([10., 10., 0.]), 1, 0, np.ones(3), (5,)),
             Primitive('box', np.array([2., -0.5, 0.]), np.array([3., 0.5, 1.]), 2, 1, np.ones(3)),
             Primitive('cylinder', np.array([4.5, -0.5, 0.]), np.array([5.5, 0.5, 2.]), 6, 2, np.ones(3))]
    return Room('toy', info.name, 'toy', np.array([20., 20., 3.]), prims)


def test_ray_cast_analytic():
    room = _toy_room()
    origins = np.array([[0., 0., 0.5], [0., 0., 1.5], [0., 0., 1.5], [5., 0., 3.], [0., 0., 0.5]])
    dirs = np.array([[1., 0., 0.], [1., 0., 0.], [0., 0., -1.], [0., 0., -1.], [0., 1., 0.]])
    t, idx = ray_cast(origins, dirs, room)
    np.testing.assert_allclose(t[:4], [2.0, 4.5, 1.5, 1.0], atol=1e-9)  # box face, cylinder side, floor, cap
    assert idx[:4].tolist() == [1, 2, 0, 2]
    assert np.isinf(t[4]) and idx[4] == -1
    # an oblique ray over the cube into the cylinder's side: |t (1, 0.05) - (5, 0)| = 0.5, smaller root
    t, idx = ray_cast(np.array([0., 0., 1.5]), np.array([[1.0, 0.05, 0.0]]), room)
    a, b, c = 1.0025, -10.0, 24.75
    assert t[0] == pytest.approx((-b - np.sqrt(b * b - 4 * a * c)) / (2 * a), rel=1e-12) and idx[0] == 2


def test_visibility_respects_occlusion():
    room = _toy_room()
    room.camera_poses = [look_at_pose([0., 0., 0.5], [5., 0., 0.5])]
    pts = np.array([[2.0, 0.0, 0.5],    # front face of the cube: seen
                    [3.0, 0.0, 0.5],    # back face: hidden by the cube
                    [4.0, 0.3, 0.0],    # floor behind the cube: the ray passes through the cube
                    [4.0, 2.0, 0.0],    # floor beside the cube, inside the 58 x 45 deg frustum: seen
                    [1.0, 0.0, 0.0],    # floor in front of the cube, below the frustum: not seen
                    [2.5, 0.0, 1.0],    # top of the cube, seen from below its top: hidden
                    [8.0, 0.0, 0.5]])   # beyond the cylinder and the 4.5 m depth range
    vis = camera_visibility(room, pts)[0]
    assert vis.tolist() == [True, False, False, True, False, False, False]


def test_sampled_points_lie_on_exposed_surfaces():
    info = dataset_info('scannet')
    text = make_text_embeddings(info, 768, 0)
    scene = make_scene(info, text, 'living', 'scene9999_00', 9999, seed=0, num_points=3000)
    # each clean point is on (within 3 mm of) exactly one primitive: its own; none is buried in another
    assert (_inside_primitives(scene['room'], scene['clean_coords']) == 1).all()
    room = scene['room']
    assert len(room.fusion_views) < len(room.camera_poses)
    assert scene['visibility'].shape == (len(room.fusion_views), 3000)
    np.testing.assert_array_equal(scene['visibility'].any(0), scene['mask_full'])


def test_make_room_has_every_always_class():
    info = dataset_info('scannet')
    rng = np.random.default_rng(0)
    room = make_room(rng, info, 'bathroom')
    classes = {p.class_id for p in room.primitives}
    for name in ('wall', 'floor', 'toilet', 'sink', 'bathtub', 'shower curtain', 'door'):
        assert info.labels.index(name) in classes, name
    with pytest.raises(ValueError, match='unknown room type'):
        make_room(rng, info, 'garage')
