"""The sparse convolution's settings (config keys, validation, log line) and the dispatcher's lazy imports."""
import os
import subprocess
import sys

import pytest

from models.sparse import dispatch, settings
from pipeline.keys import network_keys
from pipeline.stage import sparse_settings
from util.config import ConfigError, Schema, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_and_the_log_line():
    with settings.using():
        s = settings.configure()  # the defaults
        assert (s.conv, s.row_order, s.autotune) == ('reference', 'mask', False)
        assert s is settings.current()
        assert str(s) == 'sparse_conv reference (row order mask, autotune off)'


@pytest.mark.parametrize('change, message', [
    (dict(conv='torch'), "sparse_conv must be one of reference, triton, spconv, found 'torch'"),
    (dict(row_order='sorted'), "sparse_conv_row_order must be one of mask, memory, found 'sorted'"),
    (dict(autotune=1), 'sparse_conv_autotune must be one of False, True, found 1'),
])
def test_bad_values_name_the_key_and_the_allowed_values(change, message):
    before = settings.current()
    with pytest.raises(ValueError, match=message):
        settings.configure(**change)
    assert settings.current() is before


def test_using_restores_the_settings_after_an_error():
    before = settings.current()
    with pytest.raises(RuntimeError):
        with settings.using(row_order='memory') as inside:
            assert settings.current() is inside and inside.row_order == 'memory'
            raise RuntimeError
    assert settings.current() is before


def test_config_keys_are_declared_checked_at_load_and_applied(tmp_path):
    import evaluate
    import train_esg
    keys = {'sparse_engine', 'sparse_conv', 'sparse_conv_row_order', 'sparse_conv_autotune'}
    assert keys <= set(train_esg.SCHEMA.by_name) and keys <= set(evaluate.SCHEMA.by_name)
    schema = Schema('network keys', network_keys())
    path = tmp_path / 'net.yaml'
    path.write_text('NETWORK:\n  sparse_conv: triton\n  sparse_conv_row_order: memory\n  sparse_conv_autotune: True\n')
    for key, value, message in (('sparse_conv', 'torch', "'sparse_conv' must be one of reference, triton, spconv"),
                                ('sparse_engine', 'torch', "'sparse_engine' must be one of builtin, minkowski"),
                                ('sparse_conv_row_order', 'sorted',
                                 "'sparse_conv_row_order' must be one of mask, memory"),
                                ('sparse_conv_autotune', 'maybe', "'sparse_conv_autotune' must be a")):
        with pytest.raises(ConfigError, match=message):
            load_config(['--config', str(path), key, value], schema)
    with settings.using():
        assert str(sparse_settings(load_config(['--config', str(path)], schema))) == \
            'sparse_conv triton (row order memory, autotune on)'


def test_unknown_implementation_is_an_error():
    with pytest.raises(ValueError, match="unknown sparse_conv implementation 'torch'.*reference"):
        dispatch.implementation('torch')


def test_triton_is_imported_only_when_selected_and_its_plans_need_no_triton():
    """In a process where ``import triton`` fails: the reference path never imports the Triton subpackage; the
    subpackage and its planning code import and register; only a Triton convolution needs Triton itself. The
    environment variables of earlier versions are not read."""
    code = '\n'.join([
        "import sys; sys.modules['triton'] = None",
        'import torch, models.sparse as ME',
        'from models.sparse import dispatch, settings',
        "assert settings.current().conv == 'reference'",
        'x = ME.SparseTensor(torch.rand(6, 2), torch.tensor([[0, i, 0, 0] for i in range(6)]).int())',
        'conv = ME.Convolution(2, 3, kernel_size=3)',
        'conv(x)',
        "assert 'models.sparse.triton' not in sys.modules",
        'from models.sparse.triton import plan',
        "assert dispatch.implementation('triton').prepare is plan.prepare",
        "settings.configure(conv='triton')",
        'try:',
        '    conv(x)',
        'except ImportError as e:',
        "    print('needs triton:', e)",
    ])
    env = dict(os.environ, PYTHONPATH=ROOT, SPARSE_CONV_IMPL='triton', SPARSE_CONV_ROW_ORDER='memory')
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith('needs triton:')
