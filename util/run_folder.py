"""Output folders owned by one run at a time: a lock, leftovers of killed writes, fresh runs vs. resume.

Every stage that writes into a folder (PLG's pseudo labels, ESS and ESG experiment folders, ESS
inference's embeddings, evaluation results) opens it with ``RunFolder``:

    with RunFolder(save_path, 'ESG training') as folder:
        resume = folder.check_fresh_or_resume(resume=resume, overwrite=overwrite, outputs=CHECKPOINTS)
        ...

- **Lock.** ``<folder>/.lock`` is held with ``fcntl.flock`` for the life of the run and names its holder
  (pid, host, start time, command). A second run into the same folder fails at once with the holder's
  name. The kernel drops the lock when its process dies, however it dies, so the lock of a killed run is
  taken over by the next one (which says so). On a file system without ``flock`` (some cluster file
  systems) the lock file is created exclusively instead and a stale one is recognised by its pid (same
  host, process gone or another process under the same pid).
- **Leftovers.** Temporary files of interrupted atomic writes (``.<name>.<random>.tmp``, as big as a
  checkpoint) are removed once the lock is held, when no other process can be writing them.
- **What ran.** ``record`` writes ``<stage>_config.yaml`` (the resolved config: includes, defaults and
  overrides applied; ``--config`` on it reruns the same settings) and ``<stage>_run.json`` (command line,
  code version, host, device, threads, sparse-conv settings) beside the outputs.
- **Fresh run or resume.** A run without ``resume`` into a folder that already holds another run's
  outputs is refused (it would replace them after its first epoch), offering the ways on that work there:
  ``resume <folder>/last.pth`` (when it exists), ``resume auto`` or ``overwrite True`` (which deletes them
  first). ``resume auto`` continues from the folder's newest loadable checkpoint, or starts fresh.
"""
import errno
import json
import os
import shutil
import socket
import sys
import time

from util.io import TMP_NAME, atomic_write_text

LOCK_NAME = '.lock'


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


class ExistingResultsError(RuntimeError):
    """A fresh run would replace the results of an earlier run."""


