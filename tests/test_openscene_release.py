"""Real-data fidelity: OpenScene's released feature files (five random 20k-point subsets per scene) are read in
full, ESS inference writes files OpenScene's loader reads, the prompt templates, and PLG at real point density
against the upstream formula written independently here."""
import os

import numpy as np
import pytest
import torch
from helpers import config, ess_overrides, make_ess_data, train_ess

import eval_openseg_pre_train
from dataset import formats
from dataset.ess_loader import ESSPointDataset, ESSSceneDataset
from dataset.voxelizer import sparse_quantize
from pipeline.text_embeddings import PROMPT_TEMPLATES, apply_template
from synthetic.dense_room import dense_room, openscene_subsets
from vlm_ps_generation import generation_vlm as gv

SCENE = 'scene0000_00'


@pytest.fixture(scope='module')
def room():
    return dense_room(seed=1)


def _write_release(folder, feat, masks):
    """One file per mask, as OpenScene's fusion writes them: the rows of the covered points, float16."""
    os.makedirs(folder, exist_ok=True)
    for k, m in enumerate(masks):
        formats.save_fused_features(os.path.join(folder, f'{SCENE}_{k}.pt'), torch.from_numpy(feat[m]),
                                    torch.from_numpy(m))


def _plg(tmp_path, room, feat_root, out, *extra):
    coords, colors, labels, _, _, text = room
    data = tmp_path / 'data_3d' / 'train'
    if not data.exists():
        formats.save_scene_3d(data / f'{SCENE}_vh_clean_2.pth', coords, colors, labels)
        np.save(tmp_path / 'text.npy', text)
    argv = ['--config', config('vlm_ps_generation/config/demo.yaml'), 'data_root', str(tmp_path / 'data_3d'),
            'data_root_2d_fused_feature', str(feat_root), 'text_embeddings_path', str(tmp_path / 'text.npy'),
            'save_folder', str(out), *extra]
    summary = gv.main(argv)
    return formats.load_pseudo_labels(str(out), SCENE), summary


def test_plg_on_five_random_subsets_equals_the_full_file_restricted_to_their_union(tmp_path, room):
    _, _, _, feat, mask, _ = room
    subsets = openscene_subsets(mask, num_files=5, points_per_file=20_000, seed=3)
    union = np.logical_or.reduce(subsets)
    assert 0.3 < union.sum() / mask.sum() < 0.7      # each file alone covers a seventh of the visible points
    _write_release(tmp_path / 'release', feat, subsets)
    _write_release(tmp_path / 'full_on_union', feat, [union])
    merged, merged_summary = _plg(tmp_path, room, tmp_path / 'release', tmp_path / 'plg_a')
    single, single_summary = _plg(tmp_path, room, tmp_path / 'full_on_union', tmp_path / 'plg_b')
    np.testing.assert_array_equal(merged, single)
    assert merged_summary['coverage'] == single_summary['coverage']
    # and much more than one file gives (which is what reading only '_0' would label)
    _write_release(tmp_path / 'first_only', feat, subsets[:1])
    first, first_summary = _plg(tmp_path, room, tmp_path / 'first_only', tmp_path / 'plg_c')
    assert first_summary['coverage'] < 0.6 * merged_summary['coverage']


def test_files_that_disagree_are_an_error_naming_both(tmp_path, room):
    _, _, _, feat, mask, _ = room
    a, b = openscene_subsets(mask, num_files=2, seed=4)
    _write_release(tmp_path, feat, [a])
    other = feat.copy()
    other[a & b] += 0.05                     # another fusion of the same scene
    formats.save_fused_features(tmp_path / f'{SCENE}_1.pt', torch.from_numpy(other[b]), torch.from_numpy(b))
    paths = formats.fused_feature_files(str(tmp_path), SCENE)
    with pytest.raises(formats.FormatError, match=rf"{SCENE}_0\.pt' and '.*{SCENE}_1\.pt' of the same scene disagree "
                                                  rf"at {int((a & b).sum())} of the {int((a & b).sum())} points"):
        formats.load_scene_fused_features(paths, num_points=mask.shape[0])
    # float16 rounding of the same values is agreement, not conflict
    formats.save_fused_features(tmp_path / f'{SCENE}_1.pt', torch.from_numpy(feat[b]).half().float(),
                                torch.from_numpy(b))
    merged, union = formats.load_scene_fused_features(paths, num_points=mask.shape[0])
    assert torch.equal(union, torch.from_numpy(a | b)) and merged.shape[0] == int((a | b).sum())


