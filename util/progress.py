"""Progress of long loops: a bar on a terminal, log lines with an ETA elsewhere (logs, CI, nohup).

    for item in progress(loader, 'ESS val', log=logger.info):
        ...

On a terminal (stderr is a TTY) this is a tqdm bar on stderr, which never reaches a log file. Otherwise
``log`` receives a line such as 'ESS val: 120/312 (38 %), 2.1 it/s, ETA 0:01:31' every ``interval``
seconds and at the end, so a long step is never silent.
"""
import sys
import time

from util.misc import format_eta


def progress(iterable, desc, total=None, log=None, interval=30.0, unit='it', leave=False):
    if total is None and hasattr(iterable, '__len__'):
        total = len(iterable)
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True,
                        file=sys.stderr)
        return
    start = last = time.perf_counter()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if log is not None and (now - last >= interval or (total and done == total)):
            last = now
            rate = done / max(now - start, 1e-9)
            of = f'/{total} ({100 * done / total:.0f} %)' if total else ''
            eta = f', ETA {format_eta((total - done) / rate)}' if total else ''
            log(f'{desc}: {done}{of}, {rate:.2f} {unit}/s{eta}')
