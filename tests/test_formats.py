"""OpenScene file formats (docs/formats.md) and the safe loader: exact round trips and clear errors."""
import os
import zipfile

import numpy as np
import pytest
import torch

from dataset import formats
from dataset.label_constants import dataset_info
from util.io import atomic_np_save, safe_torch_load


def _write_openscene_scene(path, n=50, seed=0, labels_dtype=np.float64):
    # as OpenScene's preprocess_3d_scannet.py: float64 arrays, labels through a float remapper
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 3, (n, 3))
    colors = rng.integers(0, 256, (n, 3)) / 127.5 - 1
    labels = rng.integers(0, 20, n).astype(labels_dtype)
    labels[:3] = 255
    labels[3:5] = -100
    torch.save((coords, colors, labels), path)
    return coords, colors, labels


def test_scene_written_as_openscene_loads(tmp_path):
    path = tmp_path / 'scene0000_00_vh_clean_2.pth'
    coords, colors, labels = _write_openscene_scene(path)
    scene = formats.load_scene_3d(path)
    assert scene.coords.dtype == np.float32 and scene.colors.dtype == np.float32
    np.testing.assert_allclose(scene.coords, coords.astype(np.float32))
    np.testing.assert_allclose(scene.colors, colors.astype(np.float32))
    assert scene.labels.dtype == np.int64 and scene.has_labels
    assert (scene.labels[:5] == 255).all()          # 255 kept, -100 mapped to 255
    np.testing.assert_array_equal(scene.labels[5:], labels[5:].astype(np.int64))
    assert formats.scene_name(path) == 'scene0000_00'
    assert formats.scene_name('/x/Area_5_office_1.pth') == 'Area_5_office_1'


def test_scene_without_labels_and_without_colour(tmp_path):
    path = tmp_path / 'a.pth'
    torch.save((np.zeros((4, 3), np.float32), 0), path)  # OpenScene writes 0 for "no colour"
    scene = formats.load_scene_3d(path)
    assert not scene.has_labels and (scene.labels == 255).all() and scene.colors.shape == (4, 3)


def _numpy1_style(path):
    """Rewrite a torch file so its pickle names numpy 1.x modules, as files made before numpy 2 do."""
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    for name in entries:
        if name.endswith('data.pkl'):
            assert b'numpy._core.multiarray' in entries[name]
            entries[name] = entries[name].replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    with zipfile.ZipFile(path, 'w') as z:
        for name, data in entries.items():
            z.writestr(name, data)


def test_numpy1_pickles_load(tmp_path):
    path = tmp_path / 'old.pth'
    coords, _, _ = _write_openscene_scene(path)
    _numpy1_style(path)
    np.testing.assert_allclose(formats.load_scene_3d(path).coords, coords.astype(np.float32))


def test_safe_load_refuses_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ('this must never run',))
    path = tmp_path / 'evil.pth'
    torch.save(Payload(), path)
    with pytest.raises(RuntimeError, match=r"evil\.pth"):
        safe_torch_load(path, 'checkpoint')


def test_scene_errors_name_the_file(tmp_path):
    missing = tmp_path / 'missing.pth'
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        formats.load_scene_3d(missing)
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a torch file')
    with pytest.raises(RuntimeError, match='corrupt.pth'):
        formats.load_scene_3d(corrupt)
    bad_colors = tmp_path / 'rgb255.pth'
    torch.save((np.zeros((3, 3), np.float32), np.full((3, 3), 200.0, np.float32), np.zeros(3)), bad_colors)
    with pytest.raises(formats.FormatError, match=r'rgb255.pth.*\[-1, 1\]'):
        formats.load_scene_3d(bad_colors)
    short_labels = tmp_path / 'short.pth'
    torch.save((np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32), np.zeros(2)), short_labels)
    with pytest.raises(formats.FormatError, match=r'short.pth.*\[3\].*\[2\]'):
        formats.load_scene_3d(short_labels)


