"""What the viewer shows: scenes predicted and embedded through ``pipeline/query.py``, the path query.py takes.

A folder is resolved to (config, checkpoint):
- a query.py output folder: its ``query_config.yaml`` (the resolved config, checkpoint and scene choice);
- an evaluation result folder (``<exp>/result_eval``): the resolved evaluation config evaluate.py wrote there
  (``eval_config.yaml``), and ``<exp>/best.pth`` when it exists;
- an experiment folder (``<exp>`` with ``best.pth``): the evaluation config in ``<exp>/result_eval``.
``--config`` names the config instead. Scenes are computed when first shown (then kept): the label set's
prediction (evaluate.py's, voxelisations included) and, for the points shown, the mean unit embedding that
answers a new query with one product (``pipeline.query``).
"""
import glob
import os

import numpy as np
import torch
import yaml

from dataset.label_constants import dataset_info
from util.config import ConfigError, resolve_config


def _is_eval_config(path):
    try:
        with open(path) as f:
            tree = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return False
    keys = {k for section in (tree or {}).values() if isinstance(section, dict) for k in section}
    return {'test_repeats', 'model_path', 'save_folder'} <= keys


def resolve_folder(folder, config=None):
    """(config path, checkpoint path or '') of an experiment or result folder (module docstring)."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"viewer: folder '{folder}' does not exist")
    checkpoint = ''
    for candidate in (os.path.join(folder, 'best.pth'), os.path.join(os.path.dirname(folder), 'best.pth')):
        if os.path.isfile(candidate):
            checkpoint = candidate
            break
    if config:
        return config, checkpoint
    query_config = os.path.join(folder, 'query_config.yaml')
    if os.path.isfile(query_config):
        return query_config, ''  # it names its own checkpoint
    for where in (folder, os.path.join(folder, 'result_eval')):
        pattern = os.path.join(glob.escape(where), '*.yaml')  # the folder's name taken literally ('esg [v2]')
        found = sorted(p for p in glob.glob(pattern) if _is_eval_config(p))
        if len(found) == 1:
            return found[0], checkpoint
        if len(found) > 1:
            raise ConfigError(f"viewer: several evaluation configs in '{where}' "
                              f"({[os.path.basename(p) for p in found]}); choose one with --config")
    raise ConfigError(f"viewer: '{folder}' holds no query_config.yaml and no evaluation config (a .yaml with "
                      f"test_repeats, model_path, save_folder), nor does its result_eval; give --config")


def load_viewer_config(folder, config=None, overrides=()):
    """The evaluation (or query) config of ``folder``, read with query.py's keys, and ``key value`` overrides."""
    from pipeline.schemas import QUERY as SCHEMA
    path, checkpoint = resolve_folder(folder, config)
    return resolve_config(SCHEMA, path, (['model_path', checkpoint] if checkpoint else []) + list(overrides))


class ViewerData:
    """Scenes, their predictions and embeddings, and live queries against them."""

    def __init__(self, cfg, device='cpu', max_points=150_000, logger=None):
        from pipeline import query as q
        from pipeline.stage import query_dataset, text_source
        self.cfg, self.device, self.max_points, self.logger = cfg, torch.device(device), int(max_points), logger
        self.info = dataset_info(cfg.labelset)
        self.labels = q.parse_names(cfg.labels, 'labels') or list(self.info.labels)
        self.palette = q.label_palette(self.info, self.labels)
        self.label_emb, _ = q.text_embeddings_for(text_source(cfg), self.info, self.labels, 'labels')
        q.check_dimensions(cfg.feature_2d_extractor, cfg.feature_type, self.label_emb, torch.zeros(0))
        self.dataset = query_dataset(cfg)
        self.model = None
        if cfg.feature_type == 'distill':
            from pipeline.networks import build_model
            from pipeline.stage import network_values
            self.model, _ = build_model(cfg.model_path, network_values(cfg), self.device,
                                        (logger.warning if logger else print))
        self.names = [self.dataset.scene_name(i) for i in range(len(self.dataset.data_paths))]
        self._scenes = {}
        self._text_cache = {}

    def _rows(self, index, num_points):
        """The points shown (and embedded): all, or a seeded random subset of ``max_points``."""
        if num_points <= self.max_points:
            return np.arange(num_points)
        rng = np.random.default_rng([int(self.cfg.manual_seed), index])
        return np.sort(rng.choice(num_points, self.max_points, replace=False))

    def scene(self, name):
        """The ``SceneResult`` of scene ``name`` (computed once), with float16 embeddings of its shown points."""
        from pipeline import query as q
        from pipeline.stage import prediction
        if name in self._scenes:
            return self._scenes[name]
        if name not in self.names:
            raise KeyError(f"unknown scene '{name}'")
        index = self.names.index(name)
        results = []
        subset = q.SceneSubset(self.dataset, [index])
        q.run_scenes(prediction(self.cfg), self.model, subset, self.label_emb, torch.zeros(0, self.label_emb.shape[1]),
                     self.device, results.append, keep_rows=lambda _i, n: self._rows(index, n),
                     desc=f'viewer: {name}')
        result = results[0]
        result.embedding = result.embedding.astype(np.float16)  # half the memory; scores keep 3 decimals
        self._scenes[name] = result
        return result

    def text_embedding(self, text):
        """Unit text embedding of a query (a class name: evaluate.py's row; else open_clip or query_embeddings)."""
        from pipeline import query as q
        from pipeline.stage import text_source
        key = text.strip()
        if key not in self._text_cache:
            emb, sources = q.text_embeddings_for(text_source(self.cfg), self.info, [key], 'query')
            if emb.shape[1] != self.label_emb.shape[1]:
                raise ValueError(f"query embedding of dimension {emb.shape[1]}, the scene's features are "
                                 f"{self.label_emb.shape[1]}-d")
            self._text_cache[key] = (emb[0].numpy().astype(np.float32), sources[0])
        return self._text_cache[key]

    def query(self, name, text):
        """Scores [M] of the shown points of scene ``name`` (the same numbers query.py writes for them) and
        where the text embedding came from."""
        result = self.scene(name)
        emb, source = self.text_embedding(text)
        scores = np.empty(len(result.embedding_rows), np.float32)
        for s in range(0, len(scores), 100_000):  # float32 products of float16 rows, chunk by chunk
            scores[s:s + 100_000] = result.embedding[s:s + 100_000].astype(np.float32) @ emb
        return scores, source
