"""How every stage starts and what it reads from its config: the one place (with util/config.py) that handles a
stage's ``cfg``. Library code below it takes plain values.

    def main(argv=None):
        return run_stage(argv, SCHEMA, train, title='ESG training', record='esg', folder='save_path',
                         distributed=True, sparse=True, resume_outputs=RUN_OUTPUTS, experiment_inputs=('esg_targets',))

``run_stage`` reads the config (file, ``_base_`` files, ``key value`` overrides, checked against the schema),
refuses an output folder outside the experiment, joins the process group under torchrun, locks the output
folder (``util.run_folder.RunFolder``) and, for a training stage, decides between a fresh run and a resume; it
applies the sparse-convolution settings and checks their packages, starts the log and the run record, then calls
``body(cfg, Stage)``.
"""
import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from pipeline.networks import NETWORK_KEYS
from pipeline.text_embeddings import TextSource
from util import distributed as du
from util.config import check_one_experiment, load_config
from util.misc import get_device
from util.run_folder import RunFolder


@dataclass
class Stage:
    """What a stage's body gets beside its config."""
    device: torch.device
    dist: du.DistInfo
    logger: Any
    folder: RunFolder


def run_stage(argv, schema, body: Callable, *, title: str, record: str, folder: str, distributed: bool = False,
              sparse: bool = False, resume_outputs: Optional[Sequence[str]] = None,
              experiment_inputs: Optional[Sequence[str]] = None, also_lock: Sequence[str] = ()):
    """Run one stage: ``body(cfg, Stage)``'s return value.

    ``title``: the stage in messages ('ESG training'); ``record``: the stem of its log, resolved config and run
    record (``<record>_config.yaml``); ``folder``: the key of its output folder. ``distributed``: under torchrun
    every process runs the body (rank 0 alone writes); ``sparse``: the stage runs a 3D network (the
    ``sparse_conv`` settings are applied and their package checked). ``resume_outputs``: a training stage's files;
    a fresh run into a folder holding any of them is refused unless ``resume`` / ``overwrite`` say otherwise, and
    ``cfg.resume`` becomes the checkpoint to continue from ('' = fresh). ``experiment_inputs``: keys whose
    folders must belong to the same experiment as the output folder. ``also_lock``: keys of further folders the
    stage writes (locked too, one writer at a time).
    """
    cfg = load_config(argv, schema)
    if experiment_inputs is not None:
        check_one_experiment(cfg, title, folder, tuple(experiment_inputs))
    dist_info, device = du.init_distributed(cfg.device) if distributed else (du.DistInfo(), get_device(cfg.device))
    try:
        with contextlib.ExitStack() as held:
            for key in also_lock:
                held.enter_context(RunFolder(cfg[key], title))
            run_folder = held.enter_context(RunFolder(cfg[folder], title, enabled=dist_info.rank == 0))
            if resume_outputs is not None:
                cfg.resume = run_folder.check_fresh_or_resume(resume=cfg.resume, overwrite=cfg.overwrite,
                                                              outputs=tuple(resume_outputs))
            facts = {}
            if distributed:
                du.barrier()  # no rank reads the folder before rank 0 has claimed it
                facts.update(local_world_size=int(os.environ.get('LOCAL_WORLD_SIZE', 1)),
                             processes=dist_info.world_size)
            if sparse:
                facts['sparse_conv'] = apply_sparse_settings(cfg)
            logger = run_folder.start(record, cfg, schema, device, rank=dist_info.rank, **facts)
            return body(cfg, Stage(device, dist_info, logger, run_folder))
    finally:
        if distributed:
            du.cleanup()


def sparse_settings(cfg):
    """Apply the config's sparse-convolution keys (models/sparse/settings.py); returns the settings."""
    from models.sparse.settings import CONFIG_KEYS, configure
    return configure(**{field: cfg[key] for field, key in CONFIG_KEYS.items()})


def apply_sparse_settings(cfg):
    """``sparse_settings``, then stop at once when the chosen implementation needs a package that is missing;
    returns the settings' description for the run record."""
    from models.sparse import dispatch
    settings = sparse_settings(cfg)
    dispatch.require()
    return settings.describe()


def network_values(cfg):
    """The config's network keys ({arch_3d, feature_2d_extractor, sparse_engine}) for ``pipeline.networks``."""
    return {key: cfg[key] for key in NETWORK_KEYS}


def text_source(cfg):
    """Where the config's text embeddings come from (its TEXT keys)."""
    return TextSource(embeddings_path=cfg.text_embeddings_path or '', model_name=cfg.clip_model,
                      pretrained=cfg.clip_pretrained or '', template=cfg.prompt_template or '',
                      cache_dir=cfg.text_cache_dir or '')


def class_text_embeddings(cfg, info, device='cpu'):
    """The text embeddings [C, D] of the config's label set."""
    return text_source(cfg).class_embeddings(info, device)


def eval_split(cfg, split):
    """The evaluation loader of ``split`` (``pipeline.inference.eval_dataset``) with the config's data keys."""
    from pipeline.inference import eval_dataset
    return eval_dataset(cfg.data_root, split, voxel_size=cfg.voxel_size, input_color=cfg.input_color,
                        seed=cfg.manual_seed, labelset=cfg.labelset)


def query_dataset(cfg):
    """The scenes a query answers (``pipeline.query.answer_dataset``) from the config's QUERY and data keys."""
    from pipeline.query import answer_dataset
    return answer_dataset(lambda: eval_split(cfg, cfg.split), cfg.input, cfg.scenes, voxel_size=cfg.voxel_size,
                          input_color=cfg.input_color, seed=cfg.manual_seed, up_axis=cfg.input_up_axis,
                          scale=cfg.input_scale, checks=cfg.input_checks)


def prediction(cfg):
    """How a query predicts (``pipeline.query.Prediction``) from the config's evaluation and QUERY keys."""
    from pipeline.query import Prediction
    return Prediction(feature_type=cfg.feature_type, test_repeats=cfg.test_repeats, seed=cfg.manual_seed,
                      voxel_size=cfg.voxel_size, fused_feature_root=cfg.data_root_2d_fused_feature,
                      ess_embedding_path=cfg.ess_embedding_path,
                      mark_no_feature_to_unknown=cfg.mark_no_feature_to_unknown,
                      amp=cfg.amp, workers=cfg.workers, max_voxels=cfg.max_voxels, tile_margin=cfg.tile_margin)
