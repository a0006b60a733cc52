"""Checkpoints for every training stage (ESS adapter, ESG network): one layout, atomic writes.

A checkpoint is a dict
    {'state_dict', 'optimizer', 'scheduler', 'epoch', 'best_metric', 'best_epoch', 'extra'}
where ``epoch`` is the number of finished epochs (training resumes at that epoch index, as OpenScene's
``epoch_log``), ``best_epoch`` the epoch whose weights ``best.pth`` holds, and ``extra`` small plain
values (config, metric history). Written with ``util/io.atomic_torch_save``, so an interrupted save never
leaves a truncated ``last.pth``. ``last.pth`` is written first and then copied to ``best.pth``; a kill
between the two leaves ``best.pth`` one best epoch behind, which ``repair_best`` mends when the run
resumes (``last.pth`` then records that it is itself the best epoch).

Readers also accept the upstream layouts: OpenScene's (``state_dict``, ``best_iou``) and 3DSS-VLG's
ESS (``model_state_dict``, ``optimizer_state_dict``, ``miou``), and weights saved from a
DistributedDataParallel model (``module.`` prefixes are stripped).
"""
import os

import torch

from util.io import atomic_copy, atomic_torch_save, safe_torch_load

_MODEL_KEYS = ('state_dict', 'model_state_dict', 'model')
_OPTIMIZER_KEYS = ('optimizer', 'optimizer_state_dict')
_METRIC_KEYS = ('best_metric', 'best_iou', 'miou')


def unwrap_model(model):
    """The module whose state is saved: DataParallel / DDP wrappers are looked through."""
    return model.module if hasattr(model, 'module') and isinstance(model.module, torch.nn.Module) else model


def save_checkpoint(path, *, model, optimizer=None, scheduler=None, epoch, best_metric, best_epoch=None,
                    extra=None):
    """Write a checkpoint atomically (a crash mid-save keeps the previous file)."""
    state = {
        'state_dict': unwrap_model(model).state_dict(),
        'optimizer': optimizer.state_dict() if optimizer is not None else None,
        'scheduler': scheduler.state_dict() if scheduler is not None else None,
        'epoch': int(epoch),
        'best_metric': float(best_metric),
        'best_epoch': None if best_epoch is None else int(best_epoch),
        'extra': dict(extra) if extra else {},
    }
    atomic_torch_save(state, path)


def save_best_and_last(save_path, is_best, **state):
    """Write ``<save_path>/last.pth`` and, if ``is_best``, copy it to ``<save_path>/best.pth``.

    ``state`` are the keyword arguments of ``save_checkpoint`` (``best_epoch``: the epoch ``best.pth`` holds
    after this call). Returns the path of last.pth.
    """
    last = os.path.join(save_path, 'last.pth')
    save_checkpoint(last, **state)
    if is_best:
        atomic_copy(last, os.path.join(save_path, 'best.pth'))
    return last


def repair_best(save_path, resume_path, resumed, log):
    """Make ``best.pth`` hold the best epoch again after a kill between the writes of last.pth and best.pth.

    ``resumed``: what ``load_checkpoint`` returned for ``resume_path``; only a resume from this folder's
    own ``last.pth`` is considered. When last.pth is itself the best epoch and best.pth is missing or holds
    another epoch, last.pth is copied over it. Returns True if it repaired something.
    """
    best_epoch, epoch = resumed.get('best_epoch'), resumed.get('epoch')
    best = os.path.join(save_path, 'best.pth')
    if best_epoch is None or os.path.realpath(resume_path) != os.path.realpath(os.path.join(save_path, 'last.pth')):
        return False
    held = safe_torch_load(best, 'checkpoint').get('epoch') if os.path.isfile(best) else None
    if held == best_epoch:
        return False
    if best_epoch == epoch:
        atomic_copy(os.path.join(save_path, 'last.pth'), best)
        log(f"repaired '{best}': it held epoch {held} but the best epoch is {best_epoch} (a run was stopped between "
            f"writing last.pth and best.pth); copied last.pth, which is that epoch")
        return True
    log(f"warning: '{best}' holds epoch {held}, but the best epoch was {best_epoch}; its weights are not "
        f"in last.pth either (epoch {epoch}), so best.pth cannot be repaired")
    return False


