"""Ask a trained ESG network free-text questions, segment with any label set, predict one's own scans.

    python query.py --config config/scannet/openseg_eval.yaml model_path exp/scannet/esg/best.pth \
        queries "chair;a soft place to sit" save_folder out/query [split val | scenes a,b | input scan.ply]
    python query.py --config config/demo/openseg_eval.yaml labels "sofa;lamp;plant" scenes scene0100_00
    python query.py --config config/demo/openseg_eval.yaml input my_room.ply          # one's own scan

The evaluation config (every key of it applies: test_repeats, voxel_size, model, text embeddings) plus the
keys of ``_query_keys`` (``python query.py --help``), given as ``key value`` overrides. Per scene and query
(``pipeline/query.py``: cosine similarity between the text embedding and the network's point embedding, averaged
over the test-time voxelisations):
    <scene>_<query slug>.ply    the points coloured by the heat map, a float 'score' per vertex, the scan's own
                                colours as scan_red / scan_green / scan_blue
    <scene>_<query slug>.png    from above: the scene's colours beside the heat map
    <scene>_queries.json        per query: score distribution, fraction above score_threshold, and with GT
                                (query = a class name) the precision of the top 10 % points and the class frequency
and per scene the segmentation with the label set (``labels``, default the config's classes; argmax of the
summed logits, evaluate.py's rule): <scene>_pred.npy (label index per point), <scene>_pred.ply ('label' per
vertex), <scene>_pred.png (colours, prediction, and GT and errors when the scene has GT); once: legend.png,
labels.json, query_summary.json and query_config.yaml (the resolved config; the viewer reads it).

Scenes: ``split`` (default the config's), ``scenes a,b`` (names within that split), or ``input`` a .ply / .pth
scan or a folder of them (dataset/scan_io.py: x y z and colours are read, voxelised as in training, every
point predicted; ``input_up_axis y`` for y-up scans, ``input_scale 0.001`` for millimetres). Scans with more
than ``max_voxels`` voxels in a voxelisation run in tiles (``pipeline.query.tiled_forward``).
"""
import json
import os

import numpy as np

from dataset.label_constants import IGNORE_LABEL, dataset_info
from pipeline import query as q
from pipeline import visualize as vis
from pipeline.networks import build_model
from pipeline.schemas import QUERY
from pipeline.stage import network_values, prediction, query_dataset, run_stage, text_source
from util.cli import run_cli
from util.io import atomic_np_save, atomic_write_text
from util.misc import Timer, set_seed

SCHEMA = QUERY


