"""The training loop both stages share (ESS: train_openseg_pre_train.py, ESG: train_esg.py).

After Pointcept's engines/train.py trainer (a loop with hooks), without its registry: the stage hands in what is
its own (the loss, the data, the schedule: ``run_epoch``; its metric: ``validate``), the loop does the rest:

    trainer = Trainer(model=model, optimizer=optimizer, epochs=30, steps_per_epoch=len(loader), save_path=folder,
                      run_epoch=lambda epoch, validation_left: (loss, lr), validate=lambda epoch: Validation(...),
                      eval_freq=1, logger=logger, extra=lambda: {'config': config})
    trainer.resume(path)   # a run that continues: weights, optimizer (scheduler), epoch, best, history
    trainer.fit(writer)

per epoch: the epoch's seed (``epoch_seed``), ``run_epoch``, validation every ``eval_freq`` epochs and after the last
(``validation_epochs``), ``last.pth`` and (when the val mIoU improved) ``best.pth``, TensorBoard scalars at the
optimiser step, the epoch line; at the end, the best epoch. ``validate`` returning None switches validation off
(a val split without labels); with validation off ``best.pth`` follows ``last.pth``. Plain values only: the stage
scripts read their config.
"""
import math
import time
from collections import namedtuple

import torch

from util.checkpoint import load_checkpoint, repair_best, save_best_and_last
from util.misc import Timer, format_eta, set_seed
from util.tensorboard import close_writer, log_scalars

# one validation: the val mIoU, TensorBoard scalars, and text around 'val mIoU x [detail]  best y [*][note]'
Validation = namedtuple('Validation', 'metric scalars detail note', defaults=({}, '', ''))


def validation_epochs(epochs, eval_freq, evaluate=True, start=0):
    """The (1-based) epochs after ``start`` finished epochs that validate: every eval_freq-th and the last."""
    if not evaluate:
        return []
    return [e for e in range(start + 1, epochs + 1) if e % eval_freq == 0 or e == epochs]


def non_finite_loss_message(stage, loss, epoch, step, scenes, checks, model, hint, network='network', unit='step'):
    """Where a non-finite loss came from, blaming in order: the first of ``checks`` ((tensor, what to fix) pairs: the
    batch's inputs and targets, i.e. a bad file) holding NaN / Inf, the weights of ``model`` (training diverged),
    else ``hint`` (all finite: the forward pass overflowed). ``epoch`` and ``step`` are 0-based."""
    where = f'{stage} loss is {loss} at epoch {epoch + 1}, {unit} {step + 1} (scenes {", ".join(scenes)})'
    for tensor, fix in checks:
        if not torch.isfinite(tensor).all():
            return f'{where}: {fix}'
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return f'{where}: the {network} weights became non-finite (training diverged); lower base_lr'
    return f'{where}: {hint}'


def _mean(values):
    return sum(values) / len(values) if values else 0.0


