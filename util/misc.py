"""Small helpers every stage needs: seeding, device choice, running averages."""
import os
import random
import sys
import time
import warnings

import numpy as np
import torch


def set_seed(seed):
    """Seed python, numpy and torch (all devices) so a run repeats exactly on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault('PYTHONHASHSEED', str(seed))


def get_device(name='auto', log=None):
    """'auto' -> cuda when available else cpu; otherwise the named device (an error if unavailable).

    With 'auto', a GPU that is present but unusable (e.g. a driver too old for this PyTorch's CUDA) is
    reported to ``log`` with torch's reason, instead of a silent switch to the CPU."""
    if name in (None, '', 'auto'):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            usable = torch.cuda.is_available()
        if usable:
            return torch.device('cuda')
        reasons = [str(w.message).strip() for w in caught if 'cuda' in str(w.message).lower()]
        log = log or (lambda message: print(message, file=sys.stderr))
        if reasons or os.path.exists('/dev/nvidiactl'):
            log(f"warning: device auto: a GPU is present but PyTorch cannot use it "
                f"({'; '.join(reasons) or 'torch.cuda.is_available() is False'}); running on the CPU. Fix the "
                f"driver / CUDA build, or set device cpu to silence this")
        return torch.device('cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was asked for but CUDA is not available; use device cpu or auto")
    return device


def batch_scene_names(sampler, scene_name, batch_size):
    """batch index -> the names of its scenes, from the order ``sampler`` gives this epoch (the samplers
    here are deterministic per epoch), for error messages that name a batch's scenes."""
    order = list(sampler)
    return lambda i: [scene_name(j) for j in order[i * batch_size:(i + 1) * batch_size]]


class AverageMeter:
    """Running mean of a scalar (loss, time per step)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = self.sum = self.avg = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / max(self.count, 1)


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h:d}:{m:02d}:{s:02d}'


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start