def _process_start_time(pid):
    """The kernel's start time of ``pid`` (clock ticks since boot) or None: tells a reused pid apart."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return int(f.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid, start_time=None):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return start_time is None or _process_start_time(pid) in (None, start_time)


def _describe(holder):
    if not holder:
        return 'an unknown process (the lock file holds no readable owner)'
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('time', 0)))
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {started}"
            + (f" ({holder['command']})" if holder.get('command') else ''))


class RunFolder:
    """An output folder locked by this process (see the module docstring). ``enabled=False`` (ranks > 0
    of a distributed run, which never write) makes every method a no-op."""

    def __init__(self, path, stage, enabled=True, log=None):
        if not path:
            raise ValueError(f'{stage}: the output folder is empty; give a folder to write into')
        self.path, self.stage, self.enabled = os.fspath(path), stage, enabled
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self._fd = None
        self._exclusive_file = False

    # ------------------------------------------------------------------ lock
    def _me(self):
        return {'pid': os.getpid(), 'host': socket.gethostname(), 'time': time.time(),
                'start_ticks': _process_start_time(os.getpid()), 'stage': self.stage,
                'command': ' '.join(sys.argv)[:300]}

    def _read_holder(self):
        try:
            with open(os.path.join(self.path, LOCK_NAME)) as f:
                return json.loads(f.read() or 'null')
        except (OSError, ValueError):
            return None

    def acquire(self):
        if not self.enabled or self._fd is not None:
            return self
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectoryError(errno.ENOTDIR, f"{self.stage}: output folder '{self.path}' is a file, expected a "
                                                    f"folder")
        os.makedirs(self.path, exist_ok=True)
        lock_path = os.path.join(self.path, LOCK_NAME)
        previous = self._read_holder()
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLockedError(
                f"{self.stage}: '{self.path}' is in use by {_describe(self._read_holder())}; two runs writing one "
                f"folder would mix their files. Wait for that run to end, or write into another folder") from None
        except (ImportError, OSError) as err:  # no flock here (e.g. some network file systems)
            os.close(fd)
            if isinstance(err, OSError) and err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return self._acquire_exclusive_file(lock_path)
        self._fd = fd
        if previous and previous.get('pid') != os.getpid():
            # we got the lock, so its last holder is gone without releasing it: killed, or the machine went down
            self.log(f"{self.stage}: taking over the lock of '{self.path}' left by {_describe(previous)}, which "
                     f"ended without releasing it (killed?)")
        self._write_holder(fd)
        self._remove_leftovers()
        return self

    def _write_holder(self, fd):
        data = json.dumps(self._me()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def _acquire_exclusive_file(self, lock_path):
        for _ in range(2):
            try:
                fd = os.open(lock_path + '.pid', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(lock_path + '.pid') as f:
                        holder = json.load(f)
                except (OSError, ValueError):
                    holder = None
                if (holder and holder.get('host') == socket.gethostname()
                        and not _pid_alive(int(holder.get('pid', -1)), holder.get('start_ticks'))):
                    self.log(f"{self.stage}: taking over the stale lock of '{self.path}' left by {_describe(holder)}")
                    os.remove(lock_path + '.pid')
                    continue
                raise FolderLockedError(
                    f"{self.stage}: '{self.path}' is in use by {_describe(holder)} (lock file '{lock_path}.pid'); if "
                    f"that process is gone, delete the file") from None
            self._write_holder(fd)
            os.close(fd)
            self._exclusive_file = True
            self._remove_leftovers()
            return self
        raise FolderLockedError(f"{self.stage}: could not take the lock of '{self.path}'")

    def release(self):
        if self._fd is not None:
            # the file stays (removing it would let a waiting process lock an unlinked inode); it is unlocked
            # and emptied, so the next run does not report a killed holder
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        if self._exclusive_file:
            with_pid = os.path.join(self.path, LOCK_NAME + '.pid')
            if os.path.exists(with_pid):
                os.remove(with_pid)
            self._exclusive_file = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    # ------------------------------------------------------------------ leftovers and fresh runs
    def _remove_leftovers(self):
        removed = 0
        for name in os.listdir(self.path):
            full = os.path.join(self.path, name)
            if TMP_NAME.match(name) and os.path.isfile(full):
                removed += os.path.getsize(full)
                os.remove(full)
                self.log(f"{self.stage}: removed '{full}', the temporary file of a write that was interrupted")
        return removed

    def start(self, stage, config, schema, device, rank=0, local_world_size=1, **facts):
        """Begin a run of ``stage`` in this folder: its logger (``<stage>-<date>_<time>.log``), the CPU threads
        (util/threads.py, the config's ``threads``), and the record of what runs (``record``: ``config``, the
        resolved config, is written as it is). Returns the logger."""
        from util.logger import stage_logger
        from util.threads import configure_threads
        logger = stage_logger(stage, self.path, rank)
        threads = configure_threads(config.get('threads', 0), local_world_size)
        logger.info(f"{schema.stage}\nconfig {config.config_file} (resolved in {stage}_config.yaml):\n{config}")
        logger.info(f'device {device}; {threads}' + ''.join(f'; {k} {v}' for k, v in facts.items()))
        self.record(stage, config, schema, device=str(device), threads=threads, **facts)
        return logger

    def record(self, stage, config, schema, **facts):
        """Write ``<stage>_config.yaml`` and ``<stage>_run.json`` (see the module docstring)."""
        if not self.enabled:
            return
        from util.config import dump_config
        from util.provenance import code_version
        command = ' '.join([os.path.basename(sys.executable)] + sys.argv)
        started = time.strftime('%Y-%m-%d %H:%M:%S')
        header = f'{schema.stage}\nresolved config of the run started {started}:\n  {command}'
        atomic_write_text(os.path.join(self.path, f'{stage}_config.yaml'), dump_config(config, schema, header))
        info = {'stage': schema.stage, 'command': command, 'cwd': os.getcwd(), 'started': started,
                'host': socket.gethostname(), 'pid': os.getpid(), 'code': code_version(), **facts}
        atomic_write_text(os.path.join(self.path, f'{stage}_run.json'), json.dumps(info, indent=2, default=str) + '\n')

    def check_fresh_or_resume(self, *, resume, overwrite, outputs):
        """Where this run starts: the checkpoint to resume from, or '' for a fresh run.

        ``resume auto``: the newest checkpoint of this folder that loads (``last.pth`` or ``best.pth``), or a fresh
        run when there is none (what a run killed before its first checkpoint left, e.g. its TensorBoard files, is
        deleted then). A fresh run (no ``resume``) into a folder holding any of ``outputs`` (file or folder names of
        this stage) is refused unless ``overwrite``, which deletes them; the refusal offers only what works here.
        A resume must continue this folder's own run."""
        if not self.enabled:  # a rank that does not write: the same answer as the writing rank, without writing
            return (self.newest_checkpoint() or '') if resume == 'auto' else resume
        found = [name for name in outputs if os.path.exists(os.path.join(self.path, name))]
        if resume == 'auto':
            newest = self.newest_checkpoint()
            if newest:
                self.log(f"{self.stage}: resume auto: continuing from '{newest}'")
                return newest
            if found:
                self.log(f"{self.stage}: resume auto: no checkpoint in '{self.path}', so a fresh run; deleting what "
                         f"a run that ended before its first checkpoint left: {', '.join(found)}")
                self._delete(found)
            return ''
        if resume:
            last = os.path.join(self.path, 'last.pth')
            if (os.path.exists(last) and os.path.realpath(resume) != os.path.realpath(last) and not overwrite):
                raise ExistingResultsError(
                    f"{self.stage}: '{self.path}' holds its own run (last.pth), but resume points to '{resume}'; "
                    f"continuing another run here would replace it. Resume '{last}', write into another folder, "
                    f"or give overwrite True to replace this folder's run")
            return resume
        if not found:
            return ''
        if not overwrite:
            checkpoints = [name for name in ('last.pth', 'best.pth') if name in found]
            if checkpoints:
                ways = (f"To continue that run: resume {os.path.join(self.path, checkpoints[0])} (or resume auto); "
                        f"to start over and delete them: overwrite True")
            else:
                ways = ("It holds no checkpoint to continue from (that run ended before its first one); to start over "
                        "and delete them: overwrite True (or resume auto)")
            raise ExistingResultsError(
                f"{self.stage}: '{self.path}' already holds the results of an earlier run ({', '.join(found)}); a "
                f"fresh run would replace them. {ways}; or choose another folder")
        self._delete(found)
        self.log(f"{self.stage}: overwrite True: deleted the earlier run's {', '.join(found)} in '{self.path}'")
        return ''

    def newest_checkpoint(self):
        """The checkpoint of this folder (``last.pth``, ``best.pth``) with the most finished epochs among those that
        load, or None."""
        from util.io import safe_torch_load
        best, best_epoch = None, -1
        for name in ('last.pth', 'best.pth'):
            path = os.path.join(self.path, name)
            if not os.path.isfile(path):
                continue
            try:
                epoch = int(safe_torch_load(path, 'checkpoint', map_location='cpu').get('epoch', 0))
            except Exception as err:  # a damaged file is skipped, saying why
                self.log(f"{self.stage}: resume auto: skipping '{path}', which does not load ({err})")
                continue
            if epoch > best_epoch:
                best, best_epoch = path, epoch
        return best

    def _delete(self, names):
        for name in names:
            full = os.path.join(self.path, name)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
