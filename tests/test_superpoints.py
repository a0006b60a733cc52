"""Superpoints and PLG's superpoint refinement (docs/method.md, "PLG refinement"): the refinement never crosses a
superpoint and matches its formula, exact gains on independent label noise, spread, ScanNet's segs.json reader, the
graph segmentation on planes and colours, the cache and its provenance, PLG end to end, the synthetic world's
segs.json files."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import config

from dataset import formats
from dataset.label_constants import IGNORE_LABEL, dataset_info
from dataset.superpoints import (
    SuperpointSource,
    cache_path,
    estimate_normals,
    find_segs_json,
    graph_segmentation,
    read_segs_json,
    segs_json_name,
    write_segs_json,
)
from pipeline.pseudo_labels import (
    MASKED_SCORE,
    plg_point_rows,
    plg_scene,
    plg_scene_refined,
    refine_with_superpoints,
)
from vlm_ps_generation import generation_vlm as gv

INFO = dataset_info('scannet')
C = INFO.num_classes


def post_mask_probs(feat, text, mask):
    p = torch.softmax(torch.as_tensor(feat, dtype=torch.float32) @ torch.as_tensor(text).float().t(), 1).numpy()
    p = p.astype(np.float64)
    p[:, ~mask] = MASKED_SCORE
    return p


def random_scene(seed, n=600, d=8, classes=6):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 0.4, (n, 3)).astype(np.float32)   # ~1 point per 2 cm voxel, some voxels shared
    mask_full = rng.random(n) < 0.8
    feat = rng.normal(size=(int(mask_full.sum()), d)).astype(np.float32) * 2
    text = rng.normal(size=(classes, d)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    tags = np.ones(classes, bool)
    tags[rng.choice(classes, 2, replace=False)] = False
    superpoints = rng.integers(0, 40, n) * 7 + 3   # arbitrary ids, as ScanNet's
    return coords, feat, mask_full, text, tags, superpoints


# ----------------------------------------------------------------------------- the refinement
@pytest.mark.parametrize('per_point', [True, False])
@pytest.mark.parametrize('pool', ['mean', 'vote'])
def test_refinement_stays_inside_each_superpoint_and_follows_its_formula(per_point, pool):
    coords, feat, mask_full, text, tags, sp = random_scene(0)
    lab, prob = plg_scene_refined(coords, feat, mask_full, text, tags, sp, per_point=per_point, pool=pool,
                                  chunk_size=97)
    base, _ = plg_scene(coords, feat, mask_full, text, tags, per_point=per_point)
    labelled = base < len(tags)
    assert ((lab < len(tags)) == labelled).all()                     # coverage unchanged without spread
    assert (prob[~labelled] == 0).all()
    assert set(np.unique(lab[labelled])) <= set(np.flatnonzero(tags))   # masked classes never win
    # an independent oracle: the post-mask probabilities of every labelled point (the row that scored it)
    rows = plg_point_rows(coords, mask_full, per_point=per_point)
    p = post_mask_probs(feat, text, tags)[rows[labelled]]
    ids, idx = sp[labelled], np.flatnonzero(labelled)
    for s in np.unique(ids):
        mine = ids == s
        assert len(set(lab[idx[mine]])) == 1                         # one label per superpoint
        if pool == 'mean':
            expect = p[mine].mean(0).argmax()
        else:
            votes = np.zeros(len(tags))
            np.add.at(votes, p[mine].argmax(1), p[mine].max(1))
            expect = votes.argmax()
        assert lab[idx[mine]][0] == expect
        np.testing.assert_allclose(prob[idx[mine]], p[mine].mean(0)[expect], rtol=1e-5)
    # a point's label comes from its own superpoint only: other superpoints' features change nothing in it
    target = sp == sp[idx[0]]
    rows_target = set(rows[target & labelled].tolist())
    other = np.array([r not in rows_target for r in range(len(feat))])
    feat2 = feat.copy()
    feat2[other] = np.random.default_rng(1).normal(size=(int(other.sum()), feat.shape[1])) * 5
    lab2, prob2 = plg_scene_refined(coords, feat2, mask_full, text, tags, sp, per_point=per_point, pool=pool)
    np.testing.assert_array_equal(lab2[target], lab[target])
    np.testing.assert_allclose(prob2[target], prob[target], rtol=1e-6)
    assert (lab2[~target] != lab[~target]).any()


@pytest.mark.parametrize('per_point', [True, False])
def test_a_superpoint_of_one_point_changes_nothing(per_point):
    coords, feat, mask_full, text, tags, _ = random_scene(2)
    base, base_prob = plg_scene(coords, feat, mask_full, text, tags, per_point=per_point)
    for pool in ('mean', 'vote'):
        lab, prob, before = plg_scene_refined(coords, feat, mask_full, text, tags, np.arange(len(coords)),
                                              per_point=per_point, pool=pool, return_unrefined=True)
        np.testing.assert_array_equal(lab, base)
        np.testing.assert_array_equal(before, base)
        np.testing.assert_allclose(prob, base_prob, rtol=1e-6)


def independent_noise_scene():
    """4 superpoints of 5 points, 2 of class 0 and 2 of class 1, one point of each with a wrong 2D feature."""
    text = np.eye(3, dtype=np.float32)
    gt = np.repeat([0, 0, 1, 1], 5)
    feat = 5 * text[gt]
    flipped = np.arange(4) * 5 + np.array([0, 3, 1, 4])   # one point per superpoint
    feat[flipped] = 5 * text[1 - gt[flipped]]
    coords = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    return coords, feat, np.ones(20, bool), text, np.ones(3, bool), np.repeat([10, 11, 12, 13], 5), gt


def iou_scores(pred, gt, classes):
    return [np.sum((pred == c) & (gt == c)) / np.sum((pred == c) | (gt == c)) for c in classes]


@pytest.mark.parametrize('pool', ['mean', 'vote'])
def test_independent_noise_inside_clean_segments_is_removed_exactly(pool):
    coords, feat, mask_full, text, tags, sp, gt = independent_noise_scene()
    before, _ = plg_scene(coords, feat, mask_full, text, tags, per_point=True)
    assert (before == gt).mean() == 0.8
    # class 0: 8 right, 2 of its points called 1, 2 points of class 1 called 0 -> IoU 8 / 12, the same for class 1
    assert iou_scores(before, gt, (0, 1)) == pytest.approx([2 / 3, 2 / 3])
    lab, prob = plg_scene_refined(coords, feat, mask_full, text, tags, sp, per_point=True, pool=pool)
    np.testing.assert_array_equal(lab, gt)
    assert np.mean(iou_scores(lab, gt, (0, 1))) == 1.0
    e5 = np.exp(5.0)
    right, wrong = e5 / (e5 + 2), 1 / (e5 + 2)
    np.testing.assert_allclose(prob, (4 * right + wrong) / 5, rtol=1e-6)   # the pooled probability of the label


def test_mean_and_vote_differ_as_their_formulas_say():
    """Two points lean weakly to class 0 (0.50 vs 0.45), one strongly to class 1 (0.99): the mean of the
    probabilities picks 1, the confidence-weighted vote (0.50 + 0.50 against 0.99) picks 0."""
    text = np.eye(3, dtype=np.float32)
    p = np.array([[0.50, 0.45, 0.05], [0.50, 0.45, 0.05], [0.005, 0.99, 0.005]])
    feat = np.log(p).astype(np.float32)          # softmax(log p) = p
    coords = np.arange(9, dtype=np.float32).reshape(3, 3)
    args = (coords, feat, np.ones(3, bool), text, np.ones(3, bool), np.zeros(3, np.int64))
    assert plg_scene_refined(*args, per_point=True, pool='mean')[0].tolist() == [1, 1, 1]
    lab, prob = plg_scene_refined(*args, per_point=True, pool='vote')
    assert lab.tolist() == [0, 0, 0]
    np.testing.assert_allclose(prob, (0.5 + 0.5 + 0.005) / 3, rtol=1e-5)


def test_spread_labels_the_unlabeled_points_of_mostly_labelled_superpoints():
    text = np.eye(3, dtype=np.float32)
    # superpoint 0: 3 of 4 points labelled; superpoint 1: 1 of 4; superpoint 2: none
    mask_full = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    sp = np.repeat([0, 1, 2], 4)
    feat = 5 * text[[2, 2, 0, 1]]
    coords = np.arange(36, dtype=np.float32).reshape(12, 3)
    tags = np.ones(3, bool)
    off, _ = plg_scene_refined(coords, feat, mask_full, text, tags, sp, per_point=True)
    assert off.tolist() == [2, 2, 2, 3, 1, 3, 3, 3, 3, 3, 3, 3]
    lab, prob = plg_scene_refined(coords, feat, mask_full, text, tags, sp, per_point=True, spread=True,
                                  min_coverage=0.5)
    assert lab.tolist() == [2, 2, 2, 2, 1, 3, 3, 3, 3, 3, 3, 3]
    assert prob[3] == prob[0] > 0 and (prob[5:] == 0).all()
    lab, _ = plg_scene_refined(coords, feat, mask_full, text, tags, sp, per_point=True, spread=True,
                               min_coverage=0.25)
    assert lab.tolist() == [2, 2, 2, 2, 1, 1, 1, 1, 3, 3, 3, 3]


def test_empty_scene_tags_and_checks():
    coords, feat, mask_full, text, tags, sp = random_scene(3, n=50)
    lab, prob = plg_scene_refined(coords, feat, mask_full, text, np.zeros(len(tags), bool), sp)
    assert (lab == len(tags)).all() and (prob == 0).all()
    with pytest.raises(ValueError, match='superpoint ids'):
        refine_with_superpoints(np.zeros(50, np.int64), feat, text, tags, sp[:10])
    with pytest.raises(ValueError, match='pool'):
        refine_with_superpoints(np.zeros(50, np.int64), feat, text, tags, sp, pool='max')


# ----------------------------------------------------------------------------- ScanNet's segs.json
def test_segs_json_reader_against_a_hand_written_file(tmp_path):
    path = tmp_path / 'scene0000_00_vh_clean_2.0.010000.segs.json'
    path.write_text('{"params": {"kThresh": "0.0001", "segMinVerts": "20"}, "sceneId": "scene0000_00",\n'
                    ' "segIndices": [17, 17, 4, 250, 4, 17]}')
    ids = read_segs_json(str(path), num_points=6)
    assert ids.dtype == np.int64 and ids.tolist() == [1, 1, 0, 2, 0, 1]
    with pytest.raises(ValueError, match='6 segment ids but the 3D scene has 7 points'):
        read_segs_json(str(path), num_points=7)
    bad = tmp_path / 'bad.segs.json'
    bad.write_text('{"segIndices": [1, 2,')
    with pytest.raises(ValueError, match='not valid JSON'):
        read_segs_json(str(bad))
    bad.write_text('{"segments": [1, 2]}')
    with pytest.raises(ValueError, match="'segIndices'"):
        read_segs_json(str(bad))
    bad.write_text('{"segIndices": [1, "2"]}')
    with pytest.raises(ValueError, match='list of integers'):
        read_segs_json(str(bad))
    # written in the same layout, read back
    write_segs_json(str(tmp_path / 'w.segs.json'), [9, 9, 3], 'scene0001_00')
    back = json.loads((tmp_path / 'w.segs.json').read_text())
    assert back['segIndices'] == [9, 9, 3] and back['sceneId'] == 'scene0001_00'
    assert segs_json_name('scene0000_00') == path.name


def test_segs_json_is_found_next_to_the_scene_or_in_the_superpoint_root(tmp_path):
    scene_path = tmp_path / 'data' / 'train' / 'scene0000_00_vh_clean_2.pth'
    scene_path.parent.mkdir(parents=True)
    root = tmp_path / 'sp'
    assert find_segs_json('scene0000_00', str(scene_path), str(root)) is None
    nested = root / 'scene0000_00' / segs_json_name('scene0000_00')   # ScanNet's scans/<scene>/ layout
    nested.parent.mkdir(parents=True)
    nested.write_text('{"segIndices": [0]}')
    assert find_segs_json('scene0000_00', str(scene_path), str(root)) == str(nested)
    flat = root / segs_json_name('scene0000_00')
    flat.write_text('{"segIndices": [0]}')
    assert find_segs_json('scene0000_00', str(scene_path), str(root)) == str(flat)
    beside = scene_path.parent / segs_json_name('scene0000_00')
    beside.write_text('{"segIndices": [0]}')
    assert find_segs_json('scene0000_00', str(scene_path), str(root)) == str(beside)


# ----------------------------------------------------------------------------- the graph segmentation
def plane_grid(n_side, spacing, rng):
    g = np.arange(n_side) * spacing
    u, v = np.meshgrid(g, g)
    return u.ravel() + rng.normal(0, 0.002, u.size), v.ravel() + rng.normal(0, 0.002, u.size)


def purity(ids, labels):
    return sum(np.bincount(labels[ids == s]).max() for s in np.unique(ids)) / len(ids)


def test_normals_of_a_plane():
    rng = np.random.default_rng(0)
    u, v = plane_grid(30, 0.02, rng)
    n = estimate_normals(np.stack([u, v, np.zeros_like(u)], 1), k=16)
    assert np.abs(n[:, 2]).min() > 0.999


def test_graph_segmentation_separates_planes_at_90_degrees_and_two_colours():
    rng = np.random.default_rng(0)
    u, v = plane_grid(50, 0.02, rng)                       # 1 m x 1 m at 2 cm, ScanNet's vertex spacing
    floor = np.stack([u, v, np.zeros_like(u)], 1)
    wall = np.stack([np.zeros_like(u) - 0.01, u, v + 0.01], 1)
    colour = np.full((2 * len(u), 3), 0.2) + rng.normal(0, 0.02, (2 * len(u), 3))   # one colour for both
    coords = np.concatenate([floor, wall])
    plane = np.repeat([0, 1], len(u))
    ids = graph_segmentation(coords, colour)
    assert purity(ids, plane) > 0.99
    main = []
    for side in (0, 1):   # each plane is essentially one segment (the corner's blended normals make a few small ones)
        values, counts = np.unique(ids[plane == side], return_counts=True)
        main.append(values[counts.argmax()])
        assert counts.max() > 0.9 * len(u) and (plane[ids == main[-1]] == side).mean() > 0.995
    assert main[0] != main[1]
    # one flat plane, two colours (red and blue halves): split along the colour edge, geometry alone would not
    red = u < 0.5
    colours = np.where(red[:, None], [0.8, -0.6, -0.6], [-0.6, -0.6, 0.8]) + rng.normal(0, 0.03, (len(u), 3))
    ids = graph_segmentation(floor, colours)
    assert purity(ids, red.astype(int)) > 0.99
    assert len(np.unique(ids)) <= 4
    # a flat uniform plane stays in few segments
    ids = graph_segmentation(floor, np.zeros((len(u), 3)) + rng.normal(0, 0.02, (len(u), 3)))
    assert len(np.unique(ids)) <= 2
    assert graph_segmentation(floor, None).max() + 1 <= 2   # geometry only
    # every segment has min_size points at least where it can merge
    sizes = np.bincount(graph_segmentation(coords, colour, k_thresh=0.001))
    assert sizes.min() >= 20
    assert graph_segmentation(coords[:1], colour[:1]).tolist() == [0]


# ----------------------------------------------------------------------------- the cache
def save_scene(path, coords, colors):
    formats.save_scene_3d(path, coords, colors, np.zeros(len(coords), np.int64))


def test_the_cache_is_reused_while_the_scene_is_unchanged_and_recomputed_after(tmp_path):
    rng = np.random.default_rng(0)
    u, v = plane_grid(20, 0.02, rng)
    coords = np.stack([u, v, np.zeros_like(u)], 1).astype(np.float32)
    path = str(tmp_path / 'data' / 'train' / 'scene0000_00_vh_clean_2.pth')
    save_scene(path, coords, np.zeros_like(coords))
    root = str(tmp_path / 'sp')
    with SuperpointSource(root, 'auto') as sp:
        found, kind = sp.locate('scene0000_00', path)
        assert (found, kind) == (cache_path(root, 'scene0000_00'), 'computed')
        first = sp.load(found, len(coords))
    assert os.path.isfile(os.path.join(root, 'superpoints_manifest.jsonl'))
    stamp = os.stat(found).st_mtime_ns
    with SuperpointSource(root, 'auto') as sp:
        assert sp.locate('scene0000_00', path) == (found, 'cached')
    assert os.stat(found).st_mtime_ns == stamp
    # other parameters: recomputed
    with SuperpointSource(root, 'auto', params={'min_size': 5}) as sp:
        assert sp.locate('scene0000_00', path)[1] == 'computed'
    # the scene changes (a second plane at 90 degrees): recomputed, and the segments follow
    wall = np.stack([np.zeros_like(u) - 0.01, u, v + 0.01], 1).astype(np.float32)
    save_scene(path, np.concatenate([coords, wall]), np.zeros((2 * len(u), 3), np.float32))
    lines = []
    with SuperpointSource(root, 'auto', log=lines.append) as sp:
        assert sp.locate('scene0000_00', path)[1] == 'computed'
        again = sp.load(found, 2 * len(u))
        assert sp.counts == {'segs.json': 0, 'cached': 0, 'computed': 1}
    assert any('recomputing' in line for line in lines)
    assert len(again) == 2 * len(first) and again.max() > first.max()
    # a cached file edited behind the cache's back is not trusted
    np.save(found, np.zeros(2 * len(u), np.int64))
    with SuperpointSource(root, 'auto') as sp:
        assert sp.locate('scene0000_00', path)[1] == 'computed'
    # ScanNet's file wins under auto, is required under scannet, ignored under graph
    segs = os.path.join(os.path.dirname(path), segs_json_name('scene0000_00'))
    with SuperpointSource(root, 'scannet') as sp:
        with pytest.raises(FileNotFoundError, match='segs.json'):
            sp.locate('scene0000_00', path)
    with open(segs, 'w') as f:
        json.dump({'segIndices': [0] * len(u) + [1] * len(u)}, f)
    with SuperpointSource(root, 'auto') as sp:
        assert sp.locate('scene0000_00', path) == (segs, 'segs.json')
        assert sp.load(segs, 2 * len(u)).tolist() == [0] * len(u) + [1] * len(u)
    with SuperpointSource(root, 'graph') as sp:
        assert sp.locate('scene0000_00', path)[1] == 'cached'
    with pytest.raises(ValueError, match='superpoint source'):
        SuperpointSource(root, 'segs')
    with pytest.raises(ValueError, match='superpoint_root is empty'):
        SuperpointSource('', 'auto')


# ----------------------------------------------------------------------------- PLG end to end
def make_noisy_rooms(root, n_scenes=3, n=300, d=32, seed=0):
    """Rooms of 3 classes in 3 x-regions; superpoints of 10 points (one class each) as ScanNet's segs.json beside
    the scenes; every covered point's feature is its class' text row, but one point in ten has a wrong class'."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(C, d)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    np.save(root / 'text.npy', text)
    (root / 'data_3d' / 'train').mkdir(parents=True)
    (root / 'feat').mkdir()
    for s in range(n_scenes):
        scene = f'scene{s:04d}_00'
        gt = np.repeat(rng.choice([1, 4, 7], n // 10), 10)
        coords = rng.uniform(0, 1, (n, 3)).astype(np.float32)
        coords[:, 0] += gt * 2.0
        mask = rng.random(n) < 0.9
        shown = gt.copy()
        wrong = rng.random(n) < 0.1
        shown[wrong] = rng.choice([1, 4, 7], int(wrong.sum()))
        feat = text[shown[mask]] * 20
        formats.save_scene_3d(root / 'data_3d' / 'train' / f'{scene}_vh_clean_2.pth', coords, np.zeros_like(coords), gt)
        formats.save_fused_features(root / 'feat' / f'{scene}_0.pt', torch.from_numpy(feat), torch.from_numpy(mask))
        write_segs_json(str(root / 'data_3d' / 'train' / segs_json_name(scene)), np.arange(n) // 10 * 10 + 3, scene)
    return text


def plg_argv(root, out, *extra):
    return ['--config', config('vlm_ps_generation/config/demo.yaml'), 'data_root', str(root / 'data_3d'),
            'data_root_2d_fused_feature', str(root / 'feat'), 'text_embeddings_path', str(root / 'text.npy'),
            'exp_root', str(root / 'exp'), 'save_folder', str(out), 'plg_per_point', 'True', 'feat_dim', '32', *extra]


def test_plg_writes_refined_labels_and_records_the_setting(tmp_path):
    text = make_noisy_rooms(tmp_path)
    plain = gv.main(plg_argv(tmp_path, tmp_path / 'plain'))
    out = tmp_path / 'refined'
    summary = gv.main(plg_argv(tmp_path, out, 'plg_refine', 'superpoints'))
    assert summary['written'] == 3
    assert summary['miou'] > plain['miou'] and summary['coverage'] == plain['coverage']
    assert summary['refine']['before']['miou'] == pytest.approx(plain['miou'])
    assert summary['refine']['superpoint_files']['segs.json'] == 3 and summary['refine']['changed_share'] > 0
    settings = summary['provenance']['settings']
    assert settings['plg_refine'] == 'superpoints' and settings['plg_refine_pool'] == 'mean'
    assert 'plg_refine' not in plain['provenance']['settings']   # the paper's setting keeps its records
    for s in range(3):
        scene = f'scene{s:04d}_00'
        pt = formats.load_scene_3d(tmp_path / 'data_3d' / 'train' / f'{scene}_vh_clean_2.pth')
        feat, mask = formats.load_scene_fused_features([str(tmp_path / 'feat' / f'{scene}_0.pt')])
        segs = tmp_path / 'data_3d' / 'train' / segs_json_name(scene)
        expect, expect_prob = plg_scene_refined(pt.coords, feat, mask.numpy(), text, np.isin(np.arange(C), [1, 4, 7]),
                                                read_segs_json(str(segs)), per_point=True)
        lab, prob = formats.load_pseudo_labels(str(out), scene, with_probs=True)
        np.testing.assert_array_equal(lab, expect)
        np.testing.assert_allclose(prob, expect_prob, rtol=1e-6)
        np.testing.assert_array_equal(lab[mask.numpy()], pt.labels[mask.numpy()])   # every error was per point
        entry = [json.loads(line) for line in open(out / 'plg_manifest.jsonl')][s]
        assert os.path.abspath(segs) in entry['inputs']
    # rerun: reused; another pool, spread, or refinement off: recomputed
    assert gv.main(plg_argv(tmp_path, out, 'plg_refine', 'superpoints'))['skipped'] == 3
    assert gv.main(plg_argv(tmp_path, out, 'plg_refine', 'superpoints', 'plg_refine_pool', 'vote'))['written'] == 3
    spread = gv.main(plg_argv(tmp_path, out, 'plg_refine', 'superpoints', 'plg_refine_spread', 'True'))
    assert spread['written'] == 3 and spread['coverage'] > plain['coverage']
    assert spread['provenance']['settings']['plg_refine_min_coverage'] == 0.5
    off = gv.main(plg_argv(tmp_path, out, 'plg_refine', 'none'))
    assert off['written'] == 3 and off['miou'] == pytest.approx(plain['miou'])
    # a changed segs.json recomputes the scene
    gv.main(plg_argv(tmp_path, out, 'plg_refine', 'superpoints'))
    write_segs_json(str(tmp_path / 'data_3d' / 'train' / segs_json_name('scene0001_00')), np.arange(300), 'x')
    again = gv.main(plg_argv(tmp_path, out, 'plg_refine', 'superpoints'))
    assert again['written'] == 1 and again['skipped'] == 2


def test_plg_graph_superpoints_are_cached_under_the_experiment(tmp_path):
    make_noisy_rooms(tmp_path, n_scenes=2)
    out = tmp_path / 'exp' / 'plg'
    first = gv.main(plg_argv(tmp_path, out, 'plg_refine', 'superpoints', 'superpoint_source', 'graph'))
    assert first['refine']['superpoint_files'] == {'segs.json': 0, 'cached': 0, 'computed': 2}
    cached = tmp_path / 'exp' / 'superpoints' / 'scene0000_00_superpoints.npy'
    assert cached.is_file() and (tmp_path / 'exp' / 'superpoints' / 'superpoints_manifest.jsonl').is_file()
    entry = json.loads(open(out / 'plg_manifest.jsonl').readline())
    assert str(cached) in entry['inputs'] and entry['settings']['superpoint_graph']['k_thresh'] > 0
    again = gv.main(plg_argv(tmp_path, out, 'plg_refine', 'superpoints', 'superpoint_source', 'graph'))
    assert again['skipped'] == 2 and again['refine']['superpoint_files']['cached'] == 2
    with pytest.raises(Exception, match='plg_refine_pool'):
        gv.main(plg_argv(tmp_path, out, 'plg_refine_pool', 'max'))


# ----------------------------------------------------------------------------- the synthetic world
def test_synthetic_scannet_scenes_get_scannet_like_segs_json(tmp_path):
    from synthetic.segments import point_faces
    from synthetic.writer import make_scene, make_synthetic_dataset
    res = make_synthetic_dataset(str(tmp_path), 'w', 'scannet', num_train=2, num_val=1, points_per_scene=3000)
    for split in ('train', 'val'):
        for path in formats.list_scenes(res['data_root'], split):
            scene = formats.scene_name(path)
            segs = os.path.join(os.path.dirname(path), segs_json_name(scene))
            pt = formats.load_scene_3d(path)
            raw = json.load(open(segs))['segIndices']
            ids = read_segs_json(segs, len(pt.coords))
            assert len(set(raw)) == ids.max() + 1 and all(raw[i] <= i for i in range(len(raw)))  # ids: vertex indices
            labelled = pt.labels != IGNORE_LABEL
            assert purity(ids[labelled], pt.labels[labelled]) == 1.0        # parts of one object, one class
            sizes = np.bincount(ids)
            assert 40 <= len(sizes) <= len(pt.coords) / 10 and np.median(sizes) >= 10
    # each segment is one planar face of one part, or the small pieces of one object
    info = dataset_info('scannet')
    text = np.load(res['text_embeddings_path'])
    scene = make_scene(info, text, 'living', 'scene9999_00', 9999, num_points=3000)
    prim, segs = scene['primitive_index'], scene['segments']
    faces = point_faces(scene['room'], scene['clean_coords'], prim)
    objects = np.array([p.object_id for p in scene['room'].primitives])[prim]
    flat = 0
    for s in np.unique(segs):
        members = segs == s
        assert len(np.unique(objects[members])) == 1
        one_face = len(np.unique(prim[members] * 10 + faces[members])) == 1
        if one_face and scene['room'].primitives[prim[members][0]].kind == 'box':
            spread = scene['clean_coords'][members].max(0) - scene['clean_coords'][members].min(0)
            assert spread.min() == 0.0                                   # a box face: flat along its normal
            flat += members.sum()
    assert flat > 0.5 * len(segs)
    # S3DIS releases no over-segmentation: none is written
    s3 = make_synthetic_dataset(str(tmp_path / 's3'), 'w', 's3dis', num_train=1, num_val=1, points_per_scene=2000)
    assert not [f for f in os.listdir(os.path.join(s3['data_root'], 'train')) if f.endswith('.json')]
