"""Experiment integrity: results are never destroyed, mixed or reused stale, bad values are rejected where they
enter (naming the file), and every message says what is wrong. One test (or a few) per class of fault."""
import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import config, ess_overrides, make_ess_data, make_plg_data, plg_args, train_ess

import eval_openseg_pre_train
import train_openseg_pre_train
from dataset import formats
from util import io as uio
from util.checkpoint import load_checkpoint
from util.config import ConfigError, load_config
from util.io import UnreadableFileError, safe_np_load, safe_torch_load
from util.run_folder import ExistingResultsError, FolderLockedError, RunFolder
from vlm_ps_generation import generation_vlm as gv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ESS_EVAL_CFG = config('config/demo/openseg_pre_eval.yaml')


# ----------------------------------------------------------------------------- 1. results never destroyed or mixed
@pytest.fixture(scope='module')
def ess_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('integrity_ess'))
    make_ess_data(root, n_train=2, n_val=1)
    return root


def test_fresh_run_into_a_used_folder_is_refused(ess_data, tmp_path):
    save = str(tmp_path / 'ess')
    train_ess(ess_data, save, epochs=1)
    before = {n: os.stat(os.path.join(save, n)).st_mtime_ns for n in ('best.pth', 'last.pth')}
    with pytest.raises(ExistingResultsError, match=rf"already holds.*resume {save}/last.pth.*overwrite True"):
        train_ess(ess_data, save, epochs=1)
    assert before == {n: os.stat(os.path.join(save, n)).st_mtime_ns for n in before}  # untouched
    # resuming another run's checkpoint into this folder would replace its run too
    other = str(tmp_path / 'other')
    train_ess(ess_data, other, epochs=1)
    with pytest.raises(ExistingResultsError, match='resume points to'):
        train_ess(ess_data, save, epochs=2, resume=os.path.join(other, 'last.pth'))
    # the two ways on: resume this folder's run, or start over explicitly
    train_ess(ess_data, save, epochs=2, resume=os.path.join(save, 'last.pth'))
    assert load_checkpoint(os.path.join(save, 'last.pth'), _adapter(ess_data))['epoch'] == 2
    argv_overwrite = ['overwrite', 'True']
    train_openseg_pre_train.main(_ess_train_argv(ess_data, save, epochs=1) + argv_overwrite)
    assert load_checkpoint(os.path.join(save, 'last.pth'), _adapter(ess_data))['epoch'] == 1


def _ess_train_argv(root, save, epochs):
    return ['--config', config('config/demo/openseg_pre_train.yaml'), *ess_overrides(root),
            'pseudo_label_path', f'{root}/plg',
            'save_path', save, 'num_points', '200', 'batch_size', '2', 'epochs', str(epochs), 'tensorboard', 'False',
            'manual_seed', '7', 'eval_freq', '1']


def _adapter(root):
    from pipeline.networks import build_adapter
    cfg = load_config(_ess_train_argv(root, root, 1)[:-2] + ['save_path', root], train_openseg_pre_train.SCHEMA)
    return build_adapter(torch.from_numpy(np.load(f'{root}/text.npy')), cfg.feature_2d_extractor, cfg.adapter_reduction,
                         cfg.adapter_alpha)


HOLD_LOCK = textwrap.dedent('''
    import time
    from util.run_folder import RunFolder
    folder = RunFolder({path!r}, 'holder').acquire()
    print('locked', flush=True)
    time.sleep(60)
''')


