"""The tree stays clean under ruff (pyflakes, pycodestyle at 120 columns, sorted imports; pyproject.toml)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing():
    ruff = shutil.which('ruff', path=os.path.dirname(sys.executable)) or shutil.which('ruff')
    if ruff is None:
        pytest.skip('ruff is not installed: pip install -r requirements-test.txt')
    out = subprocess.run([ruff, 'check', '--no-cache', '.'], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
