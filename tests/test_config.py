"""util/config.py: YAML files with _base_ includes, a schema per stage, typed overrides, mistakes found at load."""
import os
import subprocess
import sys

import pytest

from util.config import REQUIRED, ConfigError, Key, Schema, load_config, resolve_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCHEMA = Schema('test stage', [
    Key('data_root', str, REQUIRED, '3D data', 'DATA', exists='dir', hint='make it first'),
    Key('voxel_size', float, 0.02, 'voxel', 'DATA', check=lambda v: v > 0, must='a number > 0'),
    Key('aug', bool, True, 'augment', 'DATA'),
    Key('labelset', str, 'scannet', 'labels', 'DATA'),
    Key('exp_root', str, 'exp/x', 'experiment', 'DATA'),
    Key('save_folder', str, '${exp_root}/out', 'output', 'RUN'),
    Key('epochs', int, 100, 'epochs', 'TRAIN', check=lambda v: v > 0, must='a positive integer'),
    Key('base_lr', float, 0.0001, 'lr', 'TRAIN'),
    Key('train_gpu', list, [0], 'gpus', 'TRAIN', item=int),
    Key('splits', list, ['train'], 'splits', 'TRAIN', item=str),
    Key('resume', str, '', 'checkpoint', 'TRAIN'),
    Key('manual_seed', int, None, 'seed', 'TRAIN', nullable=True),
], example='python stage.py --config c.yaml epochs=3')

YAML = """
DATA:
  data_root: {root}   # a path
  voxel_size: 0.02
  aug: True
TRAIN:
  epochs: 100
  train_gpu: [0]
"""


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / 'cfg.yaml'
    path.write_text(YAML.format(root=tmp_path))
    return str(path)


def test_defaults_sections_flattened_and_interpolation(cfg_path, tmp_path):
    cfg = load_config(['--config', cfg_path], SCHEMA)
    assert cfg.data_root == str(tmp_path) and cfg.voxel_size == 0.02 and cfg.aug is True
    assert cfg.epochs == 100 and cfg.train_gpu == [0] and cfg.manual_seed is None and cfg.base_lr == 0.0001
    assert cfg.save_folder == 'exp/x/out' and cfg.config_file == cfg_path
    assert load_config(['--config', cfg_path, 'exp_root', 'exp/y'], SCHEMA).save_folder == 'exp/y/out'
    with pytest.raises(AttributeError, match='no_such'):
        cfg.no_such


def test_overrides_cast_to_the_schema_type_in_both_spellings(cfg_path):
    cfg = load_config(['--config', cfg_path, 'epochs', '7', 'base_lr=3', 'voxel_size', '5e-2', 'aug=False',
                       'save_folder', '/tmp/x 1', 'train_gpu', '[0, 1]', 'labelset', '12', 'manual_seed=3',
                       'TRAIN.resume', 'exp/model.pth', 'splits', 'train,val'], SCHEMA)
    assert cfg.epochs == 7 and type(cfg.epochs) is int
    assert cfg.base_lr == 3.0 and type(cfg.base_lr) is float
    assert cfg.voxel_size == 0.05 and cfg.aug is False
    assert cfg.save_folder == '/tmp/x 1' and cfg.train_gpu == [0, 1]
    assert cfg.labelset == '12' and type(cfg.labelset) is str  # strings stay strings
    assert cfg.manual_seed == 3 and cfg.resume == 'exp/model.pth' and cfg.splits == ['train', 'val']
    assert load_config(['--config', cfg_path, 'epochs', '4.0'], SCHEMA).epochs == 4
    assert load_config(['--config', cfg_path, 'aug', '1'], SCHEMA).aug is True


def test_typo_in_an_override_suggests_the_key(cfg_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch' for test stage; did you mean 'epochs'\?"):
        load_config(['--config', cfg_path, 'epoch', '3'], SCHEMA)
    with pytest.raises(ConfigError, match=r"unknown config key 'base_rl'.*did you mean 'base_lr'"):
        load_config(['--config', cfg_path, 'base_rl=3'], SCHEMA)


def test_typo_in_the_yaml_file_is_an_error_at_load(tmp_path):
    path = tmp_path / 'typo.yaml'
    path.write_text(f'DATA:\n  data_root: {tmp_path}\nTRAIN:\n  epoch: 3\n')
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key 'epoch' \(section 'TRAIN'\) for test "
                                          r"stage; did you mean 'epochs'\?"):
        load_config(['--config', str(path)], SCHEMA)


@pytest.mark.parametrize('key, value', [('epochs', 'abc'), ('epochs', '2.5'), ('aug', '2'), ('base_lr', 'fast'),
                                        ('base_lr', 'True'), ('train_gpu', '{1: 2}'), ('epochs', 'None')])
def test_uncastable_value(cfg_path, key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}' (must be|cannot be None)"):
        load_config(['--config', cfg_path, key, value], SCHEMA)