class Trainer:
    """One stage's epochs, checkpoints and report. Hooks (plain callables):

    run_epoch(epoch, validation_left) -> (mean loss, lr): one epoch of the stage (0-based ``epoch``);
        ``validation_left()`` estimates the seconds the validations still to come take (for a per-step ETA).
    validate(epoch) -> Validation, or None to switch validation off (best.pth then follows last.pth).
    extra() -> dict: what else the checkpoint's ``extra`` holds (config, loss scaler), after 'val_miou'
        (and 'train_loss' with ``keep_losses``).
    epoch_seed(epoch) -> int: seed of the global RNGs for the epoch (None: no reseeding).
    after_train(): at the end, before the best epoch is logged.
    ``report``: 'epoch' puts lr and an ETA into the epoch line (and 'train/lr' into TensorBoard), 'step' leaves them
    to the stage's step lines. ``save`` writes last.pth / best.pth (util.checkpoint.save_best_and_last's signature);
    ``main_process`` alone writes and repairs checkpoints, ``barrier`` follows every write (DDP).
    """

    def __init__(self, *, model, optimizer, epochs, steps_per_epoch, run_epoch, save_path, logger, validate=None,
                 eval_freq=1, scheduler=None, extra=dict, epoch_seed=None, after_train=None,
                 report='step', keep_losses=False, done_note='', save=save_best_and_last, main_process=True,
                 barrier=lambda: None):
        if report not in ('epoch', 'step'):
            raise ValueError(f"report must be 'epoch' or 'step', found {report!r}")
        self.model, self.optimizer, self.scheduler, self.epochs = model, optimizer, scheduler, epochs
        self.steps_per_epoch, self.run_epoch, self.validate = steps_per_epoch, run_epoch, validate
        self.eval_freq = eval_freq
        self.save_path, self.logger, self.writer, self.extra = save_path, logger, None, extra
        self.epoch_seed, self.after_train, self.report, self.keep_losses = epoch_seed, after_train, report, keep_losses
        self.done_note, self.save, self.main_process, self.barrier = done_note, save, main_process, barrier
        self.validating = validate is not None
        self.start_epoch, self.best_metric, self.best_epoch = 0, -math.inf, None
        self.history, self.losses = [], []      # [(epoch, val mIoU)], [mean train loss of every epoch]
        self.train_seconds, self.val_seconds = [], []
        self.timer = Timer()

    def resume(self, path, map_location='cpu', check=None):
        """Continue the run of checkpoint ``path``; ``check(state)`` may refuse it (another schedule) before anything
        is repaired. Returns what ``load_checkpoint`` returned (the stage restores its own ``extra`` from it)."""
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler, map_location=map_location)
        if check is not None:
            check(state)
        if self.main_process:
            repair_best(self.save_path, path, state, self.logger.info)
        self.start_epoch, self.best_metric, self.best_epoch = state['epoch'], state['best_metric'], state['best_epoch']
        self.history = [tuple(h) for h in state['extra'].get('val_miou', [])]
        self.losses = list(state['extra'].get('train_loss', []))
        self.logger.info(f"resumed from '{path}': {self.start_epoch} epochs done, best val mIoU {self.best_metric:.4f}")
        return state

    def validation_seconds_left(self, start):
        """Estimated seconds of the validations after ``start`` finished epochs, at the mean time of those done."""
        return len(validation_epochs(self.epochs, self.eval_freq, self.validating, start)) * _mean(self.val_seconds)

    def fit(self, writer=None):
        """Train from ``start_epoch`` to ``epochs``, TensorBoard scalars to ``writer`` (closed at the end)."""
        self.writer, self.timer = writer, Timer()
        for epoch in range(self.start_epoch, self.epochs):
            self.run_one(epoch)
        if self.after_train is not None:
            self.after_train()
        close_writer(self.writer)
        if self.history and self.main_process:
            best_epoch, best = max(self.history, key=lambda h: h[1])
            self.logger.info(f"done: best val mIoU {best:.4f} at epoch {best_epoch}; checkpoints in "
                             f"'{self.save_path}'{self.done_note}")
        return self

    def run_one(self, epoch):
        if self.epoch_seed is not None:
            set_seed(self.epoch_seed(epoch))
        started = time.perf_counter()
        loss, lr = self.run_epoch(epoch, lambda: self.validation_seconds_left(epoch))
        self.train_seconds.append(time.perf_counter() - started)
        self.losses.append(loss)
        scalars = {'train/loss': loss, **({'train/lr': lr} if self.report == 'epoch' else {})}
        is_best, message = self.validate_after(epoch, scalars)
        if is_best:
            self.best_epoch = epoch + 1
        if self.main_process:
            history = {'val_miou': self.history, **({'train_loss': self.losses} if self.keep_losses else {})}
            self.save(self.save_path, is_best, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                      epoch=epoch + 1, best_metric=self.best_metric, best_epoch=self.best_epoch,
                      extra={**history, **self.extra()})
        self.barrier()  # no process starts the next epoch (or reads last.pth) before it is written
        log_scalars(self.writer, scalars, (epoch + 1) * self.steps_per_epoch)
        done = self.timer.elapsed()
        if self.report == 'epoch':
            eta = _mean(self.train_seconds) * (self.epochs - epoch - 1) + self.validation_seconds_left(epoch + 1)
            self.logger.info(f'epoch {epoch + 1}/{self.epochs}  lr {lr:.2e}  loss {loss:.4f}{message}  '
                             f'[{done:.1f} s, ETA {format_eta(eta)}]')
        else:
            self.logger.info(f'epoch {epoch + 1}/{self.epochs} done  loss {loss:.4f}{message}  [{done:.1f} s]')

    def validate_after(self, epoch, scalars):
        """Validate after ``epoch`` when it is due -> (is_best, text for the epoch line); adds to ``scalars``."""
        if not self.validating:
            return True, ''  # no validation: best.pth follows last.pth, so evaluation configs still find it
        if epoch + 1 not in validation_epochs(self.epochs, self.eval_freq, start=epoch):
            return False, ''
        started = time.perf_counter()
        result = self.validate(epoch)
        self.val_seconds.append(time.perf_counter() - started)
        if result is None:
            self.validating = False
            return True, ''
        metric = result.metric
        self.history.append((epoch + 1, metric))
        is_best = metric > self.best_metric
        self.best_metric = max(self.best_metric, metric)
        scalars.update(result.scalars)
        return is_best, (f"  val mIoU {metric:.4f}{result.detail}  best {self.best_metric:.4f}"
                         f"{'  *' if is_best else ''}{result.note}")
