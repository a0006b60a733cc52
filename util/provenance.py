"""Provenance of derived files: what produced an output, so a rerun never reuses a stale one.

A stage that skips work already done (PLG with ``overwrite False``, ESS inference) keeps a manifest
beside its outputs, ``<folder>/<stage>_manifest.jsonl``: one JSON line per finished scene with
- the settings that shape the output (e.g. voxel size, the scene's tags, a digest of the text embeddings,
  the adapter's weights), and the code version that ran;
- the content digest (SHA-1) of every input file (3D scene, fused-feature files), with its size and
  modification time, so an unchanged file is recognised without reading it again;
- the same for every output file, so an output changed or replaced behind the stage's back is noticed.
A scene is reused only when all of these match; otherwise the stage says why and recomputes it.
Lines are appended as scenes finish (a crash loses at most the scenes whose line was not written,
which are then recomputed) and the file is rewritten compactly when the stage ends.
"""
import hashlib
import json
import os
import subprocess
import time
from functools import lru_cache

import numpy as np

from util.io import atomic_write_text

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@lru_cache(maxsize=1)
def code_version():
    """'git <commit>' (+ ' (uncommitted changes)') of this checkout, or a note why it is unknown."""
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=_REPO_ROOT, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return 'unknown (not a git checkout)'
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=_REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return f"git {commit.stdout.strip()}" + (' (uncommitted changes)' if dirty.stdout.strip() else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown (git not available)'


def file_digest(path, known=None):
    """``{'size', 'mtime_ns', 'sha1'}`` of a file; the SHA-1 of ``known`` (an earlier digest of the same
    path) is reused when size and modification time are unchanged."""
    st = os.stat(path)
    if known and known.get('size') == st.st_size and known.get('mtime_ns') == st.st_mtime_ns:
        return dict(known)
    sha = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            sha.update(block)
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns, 'sha1': sha.hexdigest()}


