"""One logger for every stage: timestamped lines to stdout and, optionally, to a file."""
import logging
import os
import sys


def get_logger(name='3dss-vlg', log_file=None, rank=0):
    """Logger printing '[time] message'; only rank 0 logs at INFO level in distributed runs."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter('[%(asctime)s] %(message)s', datefmt='%Y-%m-%d %H:%M:%S')
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    if log_file and rank == 0 and not any(isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(log_file)
                                          for h in logger.handlers):
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger
