"""Configs: YAML files that inherit (``_base_``), a schema per stage, ``key value`` / ``key=value`` overrides.

    python train_esg.py --config config/scannet/openseg_train.yaml base_lr 0.001 epochs=10
    python train_esg.py --help          # every key of the stage: type, default, one line of help

A YAML file holds sections (``DATA:``, ``TRAIN:`` ...) whose keys are flattened into one namespace, as
upstream's configs. ``_base_: dataset.yaml`` (or a list of files, paths relative to the including file) is
read first and the file's own keys override it, so a stage file lists only what differs from its dataset
file and from the stage's defaults. String values may refer to other keys as ``${key}`` (e.g.
``save_path: ${exp_root}/esg``), resolved after the overrides.

Each stage declares its keys once (``Schema`` of ``Key``: type, default, help, check). Mistakes are errors
when the config is loaded, never epochs later: a key the stage does not know (with "did you mean ...?"),
the same key twice in one file, a value of the wrong type, ``None`` for a key that needs a value, a value
that makes no sense (``epochs 0``, a negative learning rate), a placeholder path (``/PATH/TO/...``) or a
missing input folder.
"""
import argparse
import ast
import copy
import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

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


# ----------------------------------------------------------------------------- schema
REQUIRED = object()  # default of a key the config must give
PLACEHOLDER = '/PATH/TO/'


@dataclass(frozen=True)
class Key:
    """One config key of a stage.

    ``type``: str, int, float, bool or list (``item``: the type of list elements). ``default`` REQUIRED makes
    the key mandatory; ``nullable`` allows None. ``check(value) -> bool`` with ``must`` saying what the value
    must be. ``exists``: 'dir' / 'file' for an input that must exist when the config is loaded ('' and None
    skip the check), with ``hint`` telling how to make it.
    """
    name: str
    type: type
    default: Any = REQUIRED
    help: str = ''
    section: str = ''
    item: Optional[type] = None
    nullable: bool = False
    check: Optional[Callable[[Any], bool]] = None
    must: str = ''
    exists: str = ''
    hint: str = ''

    def describe_type(self):
        if self.type is list:
            return f'list of {self.item.__name__}' if self.item else 'list'
        return self.type.__name__ + (' or None' if self.nullable else '')


@dataclass
class Schema:
    """The keys of one stage (``keys``) and an example command line that is valid for it (``--help``)."""
    stage: str
    keys: list = field(default_factory=list)
    example: str = ''

    def __post_init__(self):
        names = [k.name for k in self.keys]
        twice = {n for n in names if names.count(n) > 1}
        if twice:
            raise ValueError(f'schema {self.stage}: keys declared twice: {sorted(twice)}')
        self.by_name = {k.name: k for k in self.keys}

    def suggest(self, name):
        close = difflib.get_close_matches(name, list(self.by_name), n=3, cutoff=0.6)
        return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ''

    def help_text(self, prog):
        lines = [f'{self.stage}', '', f'usage: python {prog} --config <file.yaml> [key value | key=value ...]']
        if self.example:
            lines += ['', 'example:', f'  {self.example}']
        lines += ['', 'keys (YAML sections are only for reading; every key is one name):']
        sections = list(dict.fromkeys(k.section for k in self.keys))
        width = max(len(k.name) for k in self.keys)
        for section in sections:
            lines.append(f'  [{section}]' if section else '  [other]')
            for key in (k for k in self.keys if k.section == section):
                default = 'required' if key.default is REQUIRED else repr(key.default)
                lines.append(f'    {key.name:<{width}} {key.describe_type():<14} {default:<28} {key.help}')
        return '\n'.join(lines)


# ----------------------------------------------------------------------------- reading YAML files
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


def _read_yaml(path):
    if os.path.isdir(path):
        raise ConfigError(f"config file '{path}' is a directory, expected a .yaml file")
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}'{_resolved(path)} does not exist")
    if not path.endswith(('.yaml', '.yml')):
        raise ConfigError(f"config file '{path}' is not a .yaml file")
    with open(path) as f:
        try:
            tree = yaml.load(f, Loader=_UniqueKeyLoader)
        except ConfigError as err:
            raise ConfigError(f'{path}: {err}') from None
        except yaml.YAMLError as err:
            raise ConfigError(f'{path} is not valid YAML: {err}') from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file '{path}' must hold sections (a mapping), found {type(tree).__name__}")
    _check_size(tree, path)
    return tree


MAX_CONFIG_VALUES = 100_000  # a config holds a few hundred values; YAML aliases can make billions of them


