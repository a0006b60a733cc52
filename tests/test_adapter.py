"""The ESS adapter's maths, its upstream-compatible state, and the shared checkpoint / TensorBoard helpers."""
import glob
import os

import pytest
import torch

from models.adapter import EmbeddingAdapter
from pipeline.networks import build_adapter
from util.checkpoint import load_checkpoint, save_best_and_last, save_checkpoint
from util.tensorboard import close_writer, create_writer, log_scalars


def small_adapter():
    """D = 4, reduction 4: W1 [1, 4], W2 [4, 1] + bias, two classes along axes 0 and 2."""
    text = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    model = EmbeddingAdapter(text, feat_dim=4, reduction=4, alpha=0.05)
    with torch.no_grad():
        model.fc[0].weight.copy_(torch.tensor([[1.0, 2.0, 0.0, -1.0]]))
        model.fc[1].weight.copy_(torch.tensor([[1.0], [0.0], [2.0], [-1.0]]))
        model.fc[1].bias.copy_(torch.tensor([0.5, 0.0, 0.0, 1.0]))
    return model


def test_adapter_matches_hand_computation():
    model = small_adapter()
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    # x1: W1 x = 2 -> W2 (2) + b = [2.5, 0, 4, -1];  0.95 * that + 0.05 * x
    # x2: W1 x = 2 -> same W2 output;                 0.95 * [2.5, 0, 4, -1] + 0.05 * [0, 1, 0, 0]
    expected = torch.tensor([[2.425, 0.05, 3.85, -0.9], [2.375, 0.05, 3.8, -0.95]])
    torch.testing.assert_close(model.adapt(x), expected, rtol=0, atol=1e-6)
    # logits = a(x) T^T picks components 0 and 2
    torch.testing.assert_close(model(x), expected[:, [0, 2]], rtol=0, atol=1e-6)
    # any leading shape: [B, P, D] -> [B, P, C]
    assert model(x.reshape(1, 2, 4).expand(3, 2, 4)).shape == (3, 2, 2)


def test_adapter_is_affine_without_activation():
    """Upstream has no ReLU/GELU between the linears: a(x) - a(0) is linear in x."""
    torch.manual_seed(0)
    model = EmbeddingAdapter(torch.nn.functional.normalize(torch.randn(5, 16), dim=1), reduction=4, alpha=0.05)
    x, y, zero = torch.randn(7, 16), torch.randn(7, 16), torch.zeros(7, 16)
    lhs = model.adapt(x + 2 * y) - model.adapt(zero)
    rhs = (model.adapt(x) - model.adapt(zero)) + 2 * (model.adapt(y) - model.adapt(zero))
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-5)
    # with alpha = 1 the adapter is the identity
    identity = EmbeddingAdapter(model.text_embeddings, reduction=4, alpha=1.0)
    torch.testing.assert_close(identity.adapt(x), x)


def test_text_embeddings_are_frozen_and_not_saved():
    text = torch.nn.functional.normalize(torch.randn(20, 768), dim=1)
    model = build_adapter(text, 'openseg', reduction=4, alpha=0.05)
    # upstream OpenSeg_Adapter's parameter names and shapes, nothing else in the state
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {'fc.0.weight': [192, 768], 'fc.1.weight': [768, 192], 'fc.1.bias': [768]}
    assert all(p is not model.text_embeddings for p in model.parameters())
    loss = model(torch.randn(3, 768)).sum()
    loss.backward()
    assert model.text_embeddings.grad is None and model.fc[0].weight.grad is not None
    with pytest.raises(ValueError, match='512'):
        build_adapter(text, 'lseg', reduction=4, alpha=0.05)


def test_checkpoint_round_trip_and_upstream_layouts(tmp_path):
    model = small_adapter()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step(), scheduler.step(), scheduler.step()
    save_best_and_last(str(tmp_path), True, model=model, optimizer=optimizer, scheduler=scheduler, epoch=3,
                       best_metric=0.25, best_epoch=3, extra={'val_miou': [0.1, 0.25]})
    assert sorted(os.listdir(tmp_path)) == ['best.pth', 'last.pth']

    fresh = EmbeddingAdapter(model.text_embeddings, feat_dim=4, reduction=4)
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    state = load_checkpoint(tmp_path / 'best.pth', fresh, opt2, sched2)
    assert state == {'epoch': 3, 'best_metric': 0.25, 'best_epoch': 3, 'extra': {'val_miou': [0.1, 0.25]}}
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert sched2.get_last_lr() == scheduler.get_last_lr() == [5e-3]
    assert torch.equal(opt2.state_dict()['state'][0]['exp_avg'], optimizer.state_dict()['state'][0]['exp_avg'])

    # not best: best.pth keeps the old state, last.pth moves on
    save_best_and_last(str(tmp_path), False, model=fresh, epoch=4, best_metric=0.25)
    assert load_checkpoint(tmp_path / 'best.pth', fresh)['epoch'] == 3
    assert load_checkpoint(tmp_path / 'last.pth', fresh)['epoch'] == 4

    # upstream ESS layout with DataParallel prefixes
    upstream = {'epoch': 7, 'miou': 0.4, 'model_state_dict': {'module.' + k: v for k, v in model.state_dict().items()}}
    torch.save(upstream, tmp_path / 'best_model.pth')
    assert load_checkpoint(tmp_path / 'best_model.pth', fresh) == {'epoch': 7, 'best_metric': 0.4, 'best_epoch': None,
                                                                   'extra': {}}


def test_checkpoint_mismatch_is_a_clear_error(tmp_path):
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(path, model=torch.nn.Linear(4, 2), epoch=1, best_metric=0.0)
    with pytest.raises(ValueError, match=r"ckpt\.pth.*missing keys \['fc\.0\.weight'.*unexpected keys \['weight'"):
        load_checkpoint(path, small_adapter())
    bigger = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r'shapes differ.*weight: checkpoint \[2, 4\] vs model \[3, 4\]'):
        load_checkpoint(path, bigger)
    with pytest.raises(ValueError, match='no scheduler state'):
        lin = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        load_checkpoint(path, lin, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        load_checkpoint(str(tmp_path / 'absent.pth'), small_adapter())


def test_tensorboard_writer_only_on_rank_zero(tmp_path):
    log_scalars(None, {'loss': 1.0}, 0)  # None-safe
    assert create_writer(str(tmp_path), rank=1) is None
    assert create_writer(str(tmp_path), enabled=False) is None
    writer = create_writer(str(tmp_path), rank=0)
    log_scalars(writer, {'train/loss': 0.5, 'val/miou': 0.3}, 1)
    close_writer(writer)
    events = glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
    assert len(events) == 1 and os.path.getsize(events[0]) > 0
