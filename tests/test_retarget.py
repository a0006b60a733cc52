"""Configs a researcher can retarget in one place, runs that explain themselves: the whole pipeline on another
data set by editing one dataset file, a run reproduced from the resolved config it wrote, two experiments
that never share a file."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, make_tiny_s3dis

import eval_openseg_pre_train
import evaluate
import train_esg
import train_openseg_pre_train
from vlm_ps_generation import generation_vlm

pytestmark = pytest.mark.slow

# what makes the stages small enough for a test; everything about the data comes from the dataset file
TINY = {'plg': [],
        'ess_train': ['epochs', '2', 'batch_size', '2', 'num_points', '200', 'workers', '0', 'tensorboard', 'False'],
        'ess_infer': ['workers', '0'],
        'esg': ['epochs', '1', 'batch_size', '1', 'loop', '1', 'arch_3d', 'MinkUNet14A', 'workers', '0',
                'tensorboard', 'False'],
        'eval': ['test_repeats', '1', 'workers', '0', 'save_ply', 'False', 'save_png', 'False']}


@pytest.fixture(scope='module')
def s3dis_copy(tmp_path_factory):
    """The repository's S3DIS configs copied as they are, and tiny S3DIS-label rooms beside them."""
    root = tmp_path_factory.mktemp('retarget')
    shutil.copytree(os.path.join(ROOT, 'config', 's3dis'), root / 'config' / 's3dis')
    os.makedirs(root / 'vlm_ps_generation' / 'config')
    shutil.copy(os.path.join(ROOT, 'vlm_ps_generation', 'config', 's3dis.yaml'), root / 'vlm_ps_generation' / 'config')
    make_tiny_s3dis(str(root / 'data'))
    return root


def edit_dataset_file(root, exp_root):
    """The one edit a user makes: point config/s3dis/dataset.yaml at their data and experiment folder."""
    path = root / 'config' / 's3dis' / 'dataset.yaml'
    tree = yaml.safe_load(path.read_text())
    tree['DATA'].update(data_root=str(root / 'data' / '3d'), data_root_2d_fused_feature=str(root / 'data' / 'feat'),
                        exp_root=str(exp_root), voxel_size=0.025)  # 2.5 cm: the spacing of the tiny rooms
    tree['TEXT'].update(text_embeddings_path=str(root / 'data' / 'text.npy'), text_cache_dir='')
    tree['RUN'] = {'device': 'cpu'}
    path.write_text(yaml.safe_dump(tree))


def run_pipeline(root):
    cfg = lambda name: str(root / 'config' / 's3dis' / name)
    generation_vlm.main(['--config', str(root / 'vlm_ps_generation' / 'config' / 's3dis.yaml'), *TINY['plg']])
    train_openseg_pre_train.main(['--config', cfg('openseg_pre_train.yaml'), *TINY['ess_train']])
    eval_openseg_pre_train.main(['--config', cfg('openseg_pre_eval.yaml'), *TINY['ess_infer']])
    train_esg.main(['--config', cfg('openseg_train.yaml'), *TINY['esg']])
    return evaluate.main(['--config', cfg('openseg_eval.yaml'), *TINY['eval']])


def files_under(folder):
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


def test_the_five_stages_on_another_dataset_by_editing_one_file(s3dis_copy):
    exp = s3dis_copy / 'exp_a'
    edit_dataset_file(s3dis_copy, exp)
    summary = run_pipeline(s3dis_copy)
    assert summary['num_scenes'] == 2 and 0 < summary['miou'] <= 1
    made = files_under(exp)
    # each stage wrote under the experiment folder, where the next one found it, and recorded what it ran
    for name in ('plg/Area_1_office_1_pred.npy', 'plg/plg_config.yaml', 'ess/best.pth', 'ess/ess_train_config.yaml',
                 'ess_embeddings/Area_5_office_1_0.pt', 'esg/best.pth', 'esg/esg_config.yaml', 'esg/esg_run.json',
                 'esg/result_eval/eval_summary.json', 'esg/result_eval/eval_config.yaml'):
        assert name in made, name
    # the S3DIS label set went through: 13 classes
    assert len(json.load(open(exp / 'esg' / 'result_eval' / 'eval_summary.json'))['iou']) == 13
    run = json.load(open(exp / 'esg' / 'esg_run.json'))
    assert {'command', 'code', 'device', 'threads', 'host'} <= set(run) and 'sparse_conv' in run
    # logs hold clean lines: no progress-bar frames
    logs = [os.path.join(exp, f) for f in made if f.endswith('.log')]
    assert len(logs) == 5 and not any('\r' in open(p).read() for p in logs)


