"""ESG stage (train_esg.py): the loss falls, the lr schedule is upstream's, resume is exact.

Tiny scenes (a floor, a wall and one box, ~1,300 points) and a tiny network (MinkUNet14A, 512-d output)
keep every run at a few seconds on 2 CPU cores. ``make_tiny_dataset`` (tests/helpers.py) is shared with
tests/test_evaluate.py and tests/test_distributed.py.
"""
import math
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import ESG_TRAIN_CONFIG as TRAIN_CONFIG
from helpers import make_tiny_dataset, train_argv

from dataset.formats import save_fused_features, save_scene_3d
from util.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('esg'))
    return root, make_tiny_dataset(root)


def test_learning_rate_reproduces_upstream_quirk(tmp_path):
    import train_esg
    from train_esg import learning_rate
    root = str(tmp_path)
    cfg = load_config(['--config', TRAIN_CONFIG, *make_tiny_dataset(root, n_train=1, n_val=1), 'base_lr', '1e-4',
                       'power', '0.9', 'esg_targets', os.path.join(root, 'feat')], train_esg.SCHEMA)
    max_iter = 100
    assert learning_rate(0, cfg, max_iter) == pytest.approx(1e-4)                      # Adam's initial lr
    assert learning_rate(1, cfg, max_iter) == pytest.approx(10 * 1e-4 * (1 - 1 / 100) ** 0.9)
    assert learning_rate(50, cfg, max_iter) == pytest.approx(1e-3 * 0.5 ** 0.9)
    cfg.lr_x10_after_first_step = False
    assert learning_rate(50, cfg, max_iter) == pytest.approx(1e-4 * 0.5 ** 0.9)


def test_distillation_loss_values():
    from pipeline.losses import distillation_loss
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    assert distillation_loss(a, b, 'cosine').item() == pytest.approx((0 + 2) / 2)
    assert distillation_loss(a, b, 'l1').item() == pytest.approx((0 + 0 + 0 + 3) / 4)
    with pytest.raises(ValueError, match='loss_type'):
        distillation_loss(a, b, 'mse')


def test_supervised_cross_entropy_scores_the_evaluation_logits():
    """The ceiling's loss: cross-entropy of out @ T^T (the logits evaluation takes the argmax of) on the
    annotated voxels only; a batch without any annotated voxel is an error, not a zero loss."""
    from pipeline.losses import supervised_cross_entropy
    g = torch.Generator().manual_seed(0)
    out = torch.randn(6, 8, generator=g)
    text = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    labels = torch.tensor([0, 2, 255, 1, 255, 2])
    keep = labels != 255
    expected = torch.nn.functional.cross_entropy(out[keep] @ text.t(), labels[keep])
    assert supervised_cross_entropy(out, labels, text).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match='annotated'):
        supervised_cross_entropy(out, torch.full((6,), 255), text)


def test_supervised_option_learns_from_labels_only(tiny):
    """loss_type supervised_ce trains on GT labels, never reading the distillation targets: the same run with
    the fused features replaced by noise gives the same weights."""
    import train_esg
    from util.io import safe_torch_load
    root, data = tiny
    noise_feat = os.path.join(root, 'noise_feat')
    os.makedirs(noise_feat, exist_ok=True)
    for name in os.listdir(os.path.join(root, 'feat')):
        raw = torch.load(os.path.join(root, 'feat', name), weights_only=True)
        save_fused_features(os.path.join(noise_feat, name), torch.randn(raw['feat'].shape), raw['mask_full'])
    runs = []
    for feat_root, out in ((os.path.join(root, 'feat'), 'sup_a'), (noise_feat, 'sup_b')):
        summary = train_esg.main(train_argv(root, data, save_path=os.path.join(root, out), epochs=4,
                                            esg_targets=feat_root, evaluate=False, base_lr=3e-4,
                                            loss_type='supervised_ce'))
        runs.append((summary, safe_torch_load(os.path.join(root, out, 'last.pth'), 'checkpoint')))
    (summary, a), (_, b) = runs
    assert summary['loss_type'] == 'supervised_ce'
    assert summary['train_loss'][-1] < 0.7 * summary['train_loss'][0], summary['train_loss']
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    with pytest.raises(ValueError, match='loss_type'):
        train_esg.main(train_argv(root, data, save_path=os.path.join(root, 'bad'), loss_type='hinge'))


