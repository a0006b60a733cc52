"""One logger per stage: timestamped lines on the terminal and in a log file of the run's folder.

The log file gets clean lines only (no progress-bar frames): progress bars go to the terminal's stderr
(``util/progress.py``), and each run writes its own ``<folder>/<stage>-<date>_<time>.log``.
"""
import logging
import os
import sys
import time

_FORMAT = logging.Formatter('[%(asctime)s] %(message)s', datefmt='%Y-%m-%d %H:%M:%S')


class _Console(logging.Handler):
    """Writes through tqdm, so a line printed while a progress bar runs does not tear the bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # logging must never raise
            self.handleError(record)


def get_logger(name='3dss-vlg', log_file=None, rank=0):
    """Logger printing '[time] message'; only rank 0 logs at INFO level in distributed runs."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    if not any(isinstance(h, _Console) for h in logger.handlers):
        handler = _Console()
        handler.setFormatter(_FORMAT)
        logger.addHandler(handler)
    if log_file and rank == 0 and not any(isinstance(h, logging.FileHandler)
                                          and h.baseFilename == os.path.abspath(log_file)
                                          for h in logger.handlers):
        for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)  # a new run of the stage in this process: its own file
            old.close()
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(_FORMAT)
        logger.addHandler(handler)
    return logger


def stage_logger(stage, folder, rank=0):
    """The logger of one run of ``stage``, writing ``<folder>/<stage>-<date>_<time>.log`` (rank 0)."""
    return get_logger(stage, os.path.join(folder, f"{stage}-{time.strftime('%Y%m%d_%H%M%S')}.log"), rank)
