"""util/config.py: YAML sections flattened, typed `key value` overrides, mistakes are errors."""
import pytest

from util.config import ConfigError, load_config

YAML = """
DATA:
  data_root: data/scannet_3d   # a path
  voxel_size: 0.02
  aug: True
  labelset: scannet
  save_folder: out
TRAIN:
  epochs: 100
  base_lr: 0.0001
  train_gpu: [0]
  resume: ''
  manual_seed: null
"""


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / 'cfg.yaml'
    path.write_text(YAML)
    return str(path)


def test_sections_flattened(cfg_path):
    cfg = load_config(['--config', cfg_path])
    assert cfg.data_root == 'data/scannet_3d' and cfg.voxel_size == 0.02 and cfg.aug is True
    assert cfg.epochs == 100 and cfg.train_gpu == [0] and cfg.manual_seed is None
    assert cfg.config_file == cfg_path
    with pytest.raises(AttributeError, match='no_such'):
        cfg.no_such


def test_overrides_cast_to_yaml_type(cfg_path):
    cfg = load_config(['--config', cfg_path, 'epochs', '7', 'base_lr', '3', 'voxel_size', '5e-2', 'aug', 'False',
                       'data_root', '/tmp/x 1', 'train_gpu', '[0, 1]', 'save_folder', '12', 'manual_seed', '3',
                       'TRAIN.resume', 'exp/model.pth'])
    assert cfg.epochs == 7 and type(cfg.epochs) is int
    assert cfg.base_lr == 3.0 and type(cfg.base_lr) is float
    assert cfg.voxel_size == 0.05 and cfg.aug is False
    assert cfg.data_root == '/tmp/x 1' and cfg.train_gpu == [0, 1]
    assert cfg.save_folder == '12' and type(cfg.save_folder) is str  # strings stay strings
    assert cfg.manual_seed == 3 and cfg.resume == 'exp/model.pth'
    assert load_config(['--config', cfg_path, 'epochs', '4.0']).epochs == 4
    assert load_config(['--config', cfg_path, 'aug', '1']).aug is True


def test_unknown_key_is_named(cfg_path):
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        load_config(['--config', cfg_path, 'epoch', '3'])


@pytest.mark.parametrize('key, value', [('epochs', 'abc'), ('epochs', '2.5'), ('aug', '2'), ('base_lr', 'fast'),
                                        ('base_lr', 'True'), ('train_gpu', '{1: 2}')])
def test_uncastable_value(cfg_path, key, value):
    with pytest.raises(ConfigError, match=f"cannot set config key '{key}' to"):
        load_config(['--config', cfg_path, key, value])


def test_odd_override_list(cfg_path):
    with pytest.raises(ConfigError, match='pairs'):
        load_config(['--config', cfg_path, 'epochs'])


def test_duplicate_key_across_sections(tmp_path):
    path = tmp_path / 'dup.yaml'
    path.write_text('DATA:\n  voxel_size: 0.02\nTRAIN:\n  voxel_size: 0.05\n')
    with pytest.raises(ConfigError, match="'voxel_size' is defined in both section 'DATA' and section 'TRAIN'"):
        load_config(['--config', str(path)])


def test_duplicate_key_in_one_section(tmp_path):
    path = tmp_path / 'dup.yaml'
    path.write_text('DATA:\n  voxel_size: 0.02\n  aug: True\n  voxel_size: 0.05\n')
    with pytest.raises(ConfigError, match="'voxel_size' appears twice.*line 4"):
        load_config(['--config', str(path)])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(['--config', str(tmp_path / 'missing.yaml')])
    flat = tmp_path / 'flat.yaml'
    flat.write_text('voxel_size: 0.02\n')
    with pytest.raises(ConfigError, match="'voxel_size' must be a section"):
        load_config(['--config', str(flat)])
