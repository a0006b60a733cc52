"""A researcher's first hour: each mistake gets one line that leads to the fix, and the ways out offered work.

Every stage script ends in ``util.cli.run_cli``: a user error is one line ``error: ...`` on stderr and exit
status 2, without a traceback (``VLG_TRACEBACK=1`` shows it). Resuming offers only what exists (``resume
auto`` picks the newest checkpoint or starts fresh), refuses a changed schedule, and one experiment's stage
never reads or writes another experiment's files.
"""
import os
import subprocess
import sys

import pytest
import torch
from helpers import make_tiny_dataset, train_argv

from util.config import ConfigError
from util.run_folder import ExistingResultsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_stage(args, cwd=ROOT, env=None, code=None):
    command = [sys.executable, '-c', code] if code else [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


def assert_one_line(run, *needles):
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr[-2000:]
    assert 'Traceback' not in run.stderr and len(lines) == 1 and lines[0].startswith('error: '), run.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('first_hour'))
    return root, make_tiny_dataset(root)


def test_config_mistakes_are_one_line_and_the_traceback_is_behind_a_variable():
    bad_key = ['train_esg.py', '--config', 'config/demo/openseg_train.yaml', 'epoch', '3']
    assert_one_line(run_stage(bad_key), "unknown config key 'epoch'", "did you mean 'epochs'")
    shown = run_stage(bad_key, env={'VLG_TRACEBACK': '1'})
    assert shown.returncode == 1 and 'Traceback' in shown.stderr and 'ConfigError' in shown.stderr


def test_a_relative_path_says_where_it_was_looked_for(tmp_path):
    """Run from another folder, a relative input is reported with the absolute path it was looked for at."""
    line = assert_one_line(run_stage([os.path.join(ROOT, 'evaluate.py'), '--config',
                                      os.path.join(ROOT, 'config/demo/openseg_eval.yaml')], cwd=str(tmp_path)))
    assert "folder 'data/demo_3d'" in line and f"'{tmp_path}/data/demo_3d'" in line and 'current folder' in line


def test_missing_optional_package_is_one_line(tiny, tmp_path):
    _, data = tiny
    code = '\n'.join([
        "import sys; sys.modules['spconv'] = None",
        'from util.cli import run_cli',
        'import evaluate',
        f"run_cli(evaluate.main, ['--config', 'config/demo/openseg_eval.yaml', *{data!r}, "
        f"'model_path', {__file__!r}, 'sparse_conv', 'spconv', 'save_folder', {str(tmp_path / 'out')!r}])",
    ])
    assert_one_line(run_stage([], code=code), 'sparse_conv spconv needs the spconv package', 'spconv-cu126')


def test_an_unreadable_checkpoint_is_one_line(tiny, tmp_path):
    _, data = tiny
    bad = tmp_path / 'best.pth'
    bad.write_bytes(b'not a checkpoint')
    line = assert_one_line(run_stage(['evaluate.py', '--config', 'config/demo/openseg_eval.yaml', *data,
                                      'model_path', str(bad), 'save_folder', str(tmp_path / 'out')]))
    assert str(bad) in line


@pytest.mark.slow
def test_a_refused_folder_offers_only_what_exists_and_resume_auto_works(tiny):
    """A run killed before its first checkpoint leaves only its TensorBoard files: the refusal offers no
    last.pth, and ``resume auto`` starts fresh; with checkpoints, ``resume auto`` continues the newest."""
    import train_esg
    root, data = tiny
    save = os.path.join(root, 'killed')
    os.makedirs(os.path.join(save, 'tensorboard'))
    with pytest.raises(ExistingResultsError) as refused:
        train_esg.main(train_argv(root, data, save_path=save, tensorboard=True))
    message = str(refused.value)
    assert 'resume ' + os.path.join(save, 'last.pth') not in message and 'no checkpoint' in message
    assert 'overwrite True' in message and 'resume auto' in message
    train_esg.main(train_argv(root, data, save_path=save, epochs=1, resume='auto'))
    assert torch.load(os.path.join(save, 'last.pth'), weights_only=True)['epoch'] == 1
    with pytest.raises(ExistingResultsError, match=r'resume .*last\.pth \(or resume auto\)'):
        train_esg.main(train_argv(root, data, save_path=save, epochs=1))
    summary = train_esg.main(train_argv(root, data, save_path=save, epochs=1, resume='auto', base_lr=1e-4))
    assert summary is not None
    record = open(os.path.join(save, 'esg_config.yaml')).read()
    assert os.path.join(save, 'last.pth') in record  # the run record names the checkpoint auto chose


@pytest.mark.slow
def test_resume_with_another_schedule_is_refused(tiny):
    import train_esg
    root, data = tiny
    save = os.path.join(root, 'schedule')
    train_esg.main(train_argv(root, data, save_path=save, epochs=1))
    with pytest.raises(ValueError, match=r"epochs 1 -> 3.*poly learning rate.*Give epochs 1"):
        train_esg.main(train_argv(root, data, save_path=save, epochs=3, resume=os.path.join(save, 'last.pth')))