def test_cosine_distance_equals_upstream_formula_and_its_gradients():
    """The fused cosine distance against upstream's (1 - nn.CosineSimilarity()(o, t)).mean() and gradcheck."""
    from pipeline.losses import cosine_distance
    g = torch.Generator().manual_seed(0)
    o = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    ours = cosine_distance(o, t)
    ours.backward()
    o2, t2 = o.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    ref = (1 - torch.nn.CosineSimilarity()(o2, t2)).mean()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(o.grad, o2.grad)
    torch.testing.assert_close(t.grad, t2.grad)
    assert torch.autograd.gradcheck(cosine_distance, (o.detach()[:5].requires_grad_(), t.detach()[:5].requires_grad_()))
    half = cosine_distance(o.detach().half(), t.detach().half())
    assert half.dtype == torch.float32 and half.item() == pytest.approx(ref.item(), abs=2e-3)


def test_training_lowers_the_loss(tiny):
    import train_esg
    root, data = tiny
    summary = train_esg.main(train_argv(root, data, save_path=os.path.join(root, 'loss'), epochs=4, evaluate=False,
                                        base_lr=3e-4))
    losses = summary['train_loss']
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_resume_continues_exactly(tiny, monkeypatch):
    """Interrupt after epoch 1 (keep that last.pth), resume to epoch 2: the weights equal an
    uninterrupted 2-epoch run bit for bit (data, augmentation and lr are functions of the epoch)."""
    import train_esg
    from util.io import safe_torch_load
    root, data = tiny
    full = os.path.join(root, 'full')
    saved = []
    original = train_esg.save_best_and_last

    def keep_epoch_1(save_path, is_best, **state):
        last = original(save_path, is_best, **state)
        if state['epoch'] == 1:
            shutil.copyfile(last, os.path.join(root, 'after_epoch_1.pth'))
            saved.append(1)
        return last

    monkeypatch.setattr(train_esg, 'save_best_and_last', keep_epoch_1)
    train_esg.main(train_argv(root, data, save_path=full))
    monkeypatch.setattr(train_esg, 'save_best_and_last', original)
    assert saved == [1]
    resumed = os.path.join(root, 'resumed')
    summary = train_esg.main(train_argv(root, data, save_path=resumed, resume=os.path.join(root, 'after_epoch_1.pth')))
    a = safe_torch_load(os.path.join(full, 'last.pth'), 'checkpoint')
    b = safe_torch_load(os.path.join(resumed, 'last.pth'), 'checkpoint')
    assert a['epoch'] == b['epoch'] == 2
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    assert summary['val_miou'] == [tuple(h) for h in a['extra']['val_miou']]


def test_val_split_without_labels_switches_validation_off(tmp_path):
    """Scans without GT in the val split: mIoU would be 0 forever; instead best.pth follows last.pth."""
    import train_esg
    from dataset.formats import list_scenes, load_scene_3d
    from util.io import safe_torch_load
    root = str(tmp_path)
    data = make_tiny_dataset(root, n_train=2, n_val=1)
    for path in list_scenes(os.path.join(root, '3d'), 'val'):
        scene = load_scene_3d(path)
        save_scene_3d(path, scene.coords, scene.colors, np.full(scene.coords.shape[0], 255))
    summary = train_esg.main(train_argv(root, data, epochs=2, eval_freq=1))
    assert summary['val_miou'] == [] and summary['best_val_miou'] is None
    best = safe_torch_load(os.path.join(root, 'esg', 'best.pth'), 'checkpoint')
    last = safe_torch_load(os.path.join(root, 'esg', 'last.pth'), 'checkpoint')
    assert best['epoch'] == last['epoch'] == 2
