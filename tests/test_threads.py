"""The CPU thread count of a stage: explicit settings win; otherwise the cores that are free right now."""
import subprocess
import sys
import threading
import time

import pytest

from util import threads


def test_explicit_settings_win(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert threads.choose_threads(5) == (5, 'the config key threads')
    assert threads.choose_threads(0) == (3, 'OMP_NUM_THREADS')


def test_free_cores_are_divided_among_local_ranks(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(threads, 'available_cores', lambda: 8)
    monkeypatch.setattr(threads, 'busy_cores', lambda: 2)
    assert threads.choose_threads(0, local_world_size=3)[0] == 2   # (8 - 2) // 3
    monkeypatch.setattr(threads, 'busy_cores', lambda: 9)
    assert threads.choose_threads(0)[0] == 1                      # never below one thread


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='/proc/stat is Linux')
def test_a_spinning_process_counts_as_busy_and_this_process_does_not():
    def spin(seconds):
        end = time.time() + seconds
        while time.time() < end:
            pass

    # one core kept busy by this very process (a thread; the sampling sleep releases the GIL)
    spinner = threading.Thread(target=spin, args=(1.0,))
    spinner.start()
    own = threads.busy_cores(sample_s=0.5)
    spinner.join()
    # one core kept busy by another process
    other = subprocess.Popen([sys.executable, '-c', 'import time\nt = time.time()\nwhile time.time() - t < 5: pass'])
    try:
        time.sleep(0.5)
        busy = threads.busy_cores(sample_s=0.5)
    finally:
        other.kill()
        other.wait()
    assert busy >= 1
    assert own < busy