def files_fingerprint(paths):
    """SHA-1 of the names, sizes and modification times of many files (e.g. the thousands of RGB-D frames of
    a scene, too many to hash by content on every run); a missing file counts as such."""
    sha = hashlib.sha1()
    for path in sorted(os.path.abspath(p) for p in paths):
        try:
            st = os.stat(path)
            sha.update(f'{path}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
        except FileNotFoundError:
            sha.update(f'{path}\0missing\n'.encode())
    return sha.hexdigest()


def array_digest(array):
    """SHA-1 of an array's dtype, shape and bytes (e.g. the text embeddings a stage used)."""
    array = np.ascontiguousarray(np.asarray(array))
    sha = hashlib.sha1(f'{array.dtype}{array.shape}'.encode())
    sha.update(array.tobytes())
    return sha.hexdigest()


def _diff(old, new):
    keys = sorted(set(old) | set(new))
    return ', '.join(f'{k}: {old.get(k, "<absent>")!r} -> {new.get(k, "<absent>")!r}'
                     for k in keys if old.get(k) != new.get(k))


class StaleInputError(ValueError):
    """A stage's input is another stage's output made from inputs that have changed since."""


def check_upstream(folder, stage, scenes, consumer, refresh, current_inputs=None):
    """Refuse when outputs of ``stage`` in ``folder`` that ``consumer`` is about to read are stale.

    ``scenes``: the names the consumer reads. The upstream manifest (``<folder>/<stage>_manifest.jsonl``) records,
    per scene, the digests of the inputs it was made from and of its outputs; a scene is stale when it has no
    record, or a recorded input or output is gone or has other contents now (a feature file re-fused, the adapter
    retrained, a label file edited). ``refresh``: the command that brings the stage up to date (it recomputes the
    stale scenes only). ``current_inputs(scene)``: the files such a scene would be made from now (e.g. its
    fused-feature files); one that lies in the folder of a recorded input but is not recorded appeared after the
    upstream stage ran (a second view's features fused later), so the scene is stale too. A folder without a manifest
    was not made by a stage of this project (e.g. OpenScene's released features) and is not checked: returns False;
    True when checked."""
    path = os.path.join(folder, f'{stage}_manifest.jsonl')
    if not os.path.isfile(path):
        return False
    entries, _ = read_manifest(path)
    stale = []
    for scene in scenes:
        why = _stale_reason(entries.get(scene), current_inputs(scene) if current_inputs else ())
        if why:
            stale.append(f'{scene} ({why})')
    if stale:
        raise StaleInputError(
            f"{consumer} reads the {stage} outputs in '{folder}', but {len(stale)} of {len(scenes)} scene(s) are "
            f"stale: {'; '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}. Bring that stage up to date first "
            f"(it recomputes only the stale scenes): {refresh}")
    return True


def read_manifest(path):
    """({scene: its latest entry}, number of lines) of a manifest file; a line cut by a crash is skipped (that
    scene then counts as having no record)."""
    entries, lines = {}, 0
    if not os.path.isfile(path):
        return entries, lines
    with open(path) as f:
        for line in f:
            lines += 1
            try:
                entry = json.loads(line)
                entries[entry['scene']] = entry
            except (ValueError, KeyError, TypeError):
                continue
    return entries, lines


def refresh_command(script, folder, config_name, driver):
    """The command that reruns a stage with the settings of its last run: its resolved config in ``folder`` when
    there is one (``python <script> --config <folder>/<config_name>``), else its driver with a placeholder."""
    config = os.path.join(folder, config_name)
    if os.path.isfile(config):
        return f'python {script} --config {config}'
    return f'sh {driver} {folder} <its config>'


def _stale_reason(entry, current_inputs=()):
    if entry is None:
        return 'no provenance record: written by an interrupted run or an older version'
    recorded = set(entry.get('inputs') or {})
    folders = {os.path.dirname(f) for f in recorded}
    for file in map(os.path.abspath, current_inputs):
        if file not in recorded and os.path.dirname(file) in folders:
            return f"'{file}' appeared after it was made (not one of its inputs)"
    for kind in ('inputs', 'outputs'):
        for file, known in (entry.get(kind) or {}).items():
            if not os.path.isfile(file):
                return f"its {kind[:-1]} '{file}' is gone"
            if file_digest(file, known)['sha1'] != known.get('sha1'):
                return f"its {kind[:-1]} '{file}' changed since"
    return ''


class OutputManifest:
    """Per-scene provenance of a folder's outputs (see the module docstring).

    ``settings``: JSON-able values shared by every scene of this run. Per scene, ``check`` says whether the
    existing outputs may be reused, and ``record`` stores a finished scene.
    """

    def __init__(self, folder, stage, settings):
        self.folder, self.stage = folder, stage
        self.path = os.path.join(folder, f'{stage}_manifest.jsonl')
        self.settings = json.loads(json.dumps(settings))  # normalised as it will read back
        self.entries, self._lines = read_manifest(self.path)
        os.makedirs(folder, exist_ok=True)
        self._append = open(self.path, 'a')

    def check(self, scene, inputs, outputs, scene_settings=None):
        """-> (True, '') if the outputs of ``scene`` exist and come from these inputs and settings; else
        (False, why). ``inputs`` / ``outputs``: file paths."""
        missing = [p for p in outputs if not os.path.isfile(p)]
        if missing:
            return False, f"output '{missing[0]}' does not exist"
        entry = self.entries.get(scene)
        if entry is None:
            return False, (f"no provenance record in '{self.path}' (written by an interrupted run or an older "
                           f"version), so it cannot be trusted")
        settings = dict(self.settings, **(scene_settings or {}))
        if entry.get('settings') != settings:
            return False, f"settings changed since it was written ({_diff(entry.get('settings') or {}, settings)})"
        known_inputs = entry.get('inputs', {})
        if sorted(known_inputs) != sorted(os.path.abspath(p) for p in inputs):
            return False, (f"its input files changed (was {sorted(known_inputs)}, now "
                           f"{sorted(os.path.abspath(p) for p in inputs)})")
        for path in inputs:
            old = known_inputs[os.path.abspath(path)]
            if file_digest(path, old)['sha1'] != old['sha1']:
                return False, f"input '{path}' changed since it was written"
        known_outputs = entry.get('outputs', {})
        for path in outputs:
            old = known_outputs.get(os.path.abspath(path))
            if old is None or file_digest(path, old)['sha1'] != old['sha1']:
                return False, f"output '{path}' was modified after it was written"
        return True, ''

    def record(self, scene, inputs, outputs, scene_settings=None):
        """Store a finished scene: call after its outputs are written."""
        known = self.entries.get(scene, {})
        entry = {'scene': scene, 'settings': dict(self.settings, **(scene_settings or {})),
                 'inputs': {os.path.abspath(p): file_digest(p, known.get('inputs', {}).get(os.path.abspath(p)))
                            for p in inputs},
                 'outputs': {os.path.abspath(p): file_digest(p) for p in outputs},
                 'code': code_version(), 'time': time.strftime('%Y-%m-%d %H:%M:%S')}
        self.entries[scene] = entry
        self._append.write(json.dumps(entry) + '\n')
        self._append.flush()
        self._lines += 1

    def close(self):
        """Rewrite the manifest with one line per scene (the latest), if it holds more."""
        if self._append is None:
            return
        self._append.close()
        self._append = None
        if self._lines != len(self.entries):
            atomic_write_text(self.path, ''.join(json.dumps(e) + '\n' for e in self.entries.values()))
            self._lines = len(self.entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
