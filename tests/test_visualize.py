"""pipeline/visualize.py: top-down pictures sized by the point density with holes filled, the ceiling crop, the
error panel, distinct colours for ignored / unlabeled / S3DIS clutter, bar charts with values and stages."""
import json
import logging
import os

import numpy as np
import pytest

from dataset.label_constants import IGNORE_LABEL, UNLABELED_COLOR, dataset_info
from pipeline import visualize as vis


def floor_grid(step=0.05, size=2.0, jitter=0.0, seed=0):
    g = np.arange(0, size, step)
    x, y = np.meshgrid(g, g)
    pts = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], 1)
    if jitter:
        pts[:, :2] += np.random.default_rng(seed).uniform(-jitter, jitter, (len(pts), 2))
    return pts


def test_pixel_follows_point_spacing_and_holes_are_filled():
    pts = floor_grid(step=0.05, jitter=0.015)
    view = vis.TopDown(pts, max_pixels=1000)
    assert view.pixel == pytest.approx(vis.point_spacing(pts))
    assert 0.03 < view.pixel < 0.06          # the sampling step, not 0.8x the mean spacing
    colors = np.tile(np.array([[200, 10, 10]], np.uint8), (len(pts), 1))
    image = view.image(colors)
    inner = image[2:-2, 2:-2]
    assert (inner == [200, 10, 10]).all()   # jitter leaves empty pixels; the fill closes them
    unfilled = vis.TopDown(pts, max_pixels=1000, fill=0).image(colors)[2:-2, 2:-2]
    assert (unfilled == vis.BACKGROUND).all(2).mean() > 0.05  # the holes the fill closed
    # a real gap (a 40 cm corridor cut out of the floor) stays empty: only small holes are filled
    gap = pts[~((pts[:, 0] > 0.8) & (pts[:, 0] < 1.2))]
    image = vis.TopDown(gap, max_pixels=1000).image(colors[:len(gap)])
    middle = image[:, int(0.95 / view.pixel):int(1.05 / view.pixel)]
    assert (middle == vis.BACKGROUND).all()
    # a dense cloud keeps max_pixels on its long side
    assert max(vis.TopDown(floor_grid(step=0.005, size=1.0), max_pixels=100).shape) <= 101


def test_subsampled_spacing_estimate_matches_the_full_one():
    pts = floor_grid(step=0.02, size=4.0, jitter=0.005)
    assert vis.point_spacing(pts, max_queries=5000) == pytest.approx(vis.point_spacing(pts), rel=0.05)


def test_ceiling_crop_shows_the_room_under_the_ceiling():
    floor = floor_grid(step=0.05)
    ceiling = floor + [0, 0, 3.0]
    pts = np.concatenate([floor, ceiling])
    colors = np.concatenate([np.tile([[0, 0, 255]], (len(floor), 1)),
                             np.tile([[255, 0, 0]], (len(ceiling), 1))]).astype(np.uint8)
    seen = vis.TopDown(pts).image(colors)
    assert (seen[3:-3, 3:-3] == [255, 0, 0]).all()          # from above: the ceiling alone
    cut = vis.ceiling_height(pts, 0.5)
    assert 2.4 < cut < 2.6
    seen = vis.TopDown(pts, max_z=cut).image(colors)
    assert (seen[3:-3, 3:-3] == [0, 0, 255]).all()          # cropped: the floor
    assert vis.ceiling_crop(-1, dataset_info('s3dis')) == 0.5 and vis.ceiling_crop(-1, dataset_info('scannet')) == 0
    assert vis.ceiling_crop(0.3, dataset_info('scannet')) == 0.3


def test_error_panel_categories():
    pred = np.array([1, 2, 1, 2, 20, 3])
    gt = np.array([1, 1, 1, 1, 1, IGNORE_LABEL])
    covered = np.array([True, True, False, False, False, True])
    colors, legend = vis.error_colors(pred, gt, 20, covered)
    table = dict(vis.ERROR_CATEGORIES)
    expect = ['correct', 'wrong', 'correct, no 2D feature', 'wrong, no 2D feature', 'no 2D feature, not predicted',
              'ignored (no GT)']
    assert [tuple(c) for c in colors] == [table[e] for e in expect]
    assert [name for name, _ in legend] == expect
    assert len({rgb for _, rgb in vis.ERROR_CATEGORIES}) == len(vis.ERROR_CATEGORIES)
    # without coverage information there are no 'no 2D feature' categories
    _, legend = vis.error_colors(pred[:2], gt[:2], 20)
    assert [name for name, _ in legend] == ['correct', 'wrong']


