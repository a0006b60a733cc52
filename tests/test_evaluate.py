"""evaluate.py: repeatable, every point predicted, DDP checkpoints load, and it agrees with the
validation inside train_esg.py on the same checkpoint (one prediction path, pipeline/inference.py)."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import EVAL_CONFIG, NUM_CLASSES, make_tiny_dataset, train_argv

from dataset.formats import list_scenes, load_scene_3d, scene_name
from pipeline.metric import evaluate as metric_evaluate

pytestmark = pytest.mark.slow


def eval_argv(root, data, out, **overrides):
    opts = dict(model_path=os.path.join(root, 'esg', 'last.pth'), save_folder=os.path.join(root, out),
                test_repeats=1, save_ply=False, save_png=False, workers=0)
    opts.update(overrides)
    argv = ['--config', EVAL_CONFIG] + list(data)
    for k, v in opts.items():
        argv += [k, str(v)]
    return argv


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 2-epoch ESG run whose last epoch is validated (val_repeats 1)."""
    import train_esg
    root = str(tmp_path_factory.mktemp('eval'))
    data = make_tiny_dataset(root)
    summary = train_esg.main(train_argv(root, data, epochs=2, eval_freq=2, base_lr=3e-4))
    return root, data, summary


def test_validation_and_evaluate_agree(trained):
    import evaluate
    root, data, summary = trained
    (epoch, val_miou), = summary['val_miou']
    assert epoch == 2
    result = evaluate.main(eval_argv(root, data, 'eval_a'))
    assert result['miou'] == val_miou  # same checkpoint, same seed, same code: the same number exactly
    assert result['miou_first_repeat'] == result['miou']  # one voxelisation: both numbers are the same
    # more repeats: repeat 0 is the same voxelisation as before, so its number stays; the sum is reported beside
    three = evaluate.main(eval_argv(root, data, 'eval_a3', test_repeats=3))
    assert three['miou_first_repeat'] == result['miou']


def test_evaluate_repeatable_and_covers_every_point(trained):
    import evaluate
    root, data, _ = trained
    first = evaluate.main(eval_argv(root, data, 'eval_b', save_ply=True, save_png=True))
    second = evaluate.main(eval_argv(root, data, 'eval_c'))
    assert first['miou'] == second['miou']
    # per-scene predictions: one label per point, all of them real classes (the network fills every point),
    # and they reproduce the reported mIoU
    preds, gts = [], []
    for path in list_scenes(os.path.join(root, '3d'), 'val'):
        scene = load_scene_3d(path)
        pred = np.load(os.path.join(root, 'eval_b', f'{scene_name(path)}_pred.npy'))
        assert pred.shape == (scene.coords.shape[0],)
        assert pred.min() >= 0 and pred.max() < NUM_CLASSES
        assert np.array_equal(pred, np.load(os.path.join(root, 'eval_c', f'{scene_name(path)}_pred.npy')))
        for suffix in ('_pred.ply', '_gt.ply', '_topdown.png'):
            assert os.path.getsize(os.path.join(root, 'eval_b', scene_name(path) + suffix)) > 0
        preds.append(pred), gts.append(scene.labels)
    from dataset.label_constants import dataset_info
    recomputed = metric_evaluate(np.concatenate(preds), np.concatenate(gts), dataset_info('scannet').labels)
    assert recomputed['miou'] == pytest.approx(first['miou'], abs=1e-12)
    assert os.path.getsize(os.path.join(root, 'eval_b', 'iou_per_class.png')) > 0
    assert json.load(open(os.path.join(root, 'eval_b', 'eval_summary.json')))['miou'] == first['miou']


def test_checkpoint_with_module_prefix_loads(trained):
    """An upstream-style checkpoint saved from a DDP model ('module.' keys, key 'state_dict') gives the
    same predictions as the plain one."""
    import evaluate
    from util.io import safe_torch_load
    root, data, _ = trained
    ckpt = safe_torch_load(os.path.join(root, 'esg', 'last.pth'), 'checkpoint')
    upstream_style = {'epoch': ckpt['epoch'], 'best_iou': 0.0,
                      'state_dict': {'module.' + k: v for k, v in ckpt['state_dict'].items()}}
    path = os.path.join(root, 'model_best.pth.tar')
    torch.save(upstream_style, path)
    plain = evaluate.main(eval_argv(root, data, 'eval_plain'))
    prefixed = evaluate.main(eval_argv(root, data, 'eval_prefixed', model_path=path))
    assert prefixed['miou'] == plain['miou']


def test_ensemble_prefers_the_more_confident_feature():
    """OpenScene's 2D-3D ensemble: per point the feature with the higher best text similarity wins."""
    from pipeline.inference import point_logits
    text = torch.eye(3)
    voxel = torch.tensor([[0.9, 0.8, 0.0], [0.0, 1.0, 0.0]])     # voxel 0 unsure, voxel 1 sure of class 1
    inverse = torch.tensor([0, 1])
    fused = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.9, 0.0]])     # point 0 sure of class 2, point 1 unsure
    logits = point_logits(voxel, inverse, text, fused, torch.tensor([True, True]))
    assert logits.argmax(1).tolist() == [2, 1]
    # a point without 2D feature keeps the 3D prediction
    logits = point_logits(voxel, inverse, text, fused, torch.tensor([False, True]))
    assert logits.argmax(1).tolist() == [0, 1]


def test_results_of_another_checkpoint_are_never_mixed(trained, tmp_path):
    """A rerun with the same checkpoint and settings rewrites its folder; another checkpoint is refused unless
    overwrite True, which first deletes the earlier results."""
    import evaluate
    from util.run_folder import ExistingResultsError
    root, data, _ = trained
    out = str(tmp_path / 'results')
    argv = eval_argv(root, data, out)
    assert evaluate.main(argv)['miou'] == evaluate.main(argv)['miou']
    moved = str(tmp_path / 'other.pth')
    ckpt = torch.load(os.path.join(root, 'esg', 'last.pth'), weights_only=True)
    ckpt['state_dict'] = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in ckpt['state_dict'].items()}
    torch.save(ckpt, moved)
    with pytest.raises(ExistingResultsError, match=r"results.*holds results of model .*overwrite True"):
        evaluate.main(eval_argv(root, data, out, model_path=moved))
    evaluate.main(eval_argv(root, data, out, model_path=moved, overwrite=True))
    from util.provenance import file_digest
    manifest = json.load(open(os.path.join(out, 'eval_manifest.json')))
    assert manifest['provenance']['model'] == file_digest(moved)['sha1']


def test_nan_colour_in_a_val_scene_is_an_error_naming_it(trained, tmp_path):
    import shutil

    import evaluate
    from dataset.formats import FormatError
    root, data, _ = trained
    copy = str(tmp_path / '3d')
    shutil.copytree(os.path.join(root, '3d'), copy)
    path = list_scenes(copy, 'val')[0]
    coords, colors, labels = torch.load(path, weights_only=False)
    colors[10] = np.nan
    torch.save((coords, colors, labels), path)
    argv = eval_argv(root, data, str(tmp_path / 'out')) + ['data_root', copy]
    with pytest.raises(FormatError, match=rf"{os.path.basename(path)}.*colors hold 3 non-finite"):
        evaluate.main(argv)
