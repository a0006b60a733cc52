"""Pseudo-label generation (PLG): exact hand-made case, an independent upstream-formula oracle
(with the voxel-representative copy), scene-label JSON, file formats, skipping, the script end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_plg_data as make_dataset
from helpers import plg_args as args_for

from dataset import formats
from dataset.label_constants import dataset_info
from pipeline.pseudo_labels import plg_scene
from vlm_ps_generation import generation_vlm as gv

INFO = dataset_info('scannet')
C = INFO.num_classes
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_hand_made_exact():
    text = torch.eye(3)                                 # 3 classes, 3-d features
    feat = torch.tensor([[5., 0, 0], [0, 5, 0], [0, 0, 5], [1, 0, 9]])
    mask_full = np.array([1, 1, 0, 1, 1], bool)         # point 2 has no 2D feature
    coords = np.arange(15, dtype=np.float32).reshape(5, 3)  # one point per voxel
    scene = np.array([True, False, True])               # class 1 is not in the scene
    lab, prob = plg_scene(coords, feat, mask_full, text, scene, per_point=True)
    # point 1 prefers class 1, which is masked -> its best remaining class is 0 (tie 0/2 -> first)
    assert lab.tolist() == [0, 0, 3, 2, 2]
    e5 = np.exp(5.0)
    assert prob[0] == pytest.approx(e5 / (e5 + 2), rel=1e-6) and prob[2] == 0.0
    assert prob[1] == pytest.approx(1 / (e5 + 2), rel=1e-6)
    lab_v, prob_v = plg_scene(coords, feat, mask_full, text, scene, voxel_size=0.02)
    assert lab_v.tolist() == lab.tolist() and np.allclose(prob_v, prob)
    # points 0+1 and 2+3 share a voxel: each takes its first point's label, and the voxel of the
    # uncovered point 2 is unlabeled even though point 3 has a feature (upstream)
    coords2 = np.array([[0, 0, 0], [0.01, 0, 0], [1, 1, 1], [1.005, 1, 1], [2, 2, 2]], np.float32)
    lab_v, prob_v = plg_scene(coords2, feat, mask_full, text, scene, voxel_size=0.02)
    assert lab_v.tolist() == [0, 0, 3, 3, 2]
    assert prob_v[1] == prob_v[0] == pytest.approx(e5 / (e5 + 2), rel=1e-6)


def test_scene_without_labelled_class_is_unlabeled():
    """A GT scene whose points are all 255 has an empty scene-level label: no class may be chosen
    (upstream would write class 0 with confidence -999)."""
    text = torch.eye(3)
    feat = torch.tensor([[5., 0, 0], [0, 5, 0]])
    gt = np.array([255, 255, 255])
    scene = gv.scene_label_mask(gt, 3)
    assert not scene.any()
    for per_point in (True, False):
        lab, prob = plg_scene(np.eye(3, dtype=np.float32), feat, np.array([1, 0, 1], bool), text, scene,
                                 per_point=per_point)
        assert lab.tolist() == [3, 3, 3] and prob.tolist() == [0, 0, 0]


def upstream_oracle(coords, feat, mask_full, text, gt, voxel_size, num_classes):
    """The upstream computation written independently: voxel representative = first point of each
    floor(coords / voxel) cell, its (zero-filled) feature, softmax, -999 outside the GT label set,
    argmax, copied back to every point, 'unlabeled' where the representative has no feature."""
    full = torch.zeros(len(mask_full), feat.shape[1])
    full[torch.from_numpy(mask_full)] = feat.float()
    cells = np.floor(coords / voxel_size).astype(np.int64)
    _, rep, inv = np.unique(cells, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    p = torch.softmax(full[rep] @ text.t(), dim=1)
    present = np.unique(gt[gt != 255])
    m = torch.zeros(num_classes)
    m[present] = 1
    p[:, m == 0] = -999
    best, lab = p.max(1)
    lab, best = lab.numpy()[inv], best.numpy()[inv]
    lab[~mask_full[rep][inv]] = num_classes
    return lab, best


@pytest.mark.parametrize('seed', [0, 1])
def test_matches_upstream_formula_with_voxel_copy(seed):
    rng = np.random.default_rng(seed)
    n, d = 3000, 16
    coords = rng.uniform(0, 0.3, size=(n, 3)).astype(np.float32)   # ~2.5 points per 2 cm voxel
    mask_full = rng.random(n) < 0.8
    feat = torch.from_numpy(rng.normal(size=(mask_full.sum(), d)).astype(np.float32)) * 3
    text = torch.nn.functional.normalize(torch.randn(C, d, generator=torch.Generator().manual_seed(seed)), dim=1)
    gt = rng.choice([0, 3, 5, 255], size=n)
    lab, prob = plg_scene(coords, feat, mask_full, text, gv.scene_label_mask(gt, C), voxel_size=0.02,
                             chunk_size=257)
    expect, expect_prob = upstream_oracle(coords, feat, mask_full, text, gt, 0.02, C)
    np.testing.assert_array_equal(lab, expect)
    np.testing.assert_allclose(prob[lab < C], expect_prob[lab < C], rtol=1e-5)
    assert set(np.unique(lab)) <= {0, 3, 5, C}          # classes outside the scene label never appear
    assert (prob[lab == C] == 0).all() and (prob[lab < C] > 0).all()
    # per-point mode: every covered point labelled, uncovered ones unlabeled
    lab_p, _ = plg_scene(coords, feat, mask_full, text, gv.scene_label_mask(gt, C), per_point=True)
    assert ((lab_p == C) == ~mask_full).all()
    assert not np.array_equal(lab_p, lab)               # the voxel copy really changes labels here


def test_scene_label_file(tmp_path):
    path = tmp_path / 'labels.json'
    path.write_text(json.dumps({'s1': ['wall', 'other'], 's2': ['otherfurniture', 'chair']}))
    masks = gv.load_scene_label_file(str(path), INFO.labels, INFO.text_labels)
    assert np.flatnonzero(masks['s1']).tolist() == [0, C - 1]
    assert np.flatnonzero(masks['s2']).tolist() == [INFO.labels.index('chair'), C - 1]
    path.write_text(json.dumps({'s1': ['wall', 'spaceship']}))
    with pytest.raises(ValueError, match=r"labels\.json.*spaceship"):
        gv.load_scene_label_file(str(path), INFO.labels, INFO.text_labels)
    path.write_text(json.dumps({'s1': ['wall'], 's2': []}))
    with pytest.raises(ValueError, match=r"labels\.json.*'s2'.*empty"):
        gv.load_scene_label_file(str(path), INFO.labels, INFO.text_labels)
    with pytest.raises(FileNotFoundError, match='nope.json'):
        gv.load_scene_label_file(str(tmp_path / 'nope.json'), INFO.labels)


def test_script_end_to_end_and_skip(tmp_path, capsys):
    make_dataset(tmp_path)
    out = tmp_path / 'plg'
    summary = gv.main(args_for(tmp_path, out, 'plg_per_point', 'True'))
    assert summary['written'] == 3 and summary['skipped'] == 0
    # every covered point gets its GT class; coverage = fraction of points with a feature
    covered = []
    for s in range(3):
        scene = f'scene{s:04d}_00'
        pt = formats.load_scene_3d(tmp_path / 'data_3d' / 'train' / f'{scene}_vh_clean_2.pth')
        _, mask = formats.load_scene_fused_features(formats.fused_feature_files(str(tmp_path / 'feat'), scene))
        lab, prob = formats.load_pseudo_labels(str(out), scene, num_points=400, with_probs=True)
        assert lab.dtype == np.int64 and prob.dtype == np.float32
        mask = mask.numpy()
        np.testing.assert_array_equal(lab[mask], pt.labels[mask])
        assert (lab[~mask] == C).all()
        covered.append(mask)
    cov = np.concatenate(covered).mean()
    on_disk = json.loads((out / 'plg_summary.json').read_text())
    assert on_disk['coverage'] == pytest.approx(cov) and summary['coverage'] == pytest.approx(cov)
    # IoU of class k = covered/all points of k; unlabeled counted wrong
    assert on_disk['miou'] < 1 and on_disk['miou_upstream'] == pytest.approx(3 / C)
    assert 'mIoU' in capsys.readouterr().out
    # rerun: finished scenes are skipped (their files untouched) ...
    first = out / 'scene0000_00_pred.npy'
    stamp = first.stat().st_mtime_ns
    again = gv.main(args_for(tmp_path, out, 'plg_per_point', 'True'))
    assert again['written'] == 0 and again['skipped'] == 3 and first.stat().st_mtime_ns == stamp
    # ... unless an output was changed behind PLG's back: only that scene is recomputed
    np.save(first, np.zeros(400, np.int64))
    again = gv.main(args_for(tmp_path, out, 'plg_per_point', 'True'))
    assert again['written'] == 1 and again['skipped'] == 2 and (np.load(first) != 0).any()
    assert "recomputing 'scene0000_00'" in capsys.readouterr().out
    redo = gv.main(args_for(tmp_path, out, 'overwrite', 'True'))
    assert redo['written'] == 3


def test_scene_label_file_in_script(tmp_path):
    make_dataset(tmp_path, n_scenes=2)
    labels = tmp_path / 'labels.json'
    labels.write_text(json.dumps({'scene0000_00': ['chair'], 'scene0001_00': ['chair', 'bed', 'table']}))
    out = tmp_path / 'plg'
    gv.main(args_for(tmp_path, out, 'scene_label_file', str(labels)))
    lab = formats.load_pseudo_labels(str(out), 'scene0000_00')
    assert set(np.unique(lab)) <= {INFO.labels.index('chair'), C}
    labels.write_text(json.dumps({'scene0000_00': ['chair']}))
    with pytest.raises(KeyError, match=r"scene0001_00.*labels\.json"):
        gv.main(args_for(tmp_path, out, 'scene_label_file', str(labels), 'overwrite', 'True'))


def test_shell_driver(tmp_path):
    make_dataset(tmp_path, n_scenes=1, n=50)
    exp = tmp_path / 'exp'
    a = args_for(tmp_path, exp)
    cmd = ['sh', os.path.join(ROOT, 'vlm_ps_generation/generation_vlm.sh'), str(exp), a[1], *a[2:8]]
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (exp / 'scene0000_00_pred.npy').is_file() and (exp / 'plg_config.yaml').is_file()
    logs = [f for f in os.listdir(exp) if f.startswith('plg-') and f.endswith('.log')]
    assert len(logs) == 1 and 'coverage' in (exp / logs[0]).read_text()
    assert '\r' not in (exp / logs[0]).read_text()  # progress bars never reach the log
    # the driver works from any folder
    elsewhere = subprocess.run(['sh', cmd[1], str(tmp_path / 'exp2'), *cmd[3:]], cwd=str(tmp_path), env=env,
                               capture_output=True, text=True, timeout=120)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert (tmp_path / 'exp2' / 'scene0000_00_pred.npy').is_file()
    bad = subprocess.run(cmd[:4] + ['data_root', str(tmp_path / 'missing')], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