def _hold_lock(path):
    proc = subprocess.Popen([sys.executable, '-c', HOLD_LOCK.format(path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'locked'
    return proc


def test_second_writer_fails_at_once_and_a_killed_holder_is_taken_over(tmp_path):
    folder = tmp_path / 'exp'
    holder = _hold_lock(folder)
    try:
        with pytest.raises(FolderLockedError, match=rf"in use by pid {holder.pid} on host {socket.gethostname()}, "
                                                    r"started 20\d\d-.*"):
            RunFolder(folder, 'second').acquire()
        # a stage refuses at once too, before any output is written
        make_plg_data(tmp_path)
        with pytest.raises(FolderLockedError, match=f'pid {holder.pid}'):
            gv.main(plg_args(tmp_path, folder))
        assert not any(n.endswith('.npy') for n in os.listdir(folder))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    messages = []
    with RunFolder(folder, 'third', log=messages.append):
        pass
    assert any(f'left by pid {holder.pid}' in m and 'killed' in m for m in messages)
    messages.clear()
    with RunFolder(folder, 'fourth', log=messages.append):  # a clean release leaves nothing to take over
        pass
    assert messages == []


def test_lock_without_flock_uses_an_exclusive_file_and_recognises_a_dead_holder(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, 'No locks available')

    monkeypatch.setattr(fcntl, 'flock', no_flock)
    first = RunFolder(tmp_path, 'first').acquire()
    with pytest.raises(FolderLockedError, match=f'in use by pid {os.getpid()}'):
        RunFolder(tmp_path, 'second').acquire()
    first.release()
    assert not (tmp_path / '.lock.pid').exists()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (tmp_path / '.lock.pid').write_text(json.dumps({'pid': dead.pid, 'host': socket.gethostname(), 'time': 0}))
    messages = []
    with RunFolder(tmp_path, 'third', log=messages.append):
        assert json.loads((tmp_path / '.lock.pid').read_text())['pid'] == os.getpid()
    assert any('stale lock' in m and f'pid {dead.pid}' in m for m in messages)


def test_leftover_temporary_files_are_removed_at_the_next_start(tmp_path):
    leftover = tmp_path / '.last.pth.k3j_x9zq.tmp'
    leftover.write_bytes(b'\0' * 4096)
    kept = tmp_path / 'notes.tmp'  # not one of ours
    kept.write_text('x')
    messages = []
    with RunFolder(tmp_path, 'stage', log=messages.append):
        assert not leftover.exists() and kept.exists()
    assert any('.last.pth.k3j_x9zq.tmp' in m for m in messages)


def _train_and_die_while_copying_best(root, save):
    """Child process: ESS training whose validation improves every epoch; killed (SIGKILL) while writing
    best.pth of epoch 2, i.e. after last.pth of epoch 2 is on disk."""
    import util.checkpoint as ckpt
    # a forked child must not enter OpenMP: the pool of the parent's earlier multi-threaded tests did not survive
    # the fork, and the child would wait on it forever
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)
    scores = iter([0.1, 0.2, 0.3])
    real_validate = train_openseg_pre_train.validate

    def improving(*args, **kwargs):
        covered, all_points = real_validate(*args, **kwargs)
        covered['miou'] = next(scores)
        return covered, all_points

    real_copy = ckpt.atomic_copy

    def copy_or_die(src, dst):
        if torch.load(src, weights_only=True)['epoch'] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        real_copy(src, dst)

    train_openseg_pre_train.validate = improving
    ckpt.atomic_copy = copy_or_die
    train_openseg_pre_train.main(_ess_train_argv(root, save, epochs=3))


def test_kill_between_last_and_best_is_repaired_at_resume(ess_data, tmp_path):
    save = str(tmp_path / 'ess')
    child = multiprocessing.get_context('fork').Process(target=_train_and_die_while_copying_best,
                                                        args=(ess_data, save))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    last = torch.load(os.path.join(save, 'last.pth'), weights_only=True)
    best = torch.load(os.path.join(save, 'best.pth'), weights_only=True)
    assert last['epoch'] == last['best_epoch'] == 2 and best['epoch'] == 1  # best.pth is stale
    # resume with nothing left to train: only the repair runs (the same schedule settings as the killed run)
    train_openseg_pre_train.main(_ess_train_argv(ess_data, save, epochs=2) + ['resume', os.path.join(save, 'last.pth')])
    best = torch.load(os.path.join(save, 'best.pth'), weights_only=True)
    assert best['epoch'] == 2
    for key, value in last['state_dict'].items():
        assert torch.equal(best['state_dict'][key], value)


# ----------------------------------------------------------------------------- 2. derived outputs never reused stale
def test_plg_recomputes_after_tags_voxel_size_or_scoring_changed(tmp_path, capsys):
    make_plg_data(tmp_path, n_scenes=2)
    out = tmp_path / 'plg'
    tags = tmp_path / 'tags.json'
    tags.write_text(json.dumps({'scene0000_00': ['chair', 'door', 'floor'],
                                'scene0001_00': ['chair', 'door', 'floor']}))
    first = gv.main(plg_args(tmp_path, out, 'scene_label_file', str(tags)))
    assert first['written'] == 2
    assert gv.main(plg_args(tmp_path, out, 'scene_label_file', str(tags)))['skipped'] == 2
    # one scene's tags change: exactly that scene is recomputed, and its labels follow the new tags
    tags.write_text(json.dumps({'scene0000_00': ['chair'], 'scene0001_00': ['chair', 'door', 'floor']}))
    capsys.readouterr()
    again = gv.main(plg_args(tmp_path, out, 'scene_label_file', str(tags)))
    assert again['written'] == 1 and again['skipped'] == 1
    assert "recomputing 'scene0000_00'" in capsys.readouterr().out
    chair = formats.load_pseudo_labels(str(out), 'scene0000_00')
    assert set(np.unique(chair)) <= {4, 20}
    # GT tags instead of the file, another voxel size, per-point scoring: all stale
    for extra in ([], ['voxel_size', '0.5'], ['plg_per_point', 'True']):
        assert gv.main(plg_args(tmp_path, out, *extra))['written'] == 2, extra
    # input files replaced under the same names (a new fusion)
    for k in (0, 1):
        feat_path = tmp_path / 'feat' / f'scene0001_00_{k}.pt'
        feat, mask = formats.load_fused_features(feat_path)
        formats.save_fused_features(feat_path, -feat, mask)
    assert gv.main(plg_args(tmp_path, out, 'plg_per_point', 'True'))['written'] == 1


def test_ess_inference_recomputes_after_its_input_changed(ess_data, tmp_path):
    save = str(tmp_path / 'ess')
    train_ess(ess_data, save, epochs=1)
    out = str(tmp_path / 'emb')
    argv = ['--config', ESS_EVAL_CFG, *ess_overrides(ess_data), 'save_path', save, 'ess_embedding_path', out]
    eval_openseg_pre_train.main(argv)
    stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out) if n.endswith('.pt')}
    feat_path = os.path.join(ess_data, 'feat', 'scene0000_00_0.pt')
    original = open(feat_path, 'rb').read()
    try:
        feat, mask = formats.load_fused_features(feat_path)
        formats.save_fused_features(feat_path, feat * 2 + 1, mask)
        eval_openseg_pre_train.main(argv)
    finally:
        open(feat_path, 'wb').write(original)
    changed = {n for n in stamps if os.stat(os.path.join(out, n)).st_mtime_ns != stamps[n]}
    assert changed == {'scene0000_00_0.pt'}