def _check_size(tree, path):
    """Refuse a config that expands to more than MAX_CONFIG_VALUES values (YAML aliases nested into each other,
    a 'billion laughs'), counting until the limit, before anything walks it."""
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"config file '{path}' expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases "
                              f"nested into each other?); a config holds a few hundred")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load_yaml(path, _chain=()):
    """A config file with its ``_base_`` files -> (flat dict of values, {key: (file, section)})."""
    path = os.path.normpath(path)
    if os.path.abspath(path) in _chain:
        raise ConfigError(f"config '{path}' includes itself through _base_ ({' -> '.join(_chain)})")
    tree = _read_yaml(path)
    bases = tree.pop('_base_', [])
    values, origin = {}, {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        if not isinstance(base, str):
            raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, found {base!r}")
        base_values, base_origin = load_yaml(os.path.join(os.path.dirname(path), base),
                                             _chain + (os.path.abspath(path),))
        values.update(base_values)
        origin.update(base_origin)
    own = {}
    for section, entries in tree.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: top-level entry '{section}' must be a section of keys, "
                              f"found {type(entries).__name__}")
        for key, value in entries.items():
            if key in own:
                raise ConfigError(f"{path}: key '{key}' is defined in both section '{own[key]}' and section "
                                  f"'{section}'")
            own[key] = section
            values[key], origin[key] = value, (path, section)
    return values, origin


# ----------------------------------------------------------------------------- values
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


