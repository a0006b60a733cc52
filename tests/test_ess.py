"""ESS end to end on tiny generated data: loader, training, exact resume, inference outputs, errors."""
import os

import numpy as np
import pytest
import torch
from helpers import ESS_DIM as D
from helpers import ESS_EVAL_CONFIG as EVAL_CFG
from helpers import ESS_POINTS as N
from helpers import ESS_TRAIN_CONFIG as TRAIN_CFG
from helpers import ess_overrides as data_overrides
from helpers import make_ess_data as make_data
from helpers import train_ess as train

import eval_openseg_pre_train
import train_openseg_pre_train
from dataset import formats
from dataset.ess_loader import EpochShuffleSampler, ESSPointDataset
from pipeline.networks import build_adapter
from util.checkpoint import load_checkpoint, save_checkpoint
from util.config import load_config


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ess_data'))
    return root, make_data(root)


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    root, _ = data
    save = str(tmp_path_factory.mktemp('ess_run'))
    train(root, save, epochs=4)
    return save


def covered_loss(model, root):
    """Mean cross-entropy of the adapter on every covered training point against its pseudo label."""
    ds = ESSPointDataset(f'{root}/3d', 'train', f'{root}/feat', 1, 20, pseudo_label_path=f'{root}/plg')
    feats, labels = [], []
    for i in range(len(ds)):
        item = ds.reader.read(i)
        feats.append(item['feat'].float()), labels.append(torch.from_numpy(item['pseudo'][item['mask_full'].numpy()]))
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(torch.cat(feats)), torch.cat(labels), ignore_index=20).item()


def test_sampling_is_deterministic_per_epoch_and_labels_follow_points(data):
    root, _ = data
    ds = ESSPointDataset(f'{root}/3d', 'train', f'{root}/feat', 500, 20, pseudo_label_path=f'{root}/plg', seed=3)
    feat0, lab0 = ds[1]
    assert feat0.shape == (500, D) and lab0.shape == (500,)  # 500 > ~240 covered: drawn with replacement
    again, _ = ds[1]
    assert torch.equal(feat0, again)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], feat0)
    # oracle: every drawn row is a covered row of the scene and carries that row's pseudo label
    item = ds.reader.read(1)
    rows = item['feat'].float()
    pseudo = torch.from_numpy(item['pseudo'][item['mask_full'].numpy()])
    match = (feat0[:, None, :] == rows[None, :, :]).all(-1)
    assert (match.sum(1) == 1).all()
    assert torch.equal(lab0, pseudo[match.float().argmax(1)])
    # fewer points than covered: no repeats
    small = ESSPointDataset(f'{root}/3d', 'train', f'{root}/feat', 100, 20, pseudo_label_path=f'{root}/plg')
    assert torch.unique(small[0][0], dim=0).shape[0] == 100
    # the scene order depends on (seed, epoch) only
    sampler = EpochShuffleSampler(10, seed=5)
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(order) == list(range(10)) and order == list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) != order


def test_training_lowers_the_loss_and_writes_checkpoints(data, trained):
    root, text = data
    files = set(os.listdir(trained))
    assert {'best.pth', 'last.pth', 'ess_train_config.yaml', 'ess_train_run.json'} <= files
    assert any(f.startswith('ess_train-') and f.endswith('.log') for f in files)
    cfg = load_config(['--config', TRAIN_CFG, *data_overrides(root), 'pseudo_label_path', f'{root}/plg'],
                      train_openseg_pre_train.SCHEMA)
    torch.manual_seed(7)
    untrained = build_adapter(torch.from_numpy(text).float(), cfg.feature_2d_extractor, cfg.adapter_reduction,
                              cfg.adapter_alpha)
    model = build_adapter(torch.from_numpy(text).float(), cfg.feature_2d_extractor, cfg.adapter_reduction,
                          cfg.adapter_alpha)
    state = load_checkpoint(os.path.join(trained, 'last.pth'), model)
    assert state['epoch'] == 4 and len(state['extra']['val_miou']) == 4
    assert [e for e, _ in state['extra']['val_miou']] == [1, 2, 3, 4]
    assert state['best_metric'] == max(m for _, m in state['extra']['val_miou'])
    before, after = covered_loss(untrained, root), covered_loss(model, root)
    assert after < 0.5 * before, (before, after)


def test_resume_equals_uninterrupted_run(data, trained, tmp_path):
    root, _ = data
    save = str(tmp_path / 'resumed')
    train(root, save, epochs=2)
    train(root, save, epochs=4, resume=os.path.join(save, 'last.pth'))
    full = torch.load(os.path.join(trained, 'last.pth'), weights_only=True)
    resumed = torch.load(os.path.join(save, 'last.pth'), weights_only=True)
    for key, value in full['state_dict'].items():
        assert torch.equal(resumed['state_dict'][key], value), key
    for pid, st in full['optimizer']['state'].items():
        for name in ('exp_avg', 'exp_avg_sq', 'step'):
            assert torch.equal(resumed['optimizer']['state'][pid][name], st[name]), (pid, name)
    assert resumed['scheduler'] == full['scheduler']
    assert resumed['extra']['val_miou'] == full['extra']['val_miou']
    assert resumed['best_metric'] == full['best_metric'] and resumed['epoch'] == 4