# ----------------------------------------------------------------------------- 3. bad values rejected where they enter
def _scene(path, n=20, coords=None, colors=None, labels=None):
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 2, (n, 3)).astype(np.float32) if coords is None else coords
    colors = rng.uniform(-1, 1, (n, 3)).astype(np.float32) if colors is None else colors
    labels = rng.integers(0, 20, n) if labels is None else labels
    torch.save((coords, colors, labels), path)
    return path


@pytest.mark.parametrize('what', ['coords', 'colors'])
def test_nan_in_a_scene_names_the_file(tmp_path, what):
    arrays = {'coords': np.ones((20, 3), np.float32), 'colors': np.zeros((20, 3), np.float32)}
    arrays[what][7, 1] = np.nan
    path = _scene(tmp_path / 'room.pth', **arrays)
    with pytest.raises(formats.FormatError, match=rf"room\.pth.*{what} hold 1 non-finite.*row 7"):
        formats.load_scene_3d(path)


def test_nan_or_inf_in_fused_features_and_ess_embeddings_names_the_file(tmp_path):
    mask = torch.ones(4, dtype=torch.bool)
    feat = torch.ones(4, 8, dtype=torch.half)
    feat[2, 3] = float('inf')
    torch.save({'feat': feat, 'mask_full': mask}, tmp_path / 'room_0.pt')
    with pytest.raises(formats.FormatError, match=r"room_0\.pt.*non-finite.*row 2"):
        formats.load_fused_features(tmp_path / 'room_0.pt')
    # float32 values beyond float16's range become Inf when read as float16: caught too
    torch.save({'feat': torch.full((4, 8), 1e6), 'mask_full': mask}, tmp_path / 'room_1.pt')
    with pytest.raises(formats.FormatError, match='non-finite'):
        formats.load_fused_features(tmp_path / 'room_1.pt')
    with pytest.raises(formats.FormatError, match='cannot write'):  # never written in the first place
        formats.save_fused_features(tmp_path / 'out.pt', feat, mask)