def test_a_second_experiment_shares_no_file_with_the_first(s3dis_copy):
    if not (s3dis_copy / 'exp_a' / 'esg' / 'best.pth').exists():
        pytest.skip('needs the first experiment (test_the_five_stages_on_another_dataset_by_editing_one_file)')
    before = {f: os.stat(os.path.join(s3dis_copy / 'exp_a', f)).st_mtime_ns for f in files_under(s3dis_copy / 'exp_a')}
    edit_dataset_file(s3dis_copy, s3dis_copy / 'exp_b')
    run_pipeline(s3dis_copy)
    after = {f: os.stat(os.path.join(s3dis_copy / 'exp_a', f)).st_mtime_ns for f in files_under(s3dis_copy / 'exp_a')}
    assert after == before  # nothing of the first experiment was read for writing or rewritten
    assert files_under(s3dis_copy / 'exp_b') >= {'plg/Area_1_office_1_pred.npy', 'esg/best.pth'}
    # the second experiment's inputs came from its own folder
    esg = yaml.safe_load(open(s3dis_copy / 'exp_b' / 'esg' / 'esg_config.yaml'))
    assert esg['DATA']['esg_targets'] == str(s3dis_copy / 'exp_b' / 'ess_embeddings')


def test_the_resolved_config_reproduces_the_run(s3dis_copy, tmp_path):
    if not (s3dis_copy / 'exp_a' / 'ess' / 'last.pth').exists():
        pytest.skip('needs the first experiment')
    resolved = s3dis_copy / 'exp_a' / 'ess' / 'ess_train_config.yaml'
    train_openseg_pre_train.main(['--config', str(resolved), 'save_path', str(tmp_path / 'again')])
    a = torch.load(s3dis_copy / 'exp_a' / 'ess' / 'last.pth', weights_only=True)['state_dict']
    b = torch.load(tmp_path / 'again' / 'last.pth', weights_only=True)['state_dict']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the resolved config needs nothing else: every key is in it, with the value the run used
    again = yaml.safe_load(open(tmp_path / 'again' / 'ess_train_config.yaml'))
    first = yaml.safe_load(open(resolved))
    flat = lambda tree: {k: v for section in tree.values() for k, v in section.items()}
    diff = {k for k in flat(first) if flat(first)[k] != flat(again)[k]}
    assert diff == {'save_path'}, diff
    assert np.isfinite(json.load(open(s3dis_copy / 'exp_a' / 'esg' / 'esg_summary.json'))['train_loss'][0])


def test_superpoint_refined_plg_and_f_miou_on_s3dis_rooms(s3dis_copy):
    """The options beyond the paper on S3DIS-label rooms: they have no segs.json, so the superpoints come from the
    graph segmentation of the points (cached under the experiment); PLG reports f-mIoU without ceiling, floor
    and wall. The refined labels stay labels of S3DIS's classes, and 'none' is the paper's PLG."""
    import numpy as np

    from dataset import formats
    from dataset.label_constants import dataset_info
    root = s3dis_copy
    edit_dataset_file(root, root / 'exp_refine')
    plg = lambda *extra: generation_vlm.main(['--config', str(root / 'vlm_ps_generation' / 'config' / 's3dis.yaml'),
                                              *extra])
    plain = plg('save_folder', str(root / 'exp_refine' / 'plg_none'))
    refined = plg('save_folder', str(root / 'exp_refine' / 'plg'), 'plg_refine', 'superpoints')
    assert refined['refine']['superpoint_files']['computed'] == 3  # the train rooms, segmented once
    assert (root / 'exp_refine' / 'superpoints' / 'superpoints_manifest.jsonl').is_file()
    assert refined['coverage'] == plain['coverage']  # spread is off: the covered points are the same
    for summary in (plain, refined):
        assert summary['fmiou'] is not None and 0 <= summary['fmiou'] <= 1
    num_classes = dataset_info('s3dis').num_classes
    for scene in ('Area_1_office_1', 'Area_1_office_2'):
        labels = formats.load_pseudo_labels(str(root / 'exp_refine' / 'plg'), scene)
        assert labels.min() >= 0 and labels.max() <= num_classes and np.isin(labels, np.arange(num_classes + 1)).all()