def test_inference_writes_adapted_embeddings_in_fused_format(data, trained, tmp_path):
    root, text = data
    out = str(tmp_path / 'ess_embeddings')
    argv = ['--config', EVAL_CFG, *data_overrides(root), 'save_path', trained, 'ess_embedding_path', out]
    results = eval_openseg_pre_train.main(argv)
    cfg = load_config(['--config', EVAL_CFG, *data_overrides(root)], eval_openseg_pre_train.SCHEMA)
    model = build_adapter(torch.from_numpy(text).float(), cfg.feature_2d_extractor, cfg.adapter_reduction,
                          cfg.adapter_alpha)
    load_checkpoint(os.path.join(trained, 'best.pth'), model)
    for split in ('train', 'val'):
        for path in formats.list_scenes(f'{root}/3d', split):
            scene = formats.scene_name(path)
            raw, mask = formats.load_fused_features(f'{root}/feat/{scene}_0.pt')
            feat, out_mask = formats.load_fused_features(f'{out}/{scene}_0.pt', num_points=N, feat_dim=D)
            assert torch.equal(out_mask, mask)
            with torch.no_grad():
                torch.testing.assert_close(feat.float(), model.adapt(raw).half().float(), rtol=0, atol=0)
    assert set(results) == {'train', 'val'}
    for split in results:
        for r in results[split].values():
            assert 0.0 < r['miou_all_points'] <= r['miou_covered'] <= 1.0
    # a rerun skips finished scenes (files untouched) and scores them identically
    def stamps():  # every file but the lock, which each run takes anew
        return {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out) if f != '.lock'}
    before = stamps()
    assert eval_openseg_pre_train.main(argv) == results
    assert stamps() == before
    # exactly the two keys of OpenScene's fused-feature files
    for name in before:
        if name.endswith('.pt'):
            assert set(torch.load(os.path.join(out, name), weights_only=True)) == {'feat', 'mask_full'}
    # ESG reads them through its loader: the ESS embedding of every covered voxel
    from dataset.feature_loader import FusedFeatureLoader
    loader = FusedFeatureLoader(datapath_prefix=f'{root}/3d', datapath_prefix_feat=out, voxel_size=0.05,
                                split='train', aug=False, feat_dim=D)
    coords, colors, labels, feat_3d, voxel_mask = loader[0]
    assert feat_3d.shape == (int(voxel_mask.sum()), D) and 0 < feat_3d.shape[0] <= coords.shape[0]
    # other adapter weights (a retrained adapter) make every file stale: all are rewritten from the new weights
    other = os.path.join(str(tmp_path), 'other.pth')
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_checkpoint(other, model=model, epoch=1, best_metric=0.0)
    eval_openseg_pre_train.main(argv + ['model_path', other])
    assert all(os.stat(os.path.join(out, f)).st_mtime_ns != before[f] for f in before if f.endswith('.pt'))
    scene = formats.scene_name(formats.list_scenes(f'{root}/3d', 'val')[0])
    raw, _ = formats.load_fused_features(f'{root}/feat/{scene}_0.pt')
    with torch.no_grad():
        torch.testing.assert_close(formats.load_fused_features(f'{out}/{scene}_0.pt')[0].float(),
                                   model.adapt(raw).half().float(), rtol=0, atol=0)
    # writing the embeddings over their own input features is refused
    with pytest.raises(ValueError, match='ess_embedding_path.*replace their own input'):
        eval_openseg_pre_train.main(argv + ['ess_embedding_path', f'{root}/feat'])


def test_missing_or_mismatched_pseudo_labels_name_the_file(tmp_path):
    root = str(tmp_path)
    make_data(root, n_train=2, n_val=1)
    label_path = formats.pseudo_label_paths(f'{root}/plg', 'scene0001_00')[0]
    os.remove(label_path)
    with pytest.raises(FileNotFoundError, match=r'scene0001_00_pred\.npy.*run pseudo-label generation'):
        ESSPointDataset(f'{root}/3d', 'train', f'{root}/feat', 10, 20, pseudo_label_path=f'{root}/plg')
    with pytest.raises(FileNotFoundError, match=r'scene0001_00_pred\.npy'):
        train(root, str(tmp_path / 'run'), epochs=1)
    formats.save_pseudo_labels(f'{root}/plg', 'scene0001_00', np.zeros(N - 1, np.int64), np.zeros(N - 1))
    ds = ESSPointDataset(f'{root}/3d', 'train', f'{root}/feat', 10, 20, pseudo_label_path=f'{root}/plg')
    with pytest.raises(formats.FormatError,
                       match=rf'scene0001_00_pred\.npy.*expected shape \[{N}\].*found \[{N - 1}\]'):
        ds[1]
    formats.save_pseudo_labels(f'{root}/plg', 'scene0001_00', np.full(N, 21, np.int64), np.zeros(N))
    with pytest.raises(formats.FormatError, match=r'scene0001_00_pred\.npy.*class ids in \[0, 20\]'):
        ds[1]