def test_bad_text_embeddings_name_the_file(tmp_path):
    emb = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    emb[3, 0] = np.nan
    np.save(tmp_path / 'nan.npy', emb)
    with pytest.raises(formats.FormatError, match=r"nan\.npy.*non-finite.*row 3"):
        formats.load_text_embeddings(tmp_path / 'nan.npy')
    emb[3] = 0
    np.save(tmp_path / 'zero.npy', emb)
    with pytest.raises(formats.FormatError, match=r"zero\.npy.*rows \[3\] are zero vectors"):
        formats.load_text_embeddings(tmp_path / 'zero.npy')


def test_plg_with_nan_features_fails_naming_the_file(tmp_path):
    make_plg_data(tmp_path, n_scenes=2)
    feat_path = tmp_path / 'feat' / 'scene0001_00_1.pt'
    feat, mask = formats.load_fused_features(feat_path)
    feat[5] = float('nan')
    torch.save({'feat': feat, 'mask_full': mask}, feat_path)
    with pytest.raises(formats.FormatError, match=r'scene0001_00_1\.pt.*non-finite'):
        gv.main(plg_args(tmp_path, tmp_path / 'plg'))


def test_labels_outside_the_label_set_fail_before_any_output(tmp_path):
    make_plg_data(tmp_path, n_scenes=2)
    path = tmp_path / 'data_3d' / 'train' / 'scene0001_00_vh_clean_2.pth'
    coords, colors, labels = torch.load(path, weights_only=False)
    labels[3] = 40  # a NYU40 id that was never mapped to the 20 classes
    torch.save((coords, colors, labels), path)
    with pytest.raises(formats.FormatError, match=r'scene0001_00_vh_clean_2\.pth.*outside the label set.*\[40\]'):
        gv.main(plg_args(tmp_path, tmp_path / 'plg'))
    assert not (tmp_path / 'plg' / 'scene0001_00_pred.npy').exists()


def test_scene_names_are_matched_exactly(tmp_path):
    mask = torch.ones(3, dtype=torch.bool)
    for name, value in (('room.pt', 1.0), ('room_0.pt', 2.0), ('room_1_0.pt', 3.0), ('room_1_1.pt', 4.0),
                        ('room_00.pt', 5.0)):
        formats.save_fused_features(tmp_path / name, torch.full((3, 2), value), mask)
    scenes = {'room', 'room_0', 'room_1'}
    names = lambda s: [os.path.basename(p) for p in formats.fused_feature_files(str(tmp_path), s, scenes)]
    assert names('room') == ['room.pt']                     # never room_0's single file
    assert names('room_0') == ['room_0.pt']
    assert names('room_1') == ['room_1_0.pt', 'room_1_1.pt']
    with pytest.raises(FileNotFoundError):                  # 'room_00.pt' is not a numbered file of 'room'
        formats.fused_feature_files(str(tmp_path), 'room_', scenes)


def test_folders_with_glob_characters_work(tmp_path):
    root = tmp_path / 'scans[v2]'
    root.mkdir()
    make_plg_data(root, n_scenes=2)
    assert len(formats.list_scenes(str(root / 'data_3d'), 'train')) == 2
    summary = gv.main(plg_args(root, root / 'plg[1]'))
    assert summary['written'] == 2 and summary['num_scenes'] == 2


def test_one_point_scene_goes_through_plg(tmp_path):
    make_plg_data(tmp_path, n_scenes=1)
    scene = 'scene0009_00'
    formats.save_scene_3d(tmp_path / 'data_3d' / 'train' / f'{scene}_vh_clean_2.pth', np.zeros((1, 3), np.float32),
                          np.zeros((1, 3), np.float32), np.array([4]))
    text = np.load(tmp_path / 'text.npy')
    formats.save_fused_features(tmp_path / 'feat' / f'{scene}_0.pt', torch.from_numpy(text[4:5] * 10),
                                torch.ones(1, dtype=torch.bool))
    gv.main(plg_args(tmp_path, tmp_path / 'plg'))
    assert formats.load_pseudo_labels(str(tmp_path / 'plg'), scene).tolist() == [4]


