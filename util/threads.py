"""How many CPU threads a stage's torch process uses, chosen once at start and logged.

PyTorch's default (one intra-op thread per core) is right for one process alone on a machine. It is wrong
as soon as several torch processes share the cores (torchrun ranks, a second experiment, a test run): their
OpenMP threads then fight for the same cores and every one of them slows down many times over. So:
``threads`` (config) wins, then ``OMP_NUM_THREADS``; otherwise the cores this process may run on are
divided among the local ranks, minus the cores other processes keep busy right now (the CPU time the
machine spent outside this process over a short sample of /proc/stat). The load average is no measure
for this: it lags by a minute, so a stage started right after another (the demo, a driver script) would
count its finished predecessor as a busy core.
"""
import os
import time

import torch


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cores(sample_s=0.3):
    """Cores other processes keep busy now: the busy share of all cores over ``sample_s`` seconds of
    /proc/stat, minus this process's own CPU time, rounded; where /proc/stat is missing (not Linux) the
    1-minute load average; 0 where the OS says neither."""
    try:
        before, own_before = _cpu_jiffies(), _own_cpu_s()
        time.sleep(sample_s)
        after, own_after = _cpu_jiffies(), _own_cpu_s()
    except OSError:
        try:
            return int(round(os.getloadavg()[0]))
        except (AttributeError, OSError):
            return 0
    total = after[0] - before[0]
    if total <= 0:
        return 0
    hz = os.sysconf('SC_CLK_TCK')
    busy = (after[1] - before[1]) - (own_after - own_before) * hz
    return max(0, int(round(busy / total * (os.cpu_count() or 1))))  # /proc/stat sums every core of the machine


def _cpu_jiffies():
    """(all jiffies, busy jiffies) of the machine's cores so far (the first line of /proc/stat)."""
    with open('/proc/stat') as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), sum(fields[:8]) - idle


def _own_cpu_s():
    t = os.times()
    return t.user + t.system


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
