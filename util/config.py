"""YAML configs as upstream: top-level sections flattened into one namespace, `key value` overrides.

    python train_esg.py --config config/scannet/openseg_train.yaml base_lr 0.001 epochs 10

Every override must name a key of the YAML file and is cast to the type of the YAML value.
Unlike upstream, mistakes are errors: an unknown key or section, the same key in two sections (or
twice in one), a value that cannot be cast, ``None`` for a key that has a value in the YAML file, and
values that make no sense (``epochs 0``, a negative learning rate, ``amp fp32``, ...; ``VALUE_RULES``),
all reported when the config is loaded rather than epochs later.
"""
import argparse
import ast
import copy
import os

import yaml


class ConfigError(ValueError):
    pass


class CfgNode(dict):
    """A dict with attribute access (``cfg.base_lr``), as upstream's CfgNode. ``sections`` maps each key
    to the YAML section it came from (``SECTION.key`` overrides are checked against it)."""

    sections = {}

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name, value):
        self[name] = value

    def __deepcopy__(self, memo):
        new = CfgNode(copy.deepcopy(dict(self), memo))
        object.__setattr__(new, 'sections', dict(self.sections))
        return new

    def __str__(self):
        width = max((len(k) for k in self), default=0)
        return '\n'.join(f'{k:<{width}} : {v}' for k, v in sorted(self.items()))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key '{key}' appears twice in the same section "
                                  f"(line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_cfg_from_cfg_file(path):
    """Read a YAML config and flatten its top-level sections into one CfgNode."""
    if os.path.isdir(path):
        raise ConfigError(f"config file '{path}' is a directory, expected a .yaml file")
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    if not path.endswith(('.yaml', '.yml')):
        raise ConfigError(f"config file '{path}' is not a .yaml file")
    with open(path) as f:
        try:
            tree = yaml.load(f, Loader=_UniqueKeyLoader)
        except ConfigError as err:
            raise ConfigError(f'{path}: {err}') from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file '{path}' must hold sections (a mapping), found {type(tree).__name__}")
    cfg, section_of = CfgNode(), {}
    for section, entries in tree.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: top-level entry '{section}' must be a section of keys, "
                              f"found {type(entries).__name__}")
        for key, value in entries.items():
            if key in cfg:
                raise ConfigError(f"{path}: key '{key}' is defined in both section "
                                  f"'{section_of[key]}' and section '{section}'")
            cfg[key], section_of[key] = value, section
    object.__setattr__(cfg, 'sections', section_of)
    return cfg


def _parse_literal(text):
    lowered = text.strip().lower()
    if lowered in ('true', 'false'):
        return lowered == 'true'
    if lowered in ('none', 'null', '~'):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string such as a path


