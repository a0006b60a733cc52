"""YAML configs as upstream: top-level sections flattened into one namespace, `key value` overrides.

    python train_esg.py --config config/scannet/openseg_train.yaml base_lr 0.001 epochs 10

Every override must name a key of the YAML file and is cast to the type of the YAML value.
Unlike upstream, mistakes are errors: an unknown key, the same key in two sections (or twice in
one), or a value that cannot be cast.
"""
import argparse
import ast
import copy
import os

import yaml


class ConfigError(ValueError):
    pass


class CfgNode(dict):
    """A dict with attribute access (``cfg.base_lr``), as upstream's CfgNode."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name, value):
        self[name] = value

    def __deepcopy__(self, memo):
        return CfgNode(copy.deepcopy(dict(self), memo))

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
    if original is None or value is None:
        return value
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
        key = full_key.split('.')[-1]  # upstream accepts SECTION.key as well as key
        if key not in cfg:
            raise ConfigError(f"unknown config key '{full_key}' (known keys: {', '.join(sorted(cfg))})")
        new_cfg[key] = _cast(full_key, str(text), cfg[key])
    return new_cfg


def get_parser(description='3DSS-VLG', default_config=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--config', type=str, default=default_config, required=default_config is None,
                        help='YAML config file')
    parser.add_argument('opts', nargs=argparse.REMAINDER, default=None,
                        help='`key value` overrides of the config, e.g. `epochs 10 base_lr 0.001`')
    return parser


def load_config(argv=None, description='3DSS-VLG', default_config=None, defaults=None):
    """Parse ``--config path [key value ...]`` (``argv`` defaults to sys.argv) into a CfgNode.

    ``defaults``: keys a script adds to a config made for another stage (query.py reads the evaluation
    config and adds its own keys); the YAML's value wins, and overrides are cast to the default's type."""
    args = get_parser(description, default_config).parse_args(argv)
    cfg = load_cfg_from_cfg_file(args.config)
    for key, value in (defaults or {}).items():
        cfg.setdefault(key, value)
    if args.opts:
        cfg = merge_cfg_from_list(cfg, args.opts)
    cfg.setdefault('config_file', args.config)
    return cfg