def _strip_module_prefix(state_dict):
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def _first_key(ckpt, keys):
    for key in keys:
        if key in ckpt and ckpt[key] is not None:
            return ckpt[key]
    return None


def load_checkpoint(path, model, optimizer=None, scheduler=None, map_location='cpu', strict=True):
    """Load weights (and optimizer / scheduler state when given) -> dict(epoch, best_metric, extra).

    Raises a ValueError naming the file and a few missing / unexpected parameter names when the
    checkpoint does not fit ``model`` (``strict=True``), and when optimizer or scheduler state is asked
    for but the file has none.
    """
    ckpt = safe_torch_load(path, 'checkpoint', map_location=map_location)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint '{path}': expected a dict, found {type(ckpt).__name__}")
    state_dict = _first_key(ckpt, _MODEL_KEYS)
    if state_dict is None:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            state_dict = ckpt  # a bare state_dict
        else:
            raise ValueError(f"checkpoint '{path}': no model weights found; expected one of the keys "
                             f"{list(_MODEL_KEYS)}, found {sorted(ckpt)}")
    state_dict = _strip_module_prefix(dict(state_dict))
    bad = [k for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"checkpoint '{path}': {len(bad)} parameter(s) hold NaN or inf, e.g. '{bad[0]}'; the run "
                         f"that wrote it diverged (its log says when): use an earlier checkpoint or retrain")
    target = unwrap_model(model)
    own = target.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint '{path}' does not fit the model ({type(target).__name__}): "
                         f"{len(missing)} missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; "
                         f"check that the config builds the same architecture")
    shapes = [f'{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}'
              for k, v in state_dict.items() if k in own and hasattr(v, 'shape') and v.shape != own[k].shape]
    if shapes:
        raise ValueError(f"checkpoint '{path}': parameter shapes differ from the model: {shapes[:5]}")
    target.load_state_dict(state_dict, strict=strict)

    if optimizer is not None:
        opt_state = _first_key(ckpt, _OPTIMIZER_KEYS)
        if opt_state is None:
            raise ValueError(f"checkpoint '{path}' holds no optimizer state, so training cannot resume from it "
                             f"exactly; load it as weights only (optimizer=None)")
        optimizer.load_state_dict(opt_state)
    if scheduler is not None:
        if ckpt.get('scheduler') is None:
            raise ValueError(f"checkpoint '{path}' holds no scheduler state, so training cannot resume from it "
                             f"exactly; load it as weights only (scheduler=None)")
        scheduler.load_state_dict(ckpt['scheduler'])
    best = _first_key(ckpt, _METRIC_KEYS)
    return {'epoch': int(ckpt.get('epoch', 0)),
            'best_metric': float(best) if best is not None else float('-inf'),
            'best_epoch': ckpt.get('best_epoch'),
            'extra': dict(ckpt.get('extra') or {})}


def check_same_schedule(path, resumed, schedule, why):
    """Refuse to resume from ``path`` when a value of ``schedule`` ({config key: value} of the keys the
    learning-rate schedule depends on) differs from the run that wrote it (``resumed``: what ``load_checkpoint``
    returned); ``why`` says how the schedule depends on them. Checkpoints without a recorded config are not
    checked."""
    saved = resumed['extra'].get('config') or {}
    changed = [k for k in schedule if k in saved and saved[k] != schedule[k]]
    if changed:
        was = ', '.join(f'{k} {saved[k]!r} -> {schedule[k]!r}' for k in changed)
        keep = ' '.join(f'{k} {saved[k]}' for k in changed)
        raise ValueError(f"resume '{path}': the run it continues had other schedule settings ({was}); {why}, so "
                         f"continuing with these would change the schedule mid-run. Give {keep} to continue that run "
                         f"as planned, or start a new run in another folder")
