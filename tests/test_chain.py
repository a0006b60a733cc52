"""Integrity across stages: a stage that reads another stage's output refuses when that output is stale.

The chain PLG -> ESS -> ESS inference -> ESG runs once on tiny rooms (``run/pipeline.sh``); then an input of an
earlier stage changes (a fused-feature file is re-fused, the adapter is retrained) and the next training that
would read the stale output stops, naming the stage and the command that refreshes it; refreshed, it runs.
"""
import os
import subprocess
import sys

import pytest
import torch
from helpers import make_tiny_dataset

from dataset.formats import save_fused_features
from util.provenance import StaleInputError, check_upstream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

SMALL = ['ess:epochs', '1', 'ess:num_points', '200', 'ess:batch_size', '2', 'esg:epochs', '1', 'esg:batch_size', '2',
         'esg:loop', '1', 'eval:test_repeats', '1', 'workers', '0']


def pipeline(cwd, data, *extra):
    run = subprocess.run(['sh', os.path.join(ROOT, 'run/pipeline.sh'), 'demo', 'chain', *data, *SMALL, *extra],
                         cwd=str(cwd), capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, PYTHONPATH=ROOT, PYTHON=sys.executable))
    return run


@pytest.fixture(scope='module')
def chain(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('chain')
    data = make_tiny_dataset(str(cwd / 'data'))
    run = pipeline(cwd, data, '--from', 'plg')
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return cwd, data, cwd / 'exp' / 'demo' / 'chain'


def test_changed_features_stop_ess_and_esg_until_refreshed(chain):
    import train_esg
    import train_openseg_pre_train
    cwd, data, exp = chain
    feat = cwd / 'data' / 'feat' / 'scene0000_00_0.pt'
    f, mask = _load(feat)
    save_fused_features(str(feat), torch.nn.functional.normalize(f + 0.3 * torch.randn_like(f), dim=1), mask)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        ess_data = [v for k, v in zip(data[0::2], data[1::2]) if k != 'arch_3d' for v in (k, v)]
        ess_argv = ['--config', os.path.join(ROOT, 'config/demo/openseg_pre_train.yaml'), *ess_data, 'exp_root',
                    str(exp), 'save_path', str(exp / 'ess_again'), 'epochs', '1', 'num_points', '200', 'batch_size',
                    '2', 'workers', '0']
        with pytest.raises(StaleInputError) as refused:
            train_openseg_pre_train.main(ess_argv)
        message = str(refused.value)
        assert 'ESS training reads the plg outputs' in message and 'scene0000_00' in message
        assert str(feat) in message and f"--config {exp / 'plg' / 'plg_config.yaml'}" in message
        esg_argv = ['--config', os.path.join(ROOT, 'config/demo/openseg_train.yaml'), *data, 'exp_root', str(exp),
                    'save_path', str(exp / 'esg_again'), 'epochs', '1', 'batch_size', '2', 'loop', '1', 'workers', '0']
        with pytest.raises(StaleInputError, match=r'ESG training reads the ess outputs.*scene0000_00.*'
                                                   r'eval_openseg_pre_train.py --config .*ess_infer_config.yaml'):
            train_esg.main(esg_argv)
        # refreshed by the commands the messages name (here the pipeline from PLG on): both run again
        run = pipeline(cwd, data, '--from', 'plg')
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        train_openseg_pre_train.main(ess_argv)
    finally:
        os.chdir(old)


def _load(path):
    blob = torch.load(path, weights_only=True)
    feat = blob['feat'].float()
    return feat, blob['mask_full']


def test_a_retrained_adapter_makes_the_embeddings_stale(chain):
    """ESS inference records the adapter checkpoint among its inputs: a retrained best.pth stops ESG."""
    cwd, data, exp = chain
    best = exp / 'ess' / 'best.pth'
    state = torch.load(best, weights_only=True)
    name = next(iter(state['state_dict']))
    state['state_dict'][name] = state['state_dict'][name] + 1
    torch.save(state, best)
    scenes = [p.name[:-len('_vh_clean_2.pth')] for p in (cwd / 'data' / '3d' / 'train').iterdir()]
    with pytest.raises(StaleInputError, match=rf"its input '{best}' changed since"):
        check_upstream(str(exp / 'ess_embeddings'), 'ess', scenes, 'ESG training', 'rerun ESS inference')
    assert not check_upstream(str(cwd / 'data' / 'feat'), 'ess', scenes, 'ESG training', '')  # no manifest there


def test_a_feature_file_fused_after_plg_makes_its_scene_stale(chain):
    """A second view's features (``<scene>_1.pt``) appearing after PLG: PLG's and ESS inference's outputs for
    that scene were made without it, so ESS training and ESG training stop, naming the new file."""
    import train_openseg_pre_train
    from dataset.ess_loader import ESSPointDataset
    cwd, data, exp = chain
    new = cwd / 'data' / 'feat' / 'scene0001_00_1.pt'
    new.write_bytes((cwd / 'data' / 'feat' / 'scene0001_00_0.pt').read_bytes())
    try:
        reader = ESSPointDataset(str(cwd / 'data' / '3d'), 'train', str(cwd / 'data' / 'feat'), 10, 6,
                                 pseudo_label_path=str(exp / 'plg')).reader
        assert reader.scene_inputs('scene0001_00')[-1] == str(new)
        appeared = rf"scene0001_00 \('{new}' appeared after it was made"
        with pytest.raises(StaleInputError, match=appeared):
            check_upstream(str(exp / 'plg'), 'plg', reader.scenes, 'ESS training', 'rerun PLG',
                           current_inputs=reader.scene_inputs)
        with pytest.raises(StaleInputError, match=appeared):
            check_upstream(str(exp / 'ess_embeddings'), 'ess', reader.scenes, 'ESG training', 'rerun ESS inference',
                           current_inputs=lambda s: [str(new)] if s == 'scene0001_00' else [])
        # a file in a folder the upstream stage never read (another feature root) is not its input
        assert check_upstream(str(exp / 'plg'), 'plg', reader.scenes, 'ESS training', '',
                              current_inputs=lambda s: [str(cwd / 'elsewhere' / f'{s}_0.pt')])
        old = os.getcwd()
        os.chdir(cwd)
        try:
            ess_data = [v for k, v in zip(data[0::2], data[1::2]) if k != 'arch_3d' for v in (k, v)]
            with pytest.raises(StaleInputError, match=appeared):
                train_openseg_pre_train.main(['--config', os.path.join(ROOT, 'config/demo/openseg_pre_train.yaml'),
                                              *ess_data, 'exp_root', str(exp), 'save_path', str(exp / 'ess_new'),
                                              'epochs', '1', 'workers', '0'])
        finally:
            os.chdir(old)
    finally:
        new.unlink()


def test_a_scene_without_embeddings_stops_esg_unless_asked_to_go_on(tmp_path):
    """ESG's loader drops a train scene without ESS embeddings only under ``missing_scenes warn`` (upstream's
    behaviour), and lists it; by default it stops, naming the scene and the stage that writes it."""
    from dataset.feature_loader import FusedFeatureLoader
    make_tiny_dataset(str(tmp_path))
    (tmp_path / 'feat' / 'scene0002_00_0.pt').unlink()
    root, feat = str(tmp_path / '3d'), str(tmp_path / 'feat')
    with pytest.raises(FileNotFoundError, match=r"1 of 4 scenes of split 'train' have no features in .*"
                                                r"scene0002_00\. Complete the stage .*missing_scenes warn"):
        FusedFeatureLoader(root, feat, voxel_size=0.05, split='train', missing_scenes='error')
    loader = FusedFeatureLoader(root, feat, voxel_size=0.05, split='train', missing_scenes='warn')
    assert loader.skipped_scenes == ['scene0002_00'] and len(loader) == 3


def test_labels_scenes_and_checkpoints_that_are_wrong_are_named(tmp_path):
    """Nothing lost or mis-typed silently: fractional labels, a scene that is a folder, a diverged checkpoint,
    a query named like the segmentation's files."""
    import numpy as np

    from dataset import formats
    from pipeline.query import slugs
    from util.checkpoint import load_checkpoint
    path = str(tmp_path / 'val' / 'scene0000_00.pth')
    formats.save_scene_3d(path, np.zeros((4, 3)), np.zeros((4, 3)), np.array([0, 1, 2, 3]))
    torch.save((np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32), np.array([0, 1.5, 2, 3])), path)
    whole = r"labels must be whole class ids, found 1 fractional values \(e.g. 1.5"
    with pytest.raises(formats.FormatError, match=whole):
        formats.load_scene_3d(path)
    np.save(tmp_path / 'scene0000_00_pred.npy', np.array([0.0, 1.0, 2.7, 3.0]))
    with pytest.raises(formats.FormatError, match='fractional'):
        formats.load_pseudo_labels(str(tmp_path), 'scene0000_00')
    (tmp_path / 'val' / 'scene0001_00.pth').mkdir()
    with pytest.raises(formats.FormatError, match=r"'scene0001_00.pth' is not a file"):
        formats.list_scenes(str(tmp_path), 'val')
    model = torch.nn.Linear(2, 2)
    state = {'state_dict': {'weight': torch.full((2, 2), float('nan')), 'bias': torch.zeros(2)}}
    torch.save(state, tmp_path / 'nan.pth')
    with pytest.raises(ValueError, match=r"NaN or inf, e.g. 'weight'"):
        load_checkpoint(str(tmp_path / 'nan.pth'), model)
    assert slugs(['pred', 'queries', 'chair']) == ['pred_query', 'queries_query', 'chair']


def test_memory_blow_ups_are_refused_before_allocation(tmp_path):
    """``num_points 10^9`` and a YAML alias bomb stop at the config, with the size asked for."""
    import train_openseg_pre_train
    from util.config import ConfigError, load_config
    limit = r"'num_points' must be a positive integer up to 10,000,000.*found 1000000000"
    with pytest.raises(ConfigError, match=limit):
        load_config(['--config', os.path.join(ROOT, 'config/demo/openseg_pre_train.yaml'), 'num_points', '1000000000'],
                    train_openseg_pre_train.SCHEMA)
    lines = ['TRAIN:', '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9^9 values
    bomb = tmp_path / 'bomb.yaml'
    bomb.write_text('\n'.join(lines) + '\n')
    with pytest.raises(ConfigError, match='expands to more than 100,000 values'):
        load_config(['--config', str(bomb)], train_openseg_pre_train.SCHEMA)
