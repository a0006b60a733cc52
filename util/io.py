"""File I/O shared by every stage: atomic writers and safe, explaining readers.

Writers: outputs go to a temporary name in the target folder (``.<name>.<random>.tmp``), are flushed to
disk and renamed into place, so a crash, a kill or a full disk never leaves a half-written file that a
later run would take for a finished one (``util/run_folder.py`` removes the temporary files that a
killed process left behind). A full disk is reported as "no space left on device while writing <file>".

Readers: data and checkpoints are read with ``torch.load(weights_only=True)``: OpenScene's files are
pickles of numpy arrays, and only the numpy globals those need are allow-listed, so a downloaded file
cannot run code. A file that cannot be read is explained in words: missing, a directory, empty,
truncated, not a torch / numpy file at all, or refused because loading it would run code.
"""
import contextlib
import errno
import os
import pickle
import re
import tempfile

import numpy as np
import torch

# the name a temporary file of ``atomic_open`` / ``atomic_path`` gets: .<target name>.<random>.tmp
TMP_NAME = re.compile(r'^\..+\.[A-Za-z0-9_]{6,}\.tmp$')


class UnreadableFileError(RuntimeError):
    """A file exists but does not hold what the reader expects (empty, truncated, foreign, unsafe)."""


# ----------------------------------------------------------------------------- writing
def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_error(err, path):
    """A clearer error for a failed write (full disk, quota), or ``None`` to re-raise ``err`` as it is."""
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            what = 'no space left on device' if e.errno == errno.ENOSPC else 'disk quota exceeded'
            folder = os.path.dirname(os.path.abspath(path))
            try:
                st = os.statvfs(folder)
                free = f'; {st.f_bavail * st.f_frsize / 2 ** 20:.1f} MiB free in {folder!r}'
            except OSError:
                free = ''
            return OSError(e.errno, f"{what} while writing '{path}'{free}: free some space or write elsewhere; "
                                    f"the previous version of the file, if any, is unchanged")
    return None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    For writers that only take a path; ``atomic_open`` is better where a file object will do (its data
    are flushed to disk before the rename).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"cannot write '{path}': it is a directory, expected a file path")
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private (0600); give it the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        clearer = _write_error(err, path)
        if clearer is not None:
            raise clearer from err
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode='wb'):
    """Yield a file object that becomes ``path`` when the block succeeds (flushed and fsync'ed first)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_torch_save(obj, path):
    # through a Python file object, so a full disk raises OSError(ENOSPC) (torch's own writer only says
    # 'unexpected pos')
    with atomic_open(path) as f:
        torch.save(obj, f)


def atomic_np_save(path, array):
    """``np.save`` to exactly ``path`` (no '.npy' appended), atomically."""
    with atomic_open(path) as f:
        np.save(f, array)


def atomic_write_text(path, text):
    with atomic_open(path, 'w') as f:
        f.write(text)


def atomic_copy(src, dst):
    """Copy ``src`` to ``dst`` atomically (``dst`` is either the old file or the whole copy)."""
    with open(src, 'rb') as fin, atomic_open(dst) as fout:
        while True:
            block = fin.read(1 << 22)
            if not block:
                break
            fout.write(block)


# ----------------------------------------------------------------------------- reading
_ZIP_MAGIC = b'PK\x03\x04'
_NPY_MAGIC = b'\x93NUMPY'


def _check_readable(path, what):
    """Missing, a directory or empty: say so before a parser gives a cryptic error. Returns the first bytes."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"{what} '{path}' is a directory, expected a file")
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"{what} '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise UnreadableFileError(f"{what} '{path}' is empty (0 bytes): it was never written completely; "
                                  f"recreate it")
    with open(path, 'rb') as f:
        return f.read(8)