def test_a_stage_outside_its_experiment_is_refused(tiny, tmp_path):
    """``sh run/esg.sh exp/A <config>``: the output folder is not in exp_root, and the targets would come from
    exp_root's experiment; refused naming both. Inside the experiment, or with the targets given, it runs on."""
    import train_esg
    from util.config import check_one_experiment, load_config
    _, data = tiny
    (tmp_path / 'exp' / 'scannet' / 'ess_embeddings').mkdir(parents=True)  # the other experiment's targets exist
    argv = ['--config', os.path.join(ROOT, 'config/demo/openseg_train.yaml'), *data,
            'exp_root', str(tmp_path / 'exp' / 'scannet')]
    cfg = load_config(argv + ['save_path', str(tmp_path / 'exp' / 'A')], train_esg.SCHEMA)
    with pytest.raises(ConfigError) as refused:
        check_one_experiment(cfg, 'ESG training', 'save_path', ('esg_targets',))
    message = str(refused.value)
    assert f"'{tmp_path}/exp/A'" in message and f"esg_targets '{tmp_path}/exp/scannet/ess_embeddings'" in message
    inside = load_config(argv + ['save_path', str(tmp_path / 'exp' / 'scannet' / 'esg2')], train_esg.SCHEMA)
    check_one_experiment(inside, 'ESG training', 'save_path', ('esg_targets',))
    given = load_config(argv + ['save_path', str(tmp_path / 'exp' / 'A'), 'esg_targets', str(tmp_path)],
                        train_esg.SCHEMA)
    check_one_experiment(given, 'ESG training', 'save_path', ('esg_targets',))
    driver = subprocess.run(['sh', os.path.join(ROOT, 'run/esg.sh'), str(tmp_path / 'exp' / 'A'),
                             os.path.join(ROOT, 'config/demo/openseg_train.yaml'), *data,
                             'exp_root', str(tmp_path / 'exp' / 'scannet')],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=ROOT, PYTHON=sys.executable))
    assert driver.returncode == 2 and 'outside the experiment folder' in driver.stderr and 'Traceback' not in \
        driver.stderr


def test_the_viewer_takes_folder_names_literally(tmp_path):
    """A folder whose name holds glob characters ('esg [v2]') is found and read like any other."""
    from viewer.data import resolve_folder
    folder = tmp_path / 'esg [v2]'
    (folder / 'result_eval').mkdir(parents=True)
    config = folder / 'result_eval' / 'eval_config.yaml'
    config.write_text('TEST:\n  test_repeats: 1\n  model_path: m.pth\n  save_folder: out\n')
    (folder / 'best.pth').write_bytes(b'')
    assert resolve_folder(str(folder)) == (str(config), str(folder / 'best.pth'))


@pytest.mark.slow
def test_one_command_runs_a_whole_experiment_and_resumes(tmp_path):
    """``sh run/pipeline.sh demo <name>`` on tiny rooms: the five stages into exp/demo/<name>/ (run from another
    folder), the viewer finds the evaluation, and a second run continues instead of starting over."""
    from viewer.data import resolve_folder
    root = str(tmp_path / 'data')
    data = make_tiny_dataset(root)
    small = ['ess:epochs', '2', 'ess:num_points', '200', 'ess:batch_size', '2', 'esg:epochs', '1', 'esg:batch_size',
             '2', 'esg:loop', '1', 'eval:test_repeats', '1', 'workers', '0']
    run = subprocess.run(['sh', os.path.join(ROOT, 'run/pipeline.sh'), 'demo', 'tiny', *data, *small],
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, PYTHONPATH=ROOT, PYTHON=sys.executable))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    exp = tmp_path / 'exp' / 'demo' / 'tiny'
    for produced in ('plg/plg_summary.json', 'ess/best.pth', 'ess_embeddings', 'esg/best.pth',
                     'esg/result_eval/eval_summary.json'):
        assert (exp / produced).exists(), produced
    config, checkpoint = resolve_folder(str(exp / 'esg'))
    assert config.startswith(str(exp / 'esg' / 'result_eval')) and checkpoint == str(exp / 'esg' / 'best.pth')
    again = subprocess.run(['sh', os.path.join(ROOT, 'run/pipeline.sh'), 'demo', 'tiny', *data, *small],
                           cwd=str(tmp_path), capture_output=True, text=True, timeout=900,
                           env=dict(os.environ, PYTHONPATH=ROOT, PYTHON=sys.executable))
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert 'already done' in again.stdout and "resume auto: continuing from" in again.stdout + again.stderr


def test_free_text_without_clip_weights_fails_in_seconds_naming_both_ways_out(tiny, monkeypatch):
    import time

    from helpers import EVAL_CONFIG

    import query
    from pipeline import text_embeddings as te
    root, data = tiny
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(te, 'weights_on_disk', lambda *a: False)  # as on a machine that never downloaded them
    start = time.perf_counter()
    with pytest.raises(te.WeightsUnavailable) as refused:
        query.main(['--config', EVAL_CONFIG, *data, 'feature_type', 'fusion', 'queries', 'a cosy armchair',
                    'model_path', __file__, 'save_folder', os.path.join(root, 'q_offline')])
    assert time.perf_counter() - start < 5
    message = str(refused.value)
    assert "'a cosy armchair'" in message and 'clip_pretrained <a local checkpoint' in message
    assert 'query_embeddings <file.npy>' in message