def test_esg_skips_a_batch_it_cannot_train_on_and_names_the_scenes():
    from train_esg import unusable_batch
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 1, 0]])
    assert 'no voxel of these scenes has an ESS embedding' in unusable_batch(coords, torch.zeros(3, dtype=torch.bool))
    assert 'too small for BatchNorm' in unusable_batch(coords, torch.ones(3, dtype=torch.bool))
    coords[2, 1] = 40
    assert unusable_batch(coords, torch.ones(3, dtype=torch.bool)) is None


def test_esg_training_goes_on_past_a_one_point_scene_and_an_uncovered_scene(tmp_path):
    from helpers import make_tiny_dataset, train_argv

    import train_esg
    root = str(tmp_path)
    data = make_tiny_dataset(root, n_train=3, n_val=1)
    scenes = sorted(os.listdir(os.path.join(root, '3d', 'train')))
    one = scenes[0].replace('_vh_clean_2.pth', '')
    formats.save_scene_3d(os.path.join(root, '3d', 'train', scenes[0]), np.zeros((1, 3), np.float32),
                          np.zeros((1, 3), np.float32), np.array([1]))
    formats.save_fused_features(os.path.join(root, 'feat', f'{one}_0.pt'), torch.ones(1, 512),
                                torch.ones(1, dtype=bool))
    dark = scenes[1].replace('_vh_clean_2.pth', '')
    n = formats.load_scene_3d(os.path.join(root, '3d', 'train', scenes[1])).coords.shape[0]
    formats.save_fused_features(os.path.join(root, 'feat', f'{dark}_0.pt'), torch.zeros(0, 512),
                                torch.zeros(n, dtype=bool))
    summary = train_esg.main(train_argv(root, data, epochs=1, batch_size=1, evaluate=False))
    assert summary['train_loss'][0] > 0
    log = next(f for f in os.listdir(os.path.join(root, 'esg')) if f.startswith('esg-') and f.endswith('.log'))
    text = open(os.path.join(root, 'esg', log)).read()
    assert f'scenes {one}: 1 voxels fall into one voxel' in text and 'too small for BatchNorm' in text
    assert f'scenes {dark}: no voxel of these scenes has an ESS embedding' in text


def test_duplicate_scene_in_the_tag_file_is_an_error(tmp_path):
    path = tmp_path / 'tags.json'
    path.write_text('{"scene0000_00": ["chair"], "scene0001_00": ["bed"], "scene0000_00": ["table"]}')
    with pytest.raises(ValueError, match=r"tags\.json.*\['scene0000_00'\] appear more than once"):
        gv.load_scene_label_file(str(path), ('chair', 'bed', 'table'))


def _schema_of(config):
    import evaluate
    import train_esg
    return {'openseg_train': train_esg.SCHEMA, 'openseg_pre_train': train_openseg_pre_train.SCHEMA,
            'openseg_eval': evaluate.SCHEMA}[os.path.basename(config)[:-5]]