def _zip_is_whole(path):
    """Whether a zip archive opens and every member's checksum holds (a cut file loses its directory,
    which sits at the end; torch then reports only 'Invalid argument')."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _describe_torch_failure(err, head, path):
    """Why ``torch.load(weights_only=True)`` refused a file, in words (torch's own text advises
    ``weights_only=False``, which would run the file's code: never repeat that)."""
    text = str(err)
    unsafe = re.search(r'Unsupported global: GLOBAL ([\w.]+)', text, flags=re.IGNORECASE)
    if unsafe:
        return (f"refused: loading it would call '{unsafe.group(1)}', i.e. run code stored in the file; only "
                f"tensors, numpy arrays and plain Python containers are accepted. Re-save the data as tensors / "
                f"arrays (e.g. torch.save({{'feat': tensor}})) from a source you trust")
    if head.startswith(_ZIP_MAGIC):
        if ('central directory' in text or 'failed reading' in text or isinstance(err, EOFError)
                or not _zip_is_whole(path)):
            return 'truncated or corrupt (incomplete zip archive): the write was interrupted or the copy is partial'
        return f'a zip archive that is not a readable torch file ({type(err).__name__}: {text.splitlines()[0]})'
    if head.startswith(_NPY_MAGIC):
        return 'a numpy .npy file, not a torch file: read it with numpy or re-save it with torch.save'
    if head[:1] == b'\x80':  # a pickle stream (torch's legacy format, or a plain Python pickle)
        if isinstance(err, EOFError) or 'ran out of input' in text.lower() or 'unexpected eof' in text.lower():
            return 'truncated (the pickle stream ends early): the write was interrupted or the copy is partial'
        return ('a Python pickle that is not a torch file, or one holding objects the safe loader does not '
                'accept; re-save its arrays with torch.save')
    return f'not a torch file (unrecognised content, first bytes {head[:8]!r})'


def refused_torch_file(err, path, what):
    """An ``UnreadableFileError`` in our words when ``err`` is torch refusing or failing to read the local file
    ``path`` inside another library's loader (open_clip loads its checkpoints itself), else None: torch's own
    text would advise ``weights_only=False``."""
    path = os.fspath(path)
    if not os.path.isfile(path) or not isinstance(err, (pickle.UnpicklingError, RuntimeError, EOFError, OSError)):
        return None
    if 'weights_only' not in str(err) and not isinstance(err, (pickle.UnpicklingError, EOFError)):
        return None
    with open(path, 'rb') as f:
        head = f.read(8)
    return UnreadableFileError(f"cannot read {what} '{path}': {_describe_torch_failure(err, head, path)}")


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
    # an empty array pickles its (empty) data as bytes(): a constructor, no code of the file's own
    objects.append(bytes)
    return objects


_SAFE_GLOBALS = None


def safe_torch_load(path, what='file', map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` and numpy arrays allowed; errors that say what is wrong.

    ``what`` names the kind of file in error messages ('3D scene', 'fused features', 'checkpoint').
    """
    global _SAFE_GLOBALS
    path = os.fspath(path)
    head = _check_readable(path, what)
    if _SAFE_GLOBALS is None:
        _SAFE_GLOBALS = _numpy_safe_globals()
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / unsafe / foreign files
        raise UnreadableFileError(f"cannot read {what} '{path}': {_describe_torch_failure(err, head, path)}") from None


def safe_np_load(path, what='file', hint=''):
    """``np.load(allow_pickle=False)`` of a ``.npy`` file with errors that say what is wrong."""
    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.isdir(path):
        raise FileNotFoundError(errno.ENOENT, f"{what} '{path}' does not exist" + (f': {hint}' if hint else ''))
    head = _check_readable(path, what)
    if not head.startswith(_NPY_MAGIC):
        kind = ('a zip archive (.npz or a torch file), not a .npy file' if head.startswith(_ZIP_MAGIC) else
                'a Python pickle, refused: loading it could run code' if head[:1] == b'\x80' else
                f'not a numpy .npy file (first bytes {head[:8]!r})')
        raise UnreadableFileError(f"cannot read {what} '{path}': {kind}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        text = str(err)
        if 'Failed to read all data' in text or 'not fully written' in text:
            reason = 'truncated (fewer bytes than its header announces): the write was interrupted'
        elif 'EOF' in text or 'reading array header' in text:
            reason = 'truncated (the header is incomplete)'
        elif 'pickled' in text or 'Object arrays' in text:
            reason = 'it holds Python objects (a pickled array), refused: loading it could run code'
        else:
            reason = text.splitlines()[0]
        raise UnreadableFileError(f"cannot read {what} '{path}': {reason}") from None
    except EOFError:
        raise UnreadableFileError(f"cannot read {what} '{path}': truncated (the header is incomplete)") from None