def _coerce(key, value, where):
    """``value`` (from YAML, or parsed from the command line) as the key's type, or a ConfigError."""
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(f"{where}config key '{key.name}' cannot be None: give a {key.describe_type()}"
                          + (" ('' for none)" if key.type is str else ''))
    t = key.type
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif t is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        if key.item is None:
            return list(items)
        try:
            return [_coerce(Key(key.name, key.item), v, where) for v in items]
        except ConfigError:
            pass
    kind = key.describe_type()
    raise ConfigError(f"{where}config key '{key.name}' must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                      f"found {value!r}")


def _cast_text(key, text):
    """A command-line value for ``key``: strings stay as typed; other types are parsed as Python literals."""
    if key.type is str:
        return None if text.strip().lower() in ('none', 'null', '~') else text
    if key.type is list and key.item is str and not text.strip().startswith('['):
        return [s for s in text.split(',') if s]
    return _parse_literal(text)


_REFERENCE = re.compile(r'\$\{(\w+)\}')


def _interpolate(cfg):
    """Replace ``${key}`` in string values (and lists of strings) by that key's value, recursively."""
    def resolve(name, text, seen):
        def one(m):
            ref = m.group(1)
            if ref not in cfg:
                raise ConfigError(f"config key '{name}' refers to '${{{ref}}}', which is not a key of this stage")
            if ref in seen:
                raise ConfigError(f"config keys refer to each other in a circle: {' -> '.join(seen + (ref,))}")
            value = cfg[ref]
            return resolve(ref, value, seen + (ref,)) if isinstance(value, str) else str(value)
        return _REFERENCE.sub(one, text)

    for name, value in cfg.items():
        if isinstance(value, str):
            cfg[name] = resolve(name, value, (name,))
        elif isinstance(value, list):
            cfg[name] = [resolve(name, v, (name,)) if isinstance(v, str) else v for v in value]
    return cfg


def _check_values(cfg, schema, origin):
    def where(name):
        src = origin.get(name)
        return f"{src[0]}: " if isinstance(src, tuple) else 'command line: ' if src == 'override' else ''

    for key in schema.keys:
        value = cfg.get(key.name)
        if value is REQUIRED:
            continue
        if isinstance(value, str) and PLACEHOLDER in value:
            raise ConfigError(f"{where(key.name)}config key '{key.name}' is still the placeholder '{value}': set "
                              f"it to your path before running")
        if key.check is not None and value is not None and not key.check(value):
            raise ConfigError(f"{where(key.name)}config key '{key.name}' must be {key.must}, found {value!r}")
    for key in schema.keys:
        if cfg.get(key.name) is REQUIRED:
            raise ConfigError(f"{schema.stage}: config key '{key.name}' is required ({key.help}); set it in the "
                              f"config file or on the command line ({key.name} <value>)")
    # inputs last: a wrong value is reported before a missing folder it may explain
    for key in schema.keys:
        value = cfg.get(key.name)
        if key.exists and value:
            ok = os.path.isdir(value) if key.exists == 'dir' else os.path.isfile(value)
            if not ok:
                what = 'folder' if key.exists == 'dir' else 'file'
                if os.path.exists(value):  # the other kind: no hint to run a stage that did run
                    found = 'a folder' if os.path.isdir(value) else 'a file'
                    raise ConfigError(f"{where(key.name)}config key '{key.name}': '{value}'{_resolved(value)} is "
                                      f"{found}, expected a {what}")
                raise ConfigError(f"{where(key.name)}config key '{key.name}': {what} '{value}'{_resolved(value)} does "
                                  f"not exist" + (f'; {key.hint}' if key.hint else ''))


def _resolved(path):
    """For a relative path: where it was looked for (relative paths are taken from the current folder)."""
    path = os.fspath(path)
    return '' if os.path.isabs(path) else f" (looked for as '{os.path.abspath(path)}', from the current folder)"


def resolve_config(schema, config_path, overrides=()):
    """The stage's config: ``config_path`` (with its ``_base_`` files), the schema's defaults for keys it does
    not set, then the overrides (a flat list of ``key value`` pairs and ``key=value`` items), checked."""
    values, origin = load_yaml(config_path)
    for name in values:
        if name not in schema.by_name:
            file, section = origin[name]
            raise ConfigError(f"{file}: unknown config key '{name}' (section '{section}') for "
                              f"{schema.stage}{schema.suggest(name)}")
    cfg = CfgNode({k.name: k.default for k in schema.keys})
    for name, value in values.items():
        cfg[name] = _coerce(schema.by_name[name], value, f'{origin[name][0]}: ')
    for full_key, text in _pairs(overrides):
        section, _, name = full_key.rpartition('.')  # upstream accepts SECTION.key as well as key
        key = schema.by_name.get(name)
        if key is None:
            raise ConfigError(f"unknown config key '{full_key}' for {schema.stage}{schema.suggest(name)} "
                              f"(python <script> --help lists the keys)")
        known_section = origin.get(name, ('', key.section))[1] if isinstance(origin.get(name), tuple) else key.section
        if section and section not in (known_section, key.section):
            raise ConfigError(f"config key '{full_key}': '{name}' is in section '{known_section or key.section}', "
                              f"not '{section}'")
        cfg[name] = _coerce(key, _cast_text(key, str(text)), 'command line: ')
        origin[name] = 'override'
    from_exp_root = frozenset(n for n, v in cfg.items() if isinstance(v, str) and '${exp_root}' in v)
    _interpolate(cfg)
    _check_values(cfg, schema, origin)
    cfg['config_file'] = config_path
    object.__setattr__(cfg, 'from_exp_root', from_exp_root)  # not a key: which values came from ${exp_root}
    return cfg


def check_one_experiment(cfg, stage, folder_key, keys):
    """Refuse a stage whose folder (``cfg[folder_key]``, e.g. the driver's output folder) lies outside its
    experiment folder ``exp_root`` while some of ``keys`` (the inputs or outputs it shares with the other
    stages) still come from ``${exp_root}``: the stage would write one experiment and read, or write, another's."""
    root, folder = cfg.get('exp_root'), cfg.get(folder_key)
    if not root or not folder:
        return
    inside = os.path.commonpath([os.path.abspath(root), os.path.abspath(folder)]) == os.path.abspath(root)
    shared = [k for k in keys if k in getattr(cfg, 'from_exp_root', ()) and cfg.get(k)]
    if inside or not shared:
        return
    raise ConfigError(
        f"{stage}: its folder {folder_key} '{folder}' lies outside the experiment folder exp_root '{root}', but "
        + ', '.join(f"{k} '{cfg[k]}'" for k in shared) + f" would come from that experiment, i.e. another "
        f"experiment's files. Keep one experiment in one folder: give every stage exp_root <experiment> (then this "
        f"stage's folder is <experiment>/...), or set {', '.join(shared)} to the path you mean")


def _pairs(opts):
    """``['a', '1', 'b=2']`` -> [('a', '1'), ('b', '2')]."""
    opts, pairs, i = list(opts), [], 0
    while i < len(opts):
        item = str(opts[i])
        if '=' in item and not item.startswith('='):
            name, _, text = item.partition('=')
            pairs.append((name, text))
            i += 1
            continue
        if i + 1 >= len(opts):
            raise ConfigError(f"override '{item}' has no value: give `key value` or `key=value`")
        pairs.append((item, str(opts[i + 1])))
        i += 2
    return pairs


def dump_config(cfg, schema, header=''):
    """The resolved config as YAML (sections as in the schema): ``--config`` on it reruns the same settings."""
    sections = {}
    for key in schema.keys:
        if key.name in cfg:
            sections.setdefault(key.section or 'OTHER', {})[key.name] = cfg[key.name]
    body = yaml.safe_dump(sections, sort_keys=False, default_flow_style=None, width=120)
    return ''.join(f'# {line}\n' for line in header.splitlines()) + body


# ----------------------------------------------------------------------------- command line
class _SchemaHelp(argparse.Action):
    def __init__(self, option_strings, schema, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest=dest, nargs=0, **kwargs)
        self.schema = schema

    def __call__(self, parser, namespace, values, option_string=None):
        print(self.schema.help_text(parser.prog))
        parser.exit()


def load_config(argv, schema, default_config=None):
    """Parse ``--config path [key value | key=value ...]`` (``argv`` defaults to sys.argv[1:]) for ``schema``."""
    parser = argparse.ArgumentParser(description=schema.stage, add_help=False,
                                     prog=os.path.basename(sys.argv[0]) if argv is None else schema.stage)
    parser.add_argument('-h', '--help', action=_SchemaHelp, schema=schema, help='list the keys of this stage')
    parser.add_argument('--config', type=str, default=default_config, required=default_config is None,
                        help='YAML config file')
    parser.add_argument('opts', nargs=argparse.REMAINDER, default=None,
                        help='`key value` or `key=value` overrides of the config')
    args = parser.parse_args(argv)
    return resolve_config(schema, args.config, args.opts or ())