@pytest.mark.parametrize('path, key, value, message', [
    ('config/demo/openseg_train.yaml', 'base_lr', 'None', "'base_lr' cannot be None: give a float"),
    ('config/demo/openseg_train.yaml', 'save_path', 'null', r"'save_path' cannot be None: give a str \('' for none\)"),
    ('config/demo/openseg_train.yaml', 'eval_freq', '0', "'eval_freq' must be a positive integer, found 0"),
    ('config/demo/openseg_pre_train.yaml', 'step_epoch', '0', "'step_epoch' must be a positive integer"),
    ('config/demo/openseg_pre_train.yaml', 'epochs', '0', "'epochs' must be a positive integer"),
    ('config/demo/openseg_pre_train.yaml', 'base_lr', '-0.001', "'base_lr' must be a number > 0"),
    ('config/demo/openseg_eval.yaml', 'test_repeats', '0', "'test_repeats' must be a positive integer"),
    ('config/demo/openseg_eval.yaml', 'amp', 'fp32', "'amp' must be one of off, bf16, fp16"),
    ('config/demo/openseg_train.yaml', 'TRAINING.epochs', '3', "'epochs' is in section 'ESG', not 'TRAINING'"),
])
def test_config_values_that_make_no_sense_are_rejected_at_load(path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(['--config', config(path), key, value], _schema_of(path))


def test_nonsense_in_the_yaml_file_itself_is_rejected(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('TRAIN:\n  epochs: 0\n')
    with pytest.raises(ConfigError, match=r"bad\.yaml: config key 'epochs' must be a positive integer"):
        load_config(['--config', str(path)], train_openseg_pre_train.SCHEMA)


def test_diverging_ess_training_stops_naming_epoch_batch_and_scenes(ess_data, tmp_path):
    argv = _ess_train_argv(ess_data, str(tmp_path / 'ess'), epochs=3) + ['base_lr', '1e30']
    with pytest.raises(FloatingPointError, match=r'ESS loss is (nan|inf) at epoch \d, batch \d+ \(scenes '
                                                 r'scene000\d_00, scene000\d_00\): .*lower base_lr'):
        train_openseg_pre_train.main(argv)


def test_esg_blames_the_input_not_the_learning_rate_when_the_input_is_at_fault():
    from train_esg import non_finite_loss_message
    model = torch.nn.Linear(3, 4)
    good, bad = torch.ones(5, 3), torch.ones(5, 3)
    bad[1, 2] = float('nan')
    scenes = ['scene0001_00', 'scene0002_00']
    text = non_finite_loss_message(float('nan'), 4, 9, scenes, good, bad, model, 'off')
    assert 'epoch 5, step 10 (scenes scene0001_00, scene0002_00)' in text and 'ESS embeddings' in text
    assert 'base_lr' not in text
    assert 'colours' in non_finite_loss_message(float('nan'), 0, 0, scenes, bad, good, model, 'off')
    with torch.no_grad():
        model.weight[0, 0] = float('inf')
    assert 'diverged); lower base_lr' in non_finite_loss_message(float('inf'), 0, 0, scenes, good, good, model, 'off')


# ----------------------------------------------------------------------------- 4. messages that tell the truth
def test_refused_pickle_says_why_and_never_advises_weights_only_false(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ('this must never run',))
    torch.save(Payload(), tmp_path / 'evil.pth')
    with pytest.raises(UnreadableFileError) as err:
        safe_torch_load(tmp_path / 'evil.pth', 'checkpoint')
    text = str(err.value)
    assert "evil.pth" in text and "refused: loading it would call 'print', i.e. run code" in text
    assert 'weights_only' not in text and 'will likely succeed' not in text


def test_empty_foreign_truncated_files_and_folders_are_named_as_such(tmp_path):
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'noise.pth').write_bytes(np.random.default_rng(0).bytes(3000))
    torch.save({'a': torch.zeros(1000)}, tmp_path / 'full.pth')
    (tmp_path / 'cut.pth').write_bytes((tmp_path / 'full.pth').read_bytes()[:1500])
    torch.save({'a': torch.zeros(1000)}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    (tmp_path / 'legacy_cut.pth').write_bytes((tmp_path / 'legacy.pth').read_bytes()[:1500])
    np.save(tmp_path / 'array.npy', np.zeros(1000))
    (tmp_path / 'cut.npy').write_bytes((tmp_path / 'array.npy').read_bytes()[:2000])
    (tmp_path / 'folder.pth').mkdir()
    cases = {'empty.pth': 'is empty', 'noise.pth': 'not a torch file', 'cut.pth': 'truncated',
             'legacy_cut.pth': 'truncated', 'array.npy': 'a numpy .npy file, not a torch file',
             'folder.pth': 'is a directory, expected a file'}
    for name, message in cases.items():
        with pytest.raises((UnreadableFileError, IsADirectoryError), match=rf"{name}'?.*{message}"):
            safe_torch_load(tmp_path / name, 'checkpoint')
    for name, message in {'cut.npy': 'truncated', 'noise.pth': 'not a numpy .npy file',
                          'full.pth': 'a zip archive', 'empty.pth': 'is empty'}.items():
        with pytest.raises(UnreadableFileError, match=rf"{name}.*{message}"):
            safe_np_load(tmp_path / name, 'text embeddings')
    # a scene of 0 points (numpy's empty arrays pickle their data as bytes()), a zip cut before its directory
    torch.save((np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.int64)),
               tmp_path / 'empty_scene.pth')
    with pytest.raises(formats.FormatError, match=r"empty_scene.pth' has no points \(0 x 3 coords\)"):
        formats.load_scene_3d(str(tmp_path / 'empty_scene.pth'))
    (tmp_path / 'cut_end.pth').write_bytes((tmp_path / 'full.pth').read_bytes()[:-200])
    with pytest.raises(UnreadableFileError, match=r"cut_end.pth': truncated or corrupt"):
        safe_torch_load(tmp_path / 'cut_end.pth', '3D scene')
    with pytest.raises(IsADirectoryError, match='it is a directory'):
        uio.atomic_write_text(tmp_path / 'folder.pth', 'x')
    with pytest.raises(ConfigError, match=r"'pseudo_label_path': '.*full.pth' is a file, expected a folder$"):
        load_config(['--config', os.path.join(ROOT, 'config/demo/openseg_pre_train.yaml'), 'pseudo_label_path',
                     str(tmp_path / 'full.pth'), 'data_root', str(tmp_path), 'data_root_2d_fused_feature',
                     str(tmp_path), 'text_embeddings_path', ''], train_openseg_pre_train.SCHEMA)
    with pytest.raises(ConfigError, match='is a directory, expected a .yaml file'):
        load_config(['--config', str(tmp_path)], train_openseg_pre_train.SCHEMA)


def test_disk_full_is_reported_as_such_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / 'last.pth'
    target.write_bytes(b'old')
    real_mkstemp = uio.tempfile.mkstemp

    def onto_dev_full(**kwargs):  # the temporary file is a link to /dev/full: every write fails with ENOSPC
        fd, path = real_mkstemp(**kwargs)
        os.close(fd)
        os.remove(path)
        os.symlink('/dev/full', path)
        return os.open(path, os.O_WRONLY), path

    monkeypatch.setattr(uio.tempfile, 'mkstemp', onto_dev_full)
    monkeypatch.setattr(uio.os, 'chmod', lambda *a: None)  # a link to a device: nothing to chmod
    for write in (lambda: uio.atomic_torch_save({'w': torch.zeros(100000)}, target),
                  lambda: uio.atomic_np_save(target, np.zeros(100000)),
                  lambda: uio.atomic_write_text(target, 'x' * 100000)):
        with pytest.raises(OSError, match=rf"no space left on device while writing '{target}'") as err:
            write()
        assert err.value.errno == errno.ENOSPC
        assert target.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['last.pth']  # no temporary file left behind


# ----------------------------------------------------------------------------- devices, drivers
def test_an_unusable_gpu_is_reported_with_its_reason(monkeypatch):
    import warnings

    from util.misc import get_device

    def old_driver():
        warnings.warn('CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).')
        return False

    monkeypatch.setattr(torch.cuda, 'is_available', old_driver)
    said = []
    assert get_device('auto', said.append).type == 'cpu'
    assert len(said) == 1 and 'GPU is present but PyTorch cannot use it' in said[0] and 'too old' in said[0]


@pytest.mark.parametrize('driver', ['run/esg.sh', 'run/eval.sh', 'run/ess_train.sh', 'run/ess_eval.sh',
                                    'vlm_ps_generation/generation_vlm.sh'])
def test_drivers_print_their_usage(driver, tmp_path):
    ok = subprocess.run(['sh', os.path.join(ROOT, driver), '--help'], cwd=str(tmp_path), capture_output=True,
                        text=True, timeout=30)
    assert ok.returncode == 0 and f'usage: sh {os.path.join(ROOT, driver)} <exp_dir> <config.yaml>' in ok.stdout
    assert '(/' not in ok.stdout  # a config placeholder such as ${exp_root} is shown, not expanded by the shell
    if driver == 'run/ess_eval.sh':
        assert '${exp_root}/ess_embeddings' in ok.stdout
    bad = subprocess.run(['sh', os.path.join(ROOT, driver)], cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and 'usage:' in bad.stderr