class SceneWriter:
    """Writes one scene's files (module docstring) and collects the per-scene summaries."""

    def __init__(self, cfg, info, labels, queries, palette, logger):
        self.cfg, self.info, self.labels, self.queries = cfg, info, labels, queries
        self.slugs = q.slugs(queries)
        self.palette = list(palette) + [vis.UNLABELED_COLOR]
        self.logger = logger
        self.crop = vis.ceiling_crop(cfg.topdown_ceiling_crop, info)
        # the query's class index in the *label set of the GT* (the config's), for the top-10 % precision
        self.query_class = [q.class_index(info, name) for name in queries]
        self.gt_table = q.gt_table(info, labels)  # None: the label set is the data set's classes
        self.scenes = {}

    def __call__(self, r):
        cfg, out = self.cfg, self.cfg.save_folder
        max_z = vis.ceiling_height(r.coords, self.crop) if self.crop > 0 else None
        view = vis.TopDown(r.coords, max_z=max_z)  # one raster for every picture of the scene
        files = {}
        # ---- segmentation with the label set
        atomic_np_save(os.path.join(out, f'{r.name}_pred.npy'), r.pred)
        pred_colors = vis.labels_to_colors(r.pred, self.palette)
        vis.write_ply(os.path.join(out, f'{r.name}_pred.ply'), r.file_coords, pred_colors, r.pred)
        panels = [('colours', r.colors), ('prediction', pred_colors)]
        shown = set(np.unique(r.pred).tolist())
        panel_legends = None
        names = self.labels + ['unlabeled (no 2D feature)']
        extra_legend = []
        if r.has_gt:
            gt_in_labels = self._gt_in_label_set(r.gt)
            if gt_in_labels is not None:
                panels.append(('ground truth', vis.labels_to_colors(gt_in_labels, self.palette)))
                shown |= set(np.unique(gt_in_labels[gt_in_labels != IGNORE_LABEL]).tolist())
                colors, categories = vis.error_colors(r.pred, gt_in_labels, len(self.labels), r.covered)
                panels.append(('errors', colors))
                panel_legends = {len(panels) - 1: categories}
                if (gt_in_labels == IGNORE_LABEL).any():
                    extra_legend.append(('ignored (no GT)', vis.IGNORED_COLOR))
        legend = [(names[c], self.palette[c]) for c in sorted(shown) if c <= len(self.labels)] + extra_legend
        vis.topdown_panels_png(os.path.join(out, f'{r.name}_pred.png'), r.coords, panels,
                               title=f'{r.name}: {len(self.labels)} labels ({cfg.feature_type})', legend=legend,
                               max_z=max_z, panel_legends=panel_legends, view=view)
        files['pred'] = [f'{r.name}_pred.npy', f'{r.name}_pred.ply', f'{r.name}_pred.png']
        # ---- queries: one colour scale for all queries of the scene, so that their maps compare
        per_query = {}
        lo, hi = q.scene_score_scale(r.scores, None if cfg.feature_type == 'distill' else r.covered)
        for k, (query, slug) in enumerate(zip(self.queries, self.slugs)):
            score = r.scores[:, k]
            stats = q.score_stats(score, cfg.score_threshold,
                                  covered=r.covered if cfg.feature_type != 'distill' else None,
                                  gt=r.gt if r.has_gt else None, class_id=self.query_class[k])
            missing = None if cfg.feature_type == 'distill' or r.covered is None else ~r.covered
            heat = vis.heat_colors(score, lo, hi, missing=missing)
            base = f'{r.name}_{slug}'
            vis.write_ply(os.path.join(out, base + '.ply'), r.file_coords, heat,
                          extra={'score': score, 'scan_red': r.colors[:, 0], 'scan_green': r.colors[:, 1],
                                 'scan_blue': r.colors[:, 2]})
            outline = None
            if r.has_gt and self.query_class[k] is not None and (r.gt == self.query_class[k]).any():
                outline = {1: (r.gt == self.query_class[k], f"GT {self.info.labels[self.query_class[k]]}")}
            vis.topdown_panels_png(os.path.join(out, base + '.png'), r.coords,
                                   [('colours', r.colors), (f'"{query}"', heat)], view=view, max_z=max_z,
                                   title=f'{r.name}: "{query}" ({cfg.feature_type}, cosine similarity)',
                                   colorbar=('inferno', lo, hi, "cosine similarity; one scale for the scene's "
                                             f"queries;\nline: score_threshold {cfg.score_threshold:g}"),
                                   colorbar_marks=[cfg.score_threshold], outlines=outline)
            per_query[query] = {'slug': slug, 'files': [base + '.ply', base + '.png'], 'color_scale': [lo, hi],
                                **stats}
            if 'top_precision' in stats:
                self.logger.info(f"{r.name} '{query}': top 10 % precision {stats['top_precision']:.3f} "
                                 f"(class frequency {stats['class_frequency']:.3f})")
        scene = {'scene': r.name, 'path': r.path, 'num_points': int(len(r.coords)), 'has_gt': r.has_gt,
                 'coverage': None if r.covered is None else float(r.covered.mean()),
                 'feature_type': cfg.feature_type, 'test_repeats': cfg.test_repeats, 'files': files,
                 'label_counts': {self.labels[c] if c < len(self.labels) else 'unlabeled': int(n)
                                  for c, n in zip(*np.unique(r.pred, return_counts=True))},
                 'queries': per_query}
        atomic_write_text(os.path.join(out, f'{r.name}_queries.json'), json.dumps(scene, indent=2))
        self.scenes[r.name] = scene

    def _gt_in_label_set(self, gt):
        """GT in the indices of the given label set: identical for the config's classes; for another set, the
        classes it shares by name are mapped and the rest ignored; None when it shares none."""
        if self.gt_table is None:
            return gt
        if (self.gt_table == IGNORE_LABEL).all():
            return None
        return self.gt_table[np.where(gt == IGNORE_LABEL, 255, gt)]


