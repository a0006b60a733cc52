"""How the command-line entry points end: a user's mistake as one line, a bug with its traceback.

Every stage script ends with ``run_cli(main)``. A mistake the user can fix (a config key, a refused folder, a
missing or unreadable input, a missing optional package) is an exception of one of the kinds below, raised
with a message that names the file or key and the fix; it is printed as one line, ``error: <message>``, and
the process exits with status 2 (as argparse does for a bad command line). Anything else is a bug and keeps
its traceback (status 1). ``VLG_TRACEBACK=1`` shows the traceback of user errors too, for developers.
"""
import os
import sys

from util.config import ConfigError

TRACEBACK_VARIABLE = 'VLG_TRACEBACK'


def user_error_types():
    """The exception types that carry a message meant for the user (see the module docstring): the project's
    checks raise ValueError and its kinds (ConfigError, dataset.formats.FormatError), the folder refusals of
    util/run_folder.py, unreadable files (util/io.py), OSErrors about files, ImportError for a missing optional
    package, FloatingPointError for a non-finite loss."""
    from util.io import UnreadableFileError
    from util.run_folder import ExistingResultsError, FolderLockedError
    return (ConfigError, ValueError, ExistingResultsError, FolderLockedError, UnreadableFileError, FileNotFoundError,
            NotADirectoryError, IsADirectoryError, PermissionError, ImportError, FloatingPointError)


def run_cli(main, argv=None):
    """``main(argv)`` with user errors as one line on stderr and exit status 2 (see the module docstring)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    except user_error_types() as err:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f'error: {message(err)}', file=sys.stderr)
        sys.exit(2)


def message(err):
    """The message of ``err`` (an OSError's file name kept), or its type where it has none."""
    text = str(err).strip()
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.strerror or text}: '{err.filename}'"
    return text or type(err).__name__