def _cast(key, text, original):
    value = _parse_literal(text)
    if original is None:
        return value
    if value is None:
        raise ConfigError(f"cannot set config key '{key}' to '{text}': the YAML file gives it a value "
                          f"({original!r}), and None would only fail later; give a value of type "
                          f"{type(original).__name__}" + (" ('' for none)" if isinstance(original, str) else ''))
    if isinstance(original, bool):  # check before int: bool is an int subclass
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
    elif isinstance(original, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(original, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(original, str):
        return text
    elif isinstance(original, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(original)(value)
        if not isinstance(value, (dict, bool)):
            return type(original)([value])
    elif isinstance(value, type(original)):
        return value
    raise ConfigError(f"cannot set config key '{key}' to '{text}': expected a value of type "
                      f"{type(original).__name__} like the YAML value {original!r}")


def merge_cfg_from_list(cfg, opts):
    """Apply `key value` overrides (a flat list) to a copy of ``cfg``."""
    if len(opts) % 2:
        raise ConfigError(f"overrides must come in `key value` pairs, got an odd list: {opts}")
    new_cfg = copy.deepcopy(cfg)
    for full_key, text in zip(opts[0::2], opts[1::2]):
        section, _, key = full_key.rpartition('.')  # upstream accepts SECTION.key as well as key
        if key not in cfg:
            raise ConfigError(f"unknown config key '{full_key}' (known keys: {', '.join(sorted(cfg))})")
        if section and cfg.sections and section != cfg.sections.get(key):
            raise ConfigError(f"config key '{full_key}': '{key}' is in section '{cfg.sections.get(key)}', not "
                              f"'{section}' (sections: {', '.join(sorted(set(cfg.sections.values())))})")
        new_cfg[key] = _cast(full_key, str(text), cfg[key])
    return new_cfg


# ----------------------------------------------------------------------------- value rules
def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _non_negative_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float('inf')


def _device(v):
    import re
    return isinstance(v, str) and re.fullmatch(r'auto|cpu|cuda(:\d+)?|mps', v) is not None


def _labelset(v):
    from dataset.label_constants import dataset_info
    try:
        dataset_info(v)
        return True
    except (ValueError, AttributeError):
        return False


def _arch(v):
    from models.mink_unet import ARCHITECTURES
    return v in ARCHITECTURES


_AMP = ('off', 'bf16', 'fp16')
# key -> (test, what it must be). Applied to the keys a config has, after overrides.
VALUE_RULES = {
    **{k: (_positive_int, 'a positive integer') for k in (
        'epochs', 'eval_freq', 'step_epoch', 'print_freq', 'batch_size', 'num_points', 'test_repeats',
        'val_repeats', 'loop', 'chunk_size', 'adapter_reduction')},
    **{k: (_non_negative_int, 'an integer >= 0') for k in ('workers', 'test_workers', 'feat_dim')},
    **{k: (lambda v: _number(v) and v > 0, 'a number > 0') for k in ('base_lr', 'voxel_size', 'multiplier')},
    **{k: (lambda v: _number(v) and v >= 0, 'a number >= 0') for k in ('weight_decay', 'power')},
    'adapter_alpha': (lambda v: _number(v) and 0 <= v <= 1, 'a number in [0, 1]'),
    'betas': (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
              'two numbers in [0, 1), e.g. [0.9, 0.999]'),
    'amp': (lambda v: v in _AMP or v is False, f"one of {', '.join(_AMP)}"),
    'loss_type': (lambda v: v in ('cosine', 'l1'), 'cosine or l1'),
    'feature_type': (lambda v: v in ('distill', 'fusion', 'ensemble'), 'distill, fusion or ensemble'),
    'sparse_backend': (lambda v: v in ('torch', 'minkowski'), 'torch or minkowski'),
    'device': (_device, "auto, cpu, cuda or cuda:<index>"),
    'labelset': (_labelset, 'a known label set (scannet, s3dis)'),
    'arch_3d': (_arch, 'a MinkUNet architecture name such as MinkUNet18A'),
    'manual_seed': (lambda v: v is None or _non_negative_int(v), 'an integer >= 0'),
    'prompt_template': (lambda v: isinstance(v, str) and (v in ('', 'none', 'upstream') or '{}' in v),
                        "'upstream', 'none' or a template with '{}' where the class name goes"),
}


def validate(cfg, origin=''):
    """Check every key of ``cfg`` that has a rule in ``VALUE_RULES``; a ConfigError names the key."""
    for key, (test, what) in VALUE_RULES.items():
        if key in cfg and not test(cfg[key]):
            raise ConfigError(f"{origin + ': ' if origin else ''}config key '{key}' must be {what}, "
                              f"found {cfg[key]!r}")
    return cfg


def get_parser(description='3DSS-VLG', default_config=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--config', type=str, default=default_config, required=default_config is None,
                        help='YAML config file')
    parser.add_argument('opts', nargs=argparse.REMAINDER, default=None,
                        help='`key value` overrides of the config, e.g. `epochs 10 base_lr 0.001`')
    return parser


def load_config(argv=None, description='3DSS-VLG', default_config=None):
    """Parse ``--config path [key value ...]`` (``argv`` defaults to sys.argv) into a CfgNode."""
    args = get_parser(description, default_config).parse_args(argv)
    cfg = load_cfg_from_cfg_file(args.config)
    if args.opts:
        cfg = merge_cfg_from_list(cfg, args.opts)
    validate(cfg, args.config + (' with the command-line overrides' if args.opts else ''))
    cfg.setdefault('config_file', args.config)
    return cfg