def test_missing_value_required_key_and_checks(cfg_path, tmp_path):
    with pytest.raises(ConfigError, match='has no value'):
        load_config(['--config', cfg_path, 'epochs'], SCHEMA)
    empty = tmp_path / 'empty.yaml'
    empty.write_text('')
    with pytest.raises(ConfigError, match="config key 'data_root' is required"):
        load_config(['--config', str(empty)], SCHEMA)
    with pytest.raises(ConfigError, match=r"command line: config key 'epochs' must be a positive integer, found 0"):
        load_config(['--config', cfg_path, 'epochs', '0'], SCHEMA)


def test_placeholders_and_missing_inputs_are_reported_at_load(cfg_path, tmp_path):
    with pytest.raises(ConfigError, match=r"'data_root' is still the placeholder '/PATH/TO/scannet_3d'"):
        load_config(['--config', cfg_path, 'data_root', '/PATH/TO/scannet_3d'], SCHEMA)
    with pytest.raises(ConfigError, match=r"'data_root': folder '.*nowhere' does not exist; make it first"):
        load_config(['--config', cfg_path, 'data_root', str(tmp_path / 'nowhere')], SCHEMA)


def test_base_files_are_read_first_and_overridden(tmp_path):
    (tmp_path / 'dataset.yaml').write_text(f'DATA:\n  data_root: {tmp_path}\n  voxel_size: 0.05\n  exp_root: e\n')
    (tmp_path / 'stage.yaml').write_text('_base_: dataset.yaml\nTRAIN:\n  epochs: 3\nDATA:\n  voxel_size: 0.1\n')
    sub = tmp_path / 'sub'
    sub.mkdir()
    (sub / 'child.yaml').write_text('_base_: [../stage.yaml]\nRUN:\n  save_folder: ${exp_root}/child\n')
    cfg = load_config(['--config', str(sub / 'child.yaml')], SCHEMA)
    assert (cfg.voxel_size, cfg.epochs, cfg.save_folder, cfg.data_root) == (0.1, 3, 'e/child', str(tmp_path))
    (tmp_path / 'loop.yaml').write_text('_base_: loop.yaml\n')
    with pytest.raises(ConfigError, match='includes itself'):
        load_config(['--config', str(tmp_path / 'loop.yaml')], SCHEMA)


def test_duplicate_keys_in_one_file(tmp_path):
    path = tmp_path / 'dup.yaml'
    path.write_text('DATA:\n  voxel_size: 0.02\nTRAIN:\n  voxel_size: 0.05\n')
    with pytest.raises(ConfigError, match="'voxel_size' is defined in both section 'DATA' and section 'TRAIN'"):
        load_config(['--config', str(path)], SCHEMA)
    path.write_text('DATA:\n  voxel_size: 0.02\n  aug: True\n  voxel_size: 0.05\n')
    with pytest.raises(ConfigError, match="'voxel_size' appears twice.*line 4"):
        load_config(['--config', str(path)], SCHEMA)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(['--config', str(tmp_path / 'missing.yaml')], SCHEMA)
    flat = tmp_path / 'flat.yaml'
    flat.write_text('voxel_size: 0.02\n')
    with pytest.raises(ConfigError, match="'voxel_size' must be a section"):
        load_config(['--config', str(flat)], SCHEMA)
    with pytest.raises(ConfigError, match='circle'):
        resolve_config(Schema('s', [Key('a', str, '${b}'), Key('b', str, '${a}')]), str(_empty(tmp_path)))


def _empty(tmp_path):
    path = tmp_path / 'e.yaml'
    path.write_text('')
    return path


STAGES = {'train_esg.py': ('config/scannet/openseg_train.yaml', ['esg_targets', 'lr_x10_after_first_step', 'arch_3d']),
          'evaluate.py': ('config/scannet/openseg_eval.yaml', ['test_repeats', 'feature_type', 'model_path']),
          'train_openseg_pre_train.py': ('config/scannet/openseg_pre_train.yaml', ['num_points', 'step_epoch']),
          'eval_openseg_pre_train.py': ('config/scannet/openseg_pre_eval.yaml', ['ess_embedding_path', 'splits']),
          'vlm_ps_generation/generation_vlm.py': ('vlm_ps_generation/config/scannet.yaml', ['scene_label_file'])}


@pytest.mark.parametrize('script', sorted(STAGES))
def test_help_lists_the_keys_of_each_stage_and_an_example_of_that_stage(script):
    out = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    config, keys = STAGES[script]
    for key in keys + ['data_root', 'exp_root', 'device']:
        assert f'\n    {key} ' in out.stdout, key
    example = next(line for line in out.stdout.splitlines() if line.strip().startswith('python '))
    assert os.path.basename(script) in example and 'epochs 10 base_lr 0.001' not in out.stdout
    # every stage file of every dataset holds only keys its stage knows (the dataset file included)
    module = script[:-3].replace('/', '.')
    schema = __import__(module, fromlist=['SCHEMA']).SCHEMA
    for dataset in ('scannet', 's3dis', 'demo'):
        path = os.path.join(ROOT, config.replace('scannet', dataset))  # the repository's own configs
        from util.config import load_yaml
        values, _ = load_yaml(path)
        assert set(values) <= set(schema.by_name), (path, set(values) - set(schema.by_name))
