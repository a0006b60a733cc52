"""The training loop both stages share (pipeline/training.py), on a toy model in a second: validation cadence,
best / last checkpoints, exact resume with the history kept, validation switched off, the epoch lines and
TensorBoard scalars, and the message of a non-finite loss."""
import logging
import math
import os
import shutil

import pytest
import torch

from pipeline.training import Trainer, Validation, non_finite_loss_message, validation_epochs
from util.io import safe_torch_load


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


class Writer:
    """A TensorBoard writer that keeps what it is given."""

    def __init__(self):
        self.scalars, self.closed = [], False

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def logger(name):
    log = logging.getLogger(f'test-training-loop-{name}')
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers = [Lines()]
    return log


def toy(save_path, name, epochs=5, eval_freq=2, scores=(0.3, 0.5, 0.4), stop_at=None, with_validation=True, **kw):
    """A linear model fitted with Adam to a fixed target; each epoch two steps on a batch drawn from the epoch's seed;
    ``scores``: the val mIoUs of the successive validations; ``stop_at``: the epoch whose training is 'killed'."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    calls = {'epochs': [], 'validations': []}
    scores = iter(scores)
    target = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])

    def run_epoch(epoch, validation_left):
        if epoch == stop_at:
            raise KeyboardInterrupt
        calls['epochs'].append(epoch)
        for _ in range(2):
            x = torch.randn(8, 3)  # the global RNG, seeded by the loop for every epoch
            loss = ((model(x) - x @ target) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item(), optimizer.param_groups[0]['lr']

    def validate(epoch):
        calls['validations'].append(epoch + 1)
        score = next(scores)
        return None if score is None else Validation(score, {'val/miou': score}, '  mAcc 0.1000', '  (toy)')

    trainer = Trainer(model=model, optimizer=optimizer, epochs=epochs, steps_per_epoch=2, run_epoch=run_epoch,
                      validate=validate if with_validation else None, eval_freq=eval_freq, save_path=str(save_path),
                      logger=logger(name), epoch_seed=lambda epoch: 100 + epoch, extra=lambda: {'note': 'toy'},
                      keep_losses=True, **kw)
    return trainer, calls


def lines(trainer):
    return trainer.logger.handlers[0].lines


def test_validation_epochs_every_eval_freq_and_the_last():
    assert validation_epochs(10, 4) == [4, 8, 10]
    assert validation_epochs(10, 4, start=8) == [10]
    assert validation_epochs(8, 4, start=4) == [8]
    assert validation_epochs(3, 1) == [1, 2, 3]
    assert validation_epochs(10, 4, evaluate=False) == []
    assert validation_epochs(5, 2, start=5) == []


def test_cadence_best_and_last_checkpoints_lines_and_scalars(tmp_path):
    trainer, calls = toy(tmp_path, 'cadence')
    writer = Writer()
    trainer.fit(writer)
    assert calls['epochs'] == [0, 1, 2, 3, 4] and calls['validations'] == [2, 4, 5]
    last = safe_torch_load(os.path.join(tmp_path, 'last.pth'), 'checkpoint')
    best = safe_torch_load(os.path.join(tmp_path, 'best.pth'), 'checkpoint')
    assert last['epoch'] == 5 and last['best_epoch'] == 4 and last['best_metric'] == 0.5
    assert best['epoch'] == 4  # the weights of the best validation, not of the last epoch
    assert not torch.equal(best['state_dict']['weight'], last['state_dict']['weight'])
    assert last['extra']['val_miou'] == [(2, 0.3), (4, 0.5), (5, 0.4)] and last['extra']['note'] == 'toy'
    assert len(last['extra']['train_loss']) == 5 and last['extra']['train_loss'] == trainer.losses
    assert list(last['extra']) == ['val_miou', 'train_loss', 'note']
    text = lines(trainer)
    assert text[0].startswith('epoch 1/5 done  loss ') and text[0].endswith(' s]') and 'val' not in text[0]
    assert '  val mIoU 0.3000  mAcc 0.1000  best 0.3000  *  (toy)  [' in text[1]
    assert '  val mIoU 0.4000  mAcc 0.1000  best 0.5000  (toy)  [' in text[4]
    assert text[-1] == f"done: best val mIoU 0.5000 at epoch 4; checkpoints in '{tmp_path}'"
    # scalars at the optimiser step of each epoch's end (2 steps per epoch); the writer is closed
    assert [(n, s) for n, _, s in writer.scalars] == [('train/loss', 2), ('train/loss', 4), ('val/miou', 4),
                                                     ('train/loss', 6), ('train/loss', 8), ('val/miou', 8),
                                                     ('train/loss', 10), ('val/miou', 10)]
    assert writer.closed


def test_resume_continues_at_the_right_epoch_with_the_history_and_equals_an_uninterrupted_run(tmp_path):
    full, _ = toy(tmp_path / 'full', 'full')
    full.fit()
    killed, calls = toy(tmp_path / 'run', 'killed', stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert calls['epochs'] == [0, 1, 2] and calls['validations'] == [2]
    resumed, calls = toy(tmp_path / 'run', 'resumed', scores=(0.5, 0.4))  # what epochs 4 and 5 score
    resumed.resume(os.path.join(tmp_path, 'run', 'last.pth'))
    assert (resumed.start_epoch, resumed.best_metric, resumed.best_epoch) == (3, 0.3, 2)
    assert resumed.history == [(2, 0.3)] and len(resumed.losses) == 3
    assert lines(resumed) == [f"resumed from '{tmp_path}/run/last.pth': 3 epochs done, best val mIoU 0.3000"]
    resumed.fit()
    assert calls['epochs'] == [3, 4] and calls['validations'] == [4, 5]
    assert resumed.history == full.history and resumed.losses == full.losses
    a = safe_torch_load(os.path.join(tmp_path, 'full', 'last.pth'), 'checkpoint')
    b = safe_torch_load(os.path.join(tmp_path, 'run', 'last.pth'), 'checkpoint')
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    assert a['extra']['train_loss'] == b['extra']['train_loss']
    assert safe_torch_load(os.path.join(tmp_path, 'run', 'best.pth'), 'checkpoint')['epoch'] == 4
    # a resume refused by the stage's check (another schedule) repairs and changes nothing
    def other_schedule(state):
        raise ValueError(f"the run of epoch {state['epoch']} had another schedule")

    refused, _ = toy(tmp_path / 'run', 'refused')
    with pytest.raises(ValueError, match='epoch 5 had another schedule'):
        refused.resume(os.path.join(tmp_path, 'run', 'last.pth'), check=other_schedule)
    assert refused.start_epoch == 0 and refused.history == []


def test_resume_repairs_a_stale_best(tmp_path):
    trainer, _ = toy(tmp_path, 'stale', epochs=2, eval_freq=1, scores=(0.1, 0.2))
    trainer.fit()
    shutil.copyfile(tmp_path / 'last.pth', tmp_path / 'keep.pth')
    state = torch.load(tmp_path / 'best.pth', weights_only=True)
    state['epoch'] = 1  # a kill between last.pth and best.pth left best.pth one best epoch behind
    torch.save(state, tmp_path / 'best.pth')
    again, calls = toy(tmp_path, 'repair', epochs=2, eval_freq=1)
    again.resume(str(tmp_path / 'last.pth'))
    again.fit()
    assert calls['epochs'] == [] and safe_torch_load(str(tmp_path / 'best.pth'), 'checkpoint')['epoch'] == 2
    assert any(line.startswith(f"repaired '{tmp_path}/best.pth'") for line in lines(again))
    assert lines(again)[-1] == f"done: best val mIoU 0.2000 at epoch 2; checkpoints in '{tmp_path}'"


def test_without_validation_best_follows_last(tmp_path):
    trainer, calls = toy(tmp_path, 'noval', epochs=3, with_validation=False)
    saved = []
    trainer.save = lambda path, is_best, **state: saved.append((is_best, state['epoch'], state['best_epoch']))
    trainer.fit()
    assert saved == [(True, 1, 1), (True, 2, 2), (True, 3, 3)] and calls['validations'] == []
    assert trainer.history == [] and trainer.best_metric == -math.inf
    assert not any(line.startswith('done:') for line in lines(trainer))


def test_validate_returning_none_switches_validation_off(tmp_path):
    trainer, calls = toy(tmp_path, 'off', epochs=4, eval_freq=1, scores=(0.3, None, 0.9, 0.9))
    saved = []
    trainer.save = lambda path, is_best, **state: saved.append((is_best, state['epoch'], state['best_epoch']))
    trainer.fit()
    assert calls['validations'] == [1, 2]  # none after the switch-off
    assert saved == [(True, 1, 1), (True, 2, 2), (True, 3, 3), (True, 4, 4)]
    assert trainer.history == [(1, 0.3)]


def test_epoch_report_and_eta_count_the_validations_to_come(tmp_path):
    trainer, _ = toy(tmp_path, 'eta', epochs=5, eval_freq=2, report='epoch')
    writer = Writer()
    trainer.fit(writer)
    text = lines(trainer)
    assert text[0].startswith('epoch 1/5  lr 1.00e-01  loss ') and ', ETA 0:00:0' in text[0]
    assert ('train/lr', 0.1, 2) in writer.scalars
    trainer.val_seconds = [10.0, 20.0]
    assert trainer.validation_seconds_left(0) == 3 * 15.0  # epochs 2, 4, 5
    assert trainer.validation_seconds_left(4) == 15.0 and trainer.validation_seconds_left(5) == 0
    trainer.validating = False
    assert trainer.validation_seconds_left(0) == 0


def test_other_processes_write_nothing_and_wait_at_the_barrier(tmp_path):
    waits = []
    trainer, calls = toy(tmp_path, 'rank1', epochs=2, main_process=False, barrier=lambda: waits.append(1))
    trainer.fit()
    assert calls['epochs'] == [0, 1] and waits == [1, 1] and os.listdir(tmp_path) == []


def test_non_finite_loss_message_names_epoch_step_scenes_and_blames_in_order():
    model = torch.nn.Linear(3, 2)
    good, bad = torch.ones(4, 3), torch.ones(4, 3)
    bad[2, 1] = float('nan')
    scenes = ['scene0001_00', 'scene0002_00']
    checks = lambda a, b: [(a, 'the inputs are bad; fix them'), (b, 'the targets are bad; redo them')]
    say = lambda a, b, **kw: non_finite_loss_message('ESX', float('nan'), 2, 6, scenes, checks(a, b), model,
                                                     'all finite, so it overflowed', **kw)
    assert say(bad, bad) == ('ESX loss is nan at epoch 3, step 7 (scenes scene0001_00, scene0002_00): the inputs are '
                             'bad; fix them')
    assert say(good, bad).endswith(': the targets are bad; redo them')
    assert say(good, good).endswith(': all finite, so it overflowed')
    assert 'epoch 3, batch 7 (' in say(good, good, unit='batch')
    with torch.no_grad():
        model.weight[0, 0] = float('inf')
    assert say(good, good, network='adapter').endswith(
        ': the adapter weights became non-finite (training diverged); lower base_lr')
    assert say(bad, good).endswith(': the inputs are bad; fix them')  # a bad file is blamed before the weights
