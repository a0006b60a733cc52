"""run/demo_summary.py: the demo's comparison table from the files the stages write."""
import importlib.util
import json
import os

import pytest
from helpers import ROOT

CLASSES = ('wall', 'floor', 'chair')


def _summary_module():
    spec = importlib.util.spec_from_file_location('demo_summary', os.path.join(ROOT, 'run', 'demo_summary.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f)


def _ess_row(miou_all, miou_covered):
    iou = {'wall': miou_all, 'floor': miou_all, 'chair': miou_all}
    return {'miou_all_points': miou_all, 'miou_covered': miou_covered, 'iou_all_points': iou, 'iou_covered': iou}


def _experiment(root, networks):
    ess = {'val': {'raw fused, argmax': _ess_row(0.30, 0.36),
                   'ESS adapted, argmax': _ess_row(0.40, 0.45),
                   'raw fused, scene-label mask (PLG formula per point)': _ess_row(0.50, 0.55)}}
    _write(os.path.join(root, 'ess', 'ess_eval_metrics.json'), ess)
    for run, miou in networks.items():
        _write(os.path.join(root, run, 'result_eval', 'eval_summary.json'),
               {'split': 'val', 'num_scenes': 4, 'num_points': 1000, 'test_repeats': 3, 'miou': miou,
                'miou_all_points': miou, 'iou': {'wall': miou, 'floor': miou, 'chair': None}})
        _write(os.path.join(root, run, 'esg_summary.json'),
               {'arch_3d': 'MinkUNet14A', 'steps': 64, 'batch_size': 1, 'steps_per_epoch': 16,
                'val_miou': [[2, miou / 2], [4, miou]]})


def test_table_rows_verdict_and_pictures(tmp_path):
    _experiment(str(tmp_path), {'esg': 0.45, 'esg_fused': 0.35, 'supervised': 0.80})
    lines, numbers = _summary_module().summarise(str(tmp_path))
    text = '\n'.join(lines)
    rows = numbers['rows']
    assert rows['3D net from ESS embeddings (3DSS-VLG)']['miou_all_points'] == 0.45
    assert rows['2D fused features, argmax (OpenScene 2D fusion)']['miou_covered'] == 0.36
    assert 'beats its ESS teacher (0.4500 vs 0.4000) and does NOT beat the tagged PLG labels (0.5000)' in text
    assert '0.4500 vs 0.3500, +0.1000' in text
    assert 'closes 30% of the gap' in text  # (0.45 - 0.30) / (0.80 - 0.30)
    for name in ('demo_curves.png', 'demo_per_class.png', 'demo_summary.json'):
        assert os.path.getsize(tmp_path / name) > 0
    assert numbers['curves']['esg'] == [[2, 0.225], [4, 0.45]]


def test_a_network_not_run_is_listed_and_an_unfinished_one_is_an_error(tmp_path):
    _experiment(str(tmp_path), {'esg': 0.45})
    lines, numbers = _summary_module().summarise(str(tmp_path))
    assert any('3D net, GT labels (ceiling' in line and 'not run' in line for line in lines)
    assert set(numbers['curves']) == {'esg'}
    os.makedirs(tmp_path / 'supervised')  # started, never evaluated
    with pytest.raises(FileNotFoundError, match='evaluate'):
        _summary_module().summarise(str(tmp_path))


def test_a_short_ceiling_below_the_2d_features_is_said_so(tmp_path):
    _experiment(str(tmp_path), {'esg': 0.15, 'esg_fused': 0.10, 'supervised': 0.18})
    text = '\n'.join(_summary_module().summarise(str(tmp_path))[0])
    assert 'reaches 0.1800 in the same steps, below the 2D features too' in text
    assert 'closes' not in text


def test_the_refined_plg_row_is_listed_when_it_was_run_and_must_be_of_the_split(tmp_path):
    _experiment(str(tmp_path), {'esg': 0.45})
    label = 'PLG refined by superpoints (GT tags; not paper)'
    assert label not in _summary_module().summarise(str(tmp_path))[1]['rows']
    plg = tmp_path / 'plg_refined_val' / 'plg_summary.json'
    _write(str(plg), {'split': 'val', 'miou': 0.61, 'miou_upstream': 0.66, 'coverage': 0.8})
    lines, numbers = _summary_module().summarise(str(tmp_path))
    assert numbers['rows'][label] == {'miou_all_points': 0.61, 'miou_covered': 0.66, 'coverage': 0.8}
    assert any(line.startswith(label) and line.endswith('0.6100   0.6600') for line in lines)
    _write(str(plg), {'split': 'train', 'miou': 0.61, 'miou_upstream': 0.66, 'coverage': 0.8})
    with pytest.raises(ValueError, match="split 'train'"):
        _summary_module().summarise(str(tmp_path))