def test_ess_trains_and_adapts_the_union_and_writes_files_openscene_reads(tmp_path):
    root = str(tmp_path)
    make_ess_data(root, n_train=2, n_val=1)
    # split every scene's single feature file into three overlapping random subsets, as OpenScene's release
    rng = np.random.default_rng(0)
    unions = {}
    for name in sorted(os.listdir(f'{root}/feat')):
        scene = name[:-len('_0.pt')]
        feat, mask = formats.load_fused_features(f'{root}/feat/{name}')
        full = torch.zeros(mask.shape[0], feat.shape[1], dtype=feat.dtype)
        full[mask] = feat
        os.remove(f'{root}/feat/{name}')
        parts = [mask.numpy() & (rng.random(mask.shape[0]) < 0.5) for _ in range(3)]
        for k, part in enumerate(parts):
            formats.save_fused_features(f'{root}/feat/{scene}_{k}.pt', full[part], torch.from_numpy(part))
        unions[scene] = np.logical_or.reduce(parts)
    # ESS training draws from the union (its rows), validation and inference see the union
    points = ESSPointDataset(f'{root}/3d', 'train', f'{root}/feat', 50, 20, pseudo_label_path=f'{root}/plg')
    for i, scene in enumerate(points.scenes):
        assert np.array_equal(points.reader.read(i)['mask_full'].numpy(), unions[scene])
    scenes = ESSSceneDataset(f'{root}/3d', 'val', f'{root}/feat', 20)
    assert np.array_equal(scenes[0]['mask_full'].numpy(), unions[scenes.scenes[0]])
    save, out = f'{root}/ess', f'{root}/emb'
    train_ess(root, save, epochs=1)
    eval_openseg_pre_train.main(['--config', config('config/demo/openseg_pre_eval.yaml'), *ess_overrides(root),
                                 'save_path', save, 'ess_embedding_path', out])
    for scene, union in unions.items():
        feat, mask = openscene_fused_feature_loader(os.path.join(out, f'{scene}_0.pt'), split='val')
        assert np.array_equal(mask.numpy(), union)
        assert feat.shape == (union.shape[0], 768) and (feat[~mask] == 0).all() and (feat[mask] != 0).any(1).all()
        feat, mask = openscene_fused_feature_loader(os.path.join(out, f'{scene}_0.pt'), split='train')
        assert feat.shape[0] == int(union.sum())


def openscene_fused_feature_loader(path, split):
    """What OpenScene's FusedFeatureLoader does with one fused-feature file (from its documented behaviour):
    a dict of exactly two keys is the current format ('feat' rows of the points 'mask_full' marks; val and
    test splits scatter them onto every point); more than two keys is its legacy format, which reads a third
    key 'mask' and would fail on our files."""
    data = torch.load(path, weights_only=True)
    if len(data.keys()) != 2:
        raise KeyError(f"{path}: {len(data)} keys: OpenScene would take it for its legacy format and read 'mask'")
    feat, mask = data['feat'], data['mask_full']
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if split != 'train':
        full = torch.zeros((mask.shape[0], feat.shape[1]), dtype=feat.dtype)
        full[mask] = feat
        feat = full
    return feat, mask


# ----------------------------------------------------------------------------- PLG at real density
def upstream_plg(coords, feat, mask, text, scene_classes, voxel_size=0.02):
    """Upstream's PLG (vlm_ps_generation/generation_vlm.py with its loader), written out independently: a
    voxel is represented by the first point that falls into it, the representative's feature is scored
    softmax(f T^T) with classes outside the scene set to -999 after the softmax, and the voxel's label is
    copied to all its points; a voxel whose representative has no feature is 'unlabeled'. Upstream's random
    rotation of the scene before voxelising is left out (the project's documented difference)."""
    num_classes = text.shape[0]
    first = {}
    voxel_of = np.empty(coords.shape[0], np.int64)
    for i, key in enumerate(map(tuple, np.floor(coords.astype(np.float64) / voxel_size).astype(np.int64))):
        voxel_of[i] = first.setdefault(key, i)          # the first point seen in this voxel
    rows = np.cumsum(mask) - 1                          # row of a covered point in the feature file
    labels = np.full(coords.shape[0], num_classes)
    reps = np.unique(voxel_of)
    covered = reps[mask[reps]]
    logits = feat[rows[covered]].astype(np.float32) @ text.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[:, [c for c in range(num_classes) if c not in scene_classes]] = -999
    rep_label = dict(zip(covered.tolist(), p.argmax(1).tolist()))
    for i in range(coords.shape[0]):
        labels[i] = rep_label.get(int(voxel_of[i]), num_classes)
    return labels


def test_plg_at_scannet_density_matches_the_upstream_formula(tmp_path, room):
    coords, _, labels, feat, mask, text = room
    _write_release(tmp_path / 'feat', feat, [mask])
    ours, _ = _plg(tmp_path, room, tmp_path / 'feat', tmp_path / 'plg')
    theirs = upstream_plg(coords, formats.load_fused_features(tmp_path / 'feat' / f'{SCENE}_0.pt')[0].numpy(),
                          mask, text, set(np.unique(labels).tolist()))
    # the test only means something if voxels hold several points, of several classes where objects touch
    _, kept, inverse = sparse_quantize(coords, 0.02)
    assert coords.shape[0] / kept.shape[0] > 2 and (labels[kept][inverse] != labels).mean() > 0.05
    np.testing.assert_array_equal(ours, theirs)


def test_named_prompt_templates():
    names = ('wall', 'chair', 'otherfurniture')
    assert apply_template(names, 'upstream', last_as_other=True) == ['a wall in a scene', 'a chair in a scene', 'other']
    assert apply_template(names, 'none') == list(names) == apply_template(names, '')
    assert apply_template(names, 'a photo of a {}.') == ['a photo of a wall.', 'a photo of a chair.',
                                                         'a photo of a otherfurniture.']
    assert set(PROMPT_TEMPLATES) == {'none', 'upstream'}
    with pytest.raises(ValueError, match="'upstream', 'none' or a template with '{}'"):
        apply_template(names, 'a photo')
