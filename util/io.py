"""File I/O shared by every stage: atomic writers and a safe loader for downloaded files.

Outputs go to a temporary name in the target folder and are renamed into place, so a crash or a
Ctrl-C never leaves a half-written file that a later run would take for a finished one.
Data and checkpoints are read with ``torch.load(weights_only=True)``: OpenScene's files are pickles
of numpy arrays, and only the numpy globals those need are allow-listed, so a downloaded file
cannot run code.
"""
import contextlib
import os
import tempfile

import numpy as np
import torch


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private (0600); give it the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_np_save(path, array):
    """``np.save`` to exactly ``path`` (no '.npy' appended), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            np.save(f, array)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)


def _numpy_safe_globals():
    """The numpy objects a pickled ndarray refers to, under numpy 1.x and 2.x module names."""
    import numpy.dtypes  # noqa: F401  (registers dtype classes such as Float32DType)
    from numpy._core.multiarray import _reconstruct, scalar
    # files written under numpy 1.x name the same functions under 'numpy.core'
    objects = [_reconstruct, (_reconstruct, 'numpy.core.multiarray._reconstruct'),
               scalar, (scalar, 'numpy.core.multiarray.scalar'), np.ndarray, np.dtype]
    for name in dir(np.dtypes):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            objects.append(cls)
    # scalars appear when a file stores e.g. a numpy int as metadata
    objects += [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]
    return objects


_SAFE_GLOBALS = None


def safe_torch_load(path, what='file', map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` and numpy arrays allowed; clear errors.

    ``what`` names the kind of file in error messages ('3D scene', 'fused features', 'checkpoint').
    """
    global _SAFE_GLOBALS
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    if _SAFE_GLOBALS is None:
        _SAFE_GLOBALS = _numpy_safe_globals()
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / unsafe pickles
        first_line = str(err).strip().splitlines()
        reason = next((l for l in first_line if 'Unsupported global' in l), first_line[0] if first_line else '')
        raise RuntimeError(f"cannot read {what} '{path}': {type(err).__name__}: {reason.strip()}") from err