def test_ignored_unlabeled_and_clutter_are_told_apart():
    info = dataset_info('s3dis')
    palette = info.palette_with_unlabeled()
    colors = vis.labels_to_colors([12, info.num_classes, IGNORE_LABEL], palette).astype(int)
    clutter, unlabeled, ignored = colors
    assert tuple(unlabeled) == UNLABELED_COLOR and tuple(ignored) == vis.IGNORED_COLOR
    for a, b in ((clutter, unlabeled), (clutter, ignored), (ignored, unlabeled)):
        assert np.abs(a - b).sum() > 150, (a, b)
    for name in ('scannet', 's3dis'):  # no class colour is the ignored grey or the unlabeled black
        for c in dataset_info(name).palette:
            assert np.abs(np.array(c) - vis.IGNORED_COLOR).sum() > 60
            assert np.abs(np.array(c) - UNLABELED_COLOR).sum() > 60


def test_bar_chart_values_and_stages(tmp_path):
    from pipeline.metric import evaluate
    names = ['wall', 'floor', 'chair']
    result = evaluate(np.array([0, 0, 1, 1, 2, 1]), np.array([0, 0, 1, 1, 2, 2]), names)
    texts = vis.iou_bar_chart(result, str(tmp_path / 'one.png'))
    assert texts == [f'{v:.2f}' for v in result['iou']]
    compare = [('PLG', {'wall': 0.5, 'floor': 0.25, 'chair': None}),
               ('ESS', {'wall': 0.75, 'floor': 0.5, 'chair': 0.1})]
    texts = vis.iou_bar_chart(result, str(tmp_path / 'three.png'), compare=compare)
    assert texts == ['0.50', '0.25', '-', '0.75', '0.50', '0.10'] + [f'{v:.2f}' for v in result['iou']]
    assert os.path.getsize(tmp_path / 'three.png') > 0


def test_evaluate_reads_stage_metrics_only_of_the_same_data(tmp_path):
    from evaluate import STAGE_ROWS, stage_comparison
    logger = logging.getLogger('test')
    path = str(tmp_path / 'ess_eval_metrics.json')
    rows = {key: {'iou_all_points': {'wall': 0.5}, 'num_points': 100} for _, key in STAGE_ROWS}
    with open(path, 'w') as f:
        json.dump({'val': rows}, f)
    cfg = {'stage_metrics': path, 'split': 'val'}

    class Cfg(dict):
        __getattr__ = dict.__getitem__
    got = stage_comparison(Cfg(cfg), logger, 100)
    assert [name for name, _ in got] == [name for name, _ in STAGE_ROWS]
    assert stage_comparison(Cfg(cfg), logger, 99) == []            # other data
    assert stage_comparison(Cfg(cfg, split='train'), logger, 100) == []
    assert stage_comparison(Cfg(cfg, stage_metrics=str(tmp_path / 'none.json')), logger, 100) == []
    assert stage_comparison(Cfg(cfg, stage_metrics=''), logger, 100) == []


def test_ply_extra_properties(tmp_path):
    from plyfile import PlyData
    pts = floor_grid(step=0.5)
    score = np.linspace(-1, 1, len(pts))
    rgb = np.full(len(pts), 7, np.uint8)
    vis.write_ply(str(tmp_path / 's.ply'), pts, np.zeros((len(pts), 3)), extra={'score': score, 'scan_red': rgb})
    v = PlyData.read(str(tmp_path / 's.ply'))['vertex']
    assert v['score'].dtype == np.float32 and v['scan_red'].dtype == np.uint8
    np.testing.assert_allclose(v['score'], score, atol=1e-7)