def test_fused_features_round_trip_and_file_discovery(tmp_path):
    mask = torch.tensor([True, False, True, True, False])
    feat = torch.randn(3, 8)
    for k in (0, 1, 2, 10):
        formats.save_fused_features(tmp_path / f'scene0001_00_{k}.pt', feat, mask)
    (tmp_path / 'scene0001_00_extra.pt').write_bytes(b'')  # not a numbered file: ignored
    paths = formats.fused_feature_files(str(tmp_path), 'scene0001_00')
    assert [p.rsplit('_', 1)[1] for p in paths] == ['0.pt', '1.pt', '2.pt', '10.pt']
    loaded, loaded_mask = formats.load_fused_features(paths[0], num_points=5, feat_dim=8)
    assert loaded.dtype == torch.float16 and loaded_mask.dtype == torch.bool
    torch.testing.assert_close(loaded, feat.half())
    assert torch.equal(loaded_mask, mask)
    # as OpenScene stores it: a plain dict, float16 feat, bool mask (numpy mask accepted too)
    torch.save({'feat': feat.half(), 'mask_full': mask.numpy()}, tmp_path / 'scene0002_00.pt')
    assert formats.fused_feature_files(str(tmp_path), 'scene0002_00')[0].endswith('scene0002_00.pt')
    with pytest.raises(FileNotFoundError, match='scene0003_00'):
        formats.fused_feature_files(str(tmp_path), 'scene0003_00')


def test_fused_feature_errors(tmp_path):
    path = tmp_path / 's_0.pt'
    torch.save({'feat': torch.zeros(3, 8, dtype=torch.half), 'mask_full': torch.tensor([1, 0, 1, 1, 0]).bool()}, path)
    with pytest.raises(formats.FormatError, match=r's_0.pt.*5 entries.*6 points'):
        formats.load_fused_features(path, num_points=6)
    with pytest.raises(formats.FormatError, match=r's_0.pt.*dimension 768.*found 8'):
        formats.load_fused_features(path, num_points=5, feat_dim=768)
    torch.save({'feat': torch.zeros(2, 8, dtype=torch.half), 'mask_full': torch.tensor([1, 0, 1, 1, 0]).bool()}, path)
    with pytest.raises(formats.FormatError, match=r"s_0.pt.*2 rows.*3 points"):
        formats.load_fused_features(path)
    torch.save({'features': torch.zeros(2, 8)}, path)
    with pytest.raises(formats.FormatError, match=r"s_0.pt.*'feat' and 'mask_full'"):
        formats.load_fused_features(path)


def test_pseudo_labels_and_text_embeddings(tmp_path):
    formats.save_pseudo_labels(tmp_path, 'scene0000_00', np.array([0, 3, 20]), np.array([0.5, 0.2, 0.0]))
    labels, probs = formats.load_pseudo_labels(tmp_path, 'scene0000_00', num_points=3, with_probs=True)
    assert labels.tolist() == [0, 3, 20] and probs.dtype == np.float32
    with pytest.raises(formats.FormatError, match=r'scene0000_00_pred.npy.*\[4\].*\[3\]'):
        formats.load_pseudo_labels(tmp_path, 'scene0000_00', num_points=4)
    with pytest.raises(FileNotFoundError, match='scene0009_00_pred.npy'):
        formats.load_pseudo_labels(tmp_path, 'scene0009_00')
    emb = np.random.default_rng(0).normal(size=(20, 16))
    formats.save_text_embeddings(tmp_path / 't.npy', emb)
    loaded = formats.load_text_embeddings(tmp_path / 't.npy', num_classes=dataset_info('scannet').num_classes)
    np.testing.assert_allclose(np.linalg.norm(loaded, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(loaded, emb / np.linalg.norm(emb, axis=1, keepdims=True), rtol=1e-5)
    with pytest.raises(formats.FormatError, match=r't.npy.*13 rows'):
        formats.load_text_embeddings(tmp_path / 't.npy', num_classes=13)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / 'x.npy'

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError('crash while writing')
    with pytest.raises(RuntimeError):
        atomic_np_save(target, Boom())
    assert list(tmp_path.iterdir()) == []
    atomic_np_save(target, np.arange(3))
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(target).st_mode & 0o777) == 0o666 & ~mask  # not mkstemp's private 0600
