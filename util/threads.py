"""How many CPU threads a stage's torch process uses, chosen once at start and logged.

PyTorch's default (one intra-op thread per core) is right for one process alone on a machine. It is wrong
as soon as several torch processes share the cores (torchrun ranks, a second experiment, a test run): their
OpenMP threads then fight for the same cores and every one of them slows down many times over. So:
``threads`` (config) wins, then ``OMP_NUM_THREADS``; otherwise the cores this process may run on are
divided among the local ranks, minus the cores other processes already keep busy (the 1-minute load
average, measured before this process did any work).
"""
import os

import torch


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cores():
    """Cores other processes kept busy over the last minute (0 where the OS does not say)."""
    try:
        return int(round(os.getloadavg()[0]))
    except (AttributeError, OSError):
        return 0


def choose_threads(requested=0, local_world_size=1):
    """-> (threads, reason)."""
    if requested:
        return int(requested), 'the config key threads'
    env = os.environ.get('OMP_NUM_THREADS', '')
    if env.isdigit() and int(env) > 0:
        return int(env), 'OMP_NUM_THREADS'
    cores, busy = available_cores(), busy_cores()
    free = max(1, cores - busy)
    n = max(1, free // max(1, int(local_world_size)))
    return n, (f'{cores} cores, {busy} kept busy by other processes, {local_world_size} process(es) of this run')


def configure_threads(requested=0, local_world_size=1):
    """Set torch's intra-op threads; returns a line for the run's log."""
    n, why = choose_threads(requested, local_world_size)
    torch.set_num_threads(n)
    return f'{n} CPU thread(s) per process ({why})'