def score_against_gt(conf, info, labels, table, logger):
    """mIoU of the label set against GT: evaluate.py's number when the label set is the data set's classes; for
    another label set, over the names that are classes of the data set (matched by name; GT points of the other
    classes are not scored), saying which."""
    from pipeline.metric import evaluate_confusion
    result = evaluate_confusion(conf, labels)
    if table is None:
        logger.info(f"mIoU against GT {result['miou']:.4f} (the label set is the config's classes: evaluate.py's "
                    f"number)")
        return {'miou': result['miou'], 'scored_classes': list(labels)}
    scored = [labels[j] for j in sorted(set(table[table != IGNORE_LABEL].tolist()))]
    if not scored:
        logger.info(f"no name of the label set is a class of {info.name}'s GT, so nothing is scored against GT")
        return {'miou': None, 'scored_classes': []}
    present = [labels[j] for j in range(len(labels)) if result['present'][j]]
    unscored = [n for n in labels if n not in scored]
    others = f"; not classes of {info.name}, so not scored: {', '.join(unscored)}" if unscored else ''
    logger.info(f"mIoU against GT {result['miou_present']:.4f}: the mean IoU of the {len(present)} label(s) that are "
                f"classes of {info.name} and present in GT ({', '.join(present)}); GT points of the other classes are "
                f"not scored{others}")
    return {'miou': result['miou_present'], 'scored_classes': present,
            'iou': {n: float(result['iou'][j]) for j, n in enumerate(labels) if result['present'][j]}}


def main(argv=None):
    return run_stage(argv, SCHEMA, lambda cfg, stage: answer(cfg, stage.device, stage.logger), title='query',
                     record='query', folder='save_folder', sparse=True)


def answer(cfg, device, logger):
    set_seed(cfg.manual_seed)
    timer = Timer()
    info = dataset_info(cfg.labelset)
    queries = q.parse_names(cfg.queries, 'queries')
    labels = q.parse_names(cfg.labels, 'labels') or list(info.labels)
    if cfg.query_embeddings and cfg.labels and queries:
        raise ValueError('query_embeddings holds the rows of one list of names: give queries or labels with it, '
                         'not both')
    # query_embeddings holds the rows of the queries, or of the labels when there are no queries
    label_emb, label_sources = q.text_embeddings_for(text_source(cfg), info, labels, 'labels',
                                                     embeddings_path='' if queries else cfg.query_embeddings)
    query_emb, query_sources = q.text_embeddings_for(text_source(cfg), info, queries, 'queries',
                                                     embeddings_path=cfg.query_embeddings)
    dataset = query_dataset(cfg)
    if cfg.text_embeddings_path and any(src.startswith('open_clip') for src in label_sources + query_sources):
        logger.warning(f"the class rows come from the file text_embeddings_path '{cfg.text_embeddings_path}', the "
                       f"free text from open_clip {cfg.clip_model}: their scores compare only if that file holds "
                       f"{cfg.clip_model}'s text embeddings (the demo's file is a synthetic space no CLIP model "
                       f"encodes into)")

    model = None
    if cfg.feature_type == 'distill':
        model, state = build_model(cfg.model_path, network_values(cfg), device, logger.warning)
        logger.info(f"loaded '{cfg.model_path}' ({state['epoch']} epochs trained)")
    q.check_dimensions(cfg.feature_2d_extractor, cfg.feature_type, label_emb, query_emb)
    palette = q.label_palette(info, labels)
    atomic_write_text(os.path.join(cfg.save_folder, 'labels.json'), json.dumps(
        {'labels': labels, 'colors': [list(c) for c in palette], 'label_sources': label_sources,
         'queries': queries, 'query_sources': query_sources}, indent=2))
    vis.legend_png(os.path.join(cfg.save_folder, 'legend.png'),
                   list(zip(labels, palette)) + [('unlabeled (no 2D feature)', vis.UNLABELED_COLOR),
                                                 ('ignored (no GT)', vis.IGNORED_COLOR)],
                   title=f'{len(labels)} labels')
    logger.info(f"{len(dataset.data_paths)} scene(s), {len(queries)} query(ies), {len(labels)} labels, "
                f"feature_type {cfg.feature_type}, {cfg.test_repeats} voxelisation(s) -> '{cfg.save_folder}'")

    writer = SceneWriter(cfg, info, labels, queries, palette, logger)
    conf = q.run_scenes(prediction(cfg), model, dataset, label_emb, query_emb, device, writer, desc='query',
                        log=logger.info, gt_to_labels=writer.gt_table)
    summary = {'config_file': cfg.config_file, 'model_path': cfg.model_path if model is not None else None,
               'feature_type': cfg.feature_type, 'test_repeats': cfg.test_repeats, 'labels': labels,
               'queries': queries, 'scenes': writer.scenes, 'wall_time_s': timer.elapsed()}
    if any(s['has_gt'] for s in writer.scenes.values()):
        summary.update(score_against_gt(conf, info, labels, writer.gt_table, logger))
    atomic_write_text(os.path.join(cfg.save_folder, 'query_summary.json'), json.dumps(summary, indent=2))
    logger.info(f"done in {timer.elapsed():.1f} s: files in '{cfg.save_folder}'")
    return summary


if __name__ == '__main__':
    run_cli(main)
