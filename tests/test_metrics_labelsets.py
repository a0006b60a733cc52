"""The metrics and label sets later papers report, beside the paper's mIoU: f-mIoU (ScanNet without wall, floor,
otherfurniture; S3DIS without ceiling, floor, wall), ScanNet200 (200 classes, head / common / tail), its
preprocessing from the raw categories, and the stages run on it. Every expected value is computed by hand here."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, _scene

from dataset import formats
from dataset.label_constants import (
    IGNORE_LABEL,
    S3DIS_LABELS_13,
    SCANNET200_IDS,
    SCANNET200_LABELS,
    SCANNET200_PALETTE,
    SCANNET200_SPLITS,
    SCANNET_LABELS_20,
    UNLABELED_COLOR,
    dataset_info,
    label_set_of,
)
from pipeline.metric import evaluate, evaluate_confusion, fmiou_classes, format_table
from prep import scannet


# ----------------------------------------------------------------------------- f-mIoU
def scannet_confusion():
    """[21, 21] counts (rows prediction, columns GT; row / column 20 = no 2D feature) of five GT classes:
    wall 10 points (8 wall, 2 floor), floor 10 (all floor), chair 4 (3 chair, 1 table), table 5 (4 table, 1 without
    a feature), otherfurniture 2 (1 otherfurniture, 1 chair)."""
    L = SCANNET_LABELS_20.index
    conf = np.zeros((21, 21), np.int64)
    for pred, gt, n in (('wall', 'wall', 8), ('floor', 'wall', 2), ('floor', 'floor', 10), ('chair', 'chair', 3),
                        ('table', 'chair', 1), ('table', 'table', 4), (20, 'table', 1),
                        ('otherfurniture', 'otherfurniture', 1), ('chair', 'otherfurniture', 1)):
        conf[pred if isinstance(pred, int) else L(pred), L(gt)] += n
    return conf


def test_fmiou_on_a_hand_built_confusion_matrix():
    res = evaluate_confusion(scannet_confusion(), SCANNET_LABELS_20)
    # IoU = tp / (tp + fp + fn); the no-feature point is not a false negative in upstream's IoU
    # wall 8 / (8 + 0 + 2); floor 10 / (10 + 2 + 0); chair 3 / (3 + 1 + 1); table 4 / (4 + 1 + 0); otherfurniture 1 / 2
    iou = {'wall': 0.8, 'floor': 10 / 12, 'chair': 0.6, 'table': 0.8, 'otherfurniture': 0.5}
    for name, value in iou.items():
        assert res['iou'][SCANNET_LABELS_20.index(name)] == pytest.approx(value)
    # the paper's number is unchanged: the five IoUs summed / 20
    assert res['miou'] == pytest.approx((0.8 + 10 / 12 + 0.6 + 0.8 + 0.5) / 20)
    # f-mIoU: the same rule over the 17 classes without wall, floor, otherfurniture: (chair + table) / 17
    assert res['fmiou_exclude'] == ['wall', 'floor', 'otherfurniture']
    assert res['fmiou'] == pytest.approx((0.6 + 0.8) / 17)
    assert res['fmiou_present'] == pytest.approx((0.6 + 0.8) / 2)
    assert res['split_miou'] == {}  # ScanNet-20 has no benchmark splits
    # counting the no-feature point as a miss: table 4 / 6
    strict = evaluate_confusion(scannet_confusion(), SCANNET_LABELS_20, no_feature_in_iou=True)
    assert strict['fmiou'] == pytest.approx((0.6 + 4 / 6) / 17)
    # another exclusion, given explicitly (the config key fmiou_exclude)
    wall_only = evaluate_confusion(scannet_confusion(), SCANNET_LABELS_20, fmiou_exclude=('wall',))
    assert wall_only['fmiou'] == pytest.approx((10 / 12 + 0.6 + 0.8 + 0.5) / 19)
    assert wall_only['miou'] == res['miou']
    # the table prints mIoU first, as before, and f-mIoU beside it saying what it averages
    lines = format_table(res).splitlines()
    assert lines[-3].startswith(f"mIoU {res['miou']:.4f}  mAcc") and 'upstream' in lines[-3]
    assert lines[-1] == ('f-mIoU 0.0824  (foreground: the 17 classes without wall, floor, otherfurniture; sum over '
                         'the 2 present / 17, as mIoU; mean over present 0.7000)')


def test_fmiou_exclusion_is_checked_and_absent_for_unknown_label_sets():
    with pytest.raises(ValueError, match=r"\['sofa bed'\] are not classes"):
        evaluate_confusion(scannet_confusion(), SCANNET_LABELS_20, fmiou_exclude=('wall', 'sofa bed'))
    assert fmiou_classes(SCANNET_LABELS_20, []) == ('wall', 'floor', 'otherfurniture')  # [] = the label set's
    # class names of no known label set (a query's own): no f-mIoU unless one is asked for
    names = [f'c{i}' for i in range(20)]
    res = evaluate_confusion(scannet_confusion(), names)
    assert res['fmiou'] is None and res['fmiou_exclude'] is None and 'f-mIoU' not in format_table(res)
    assert evaluate_confusion(scannet_confusion(), names, fmiou_exclude=['c0'])['fmiou'] == pytest.approx(
        (10 / 12 + 0.6 + 0.8 + 0.5) / 19)
    assert label_set_of(SCANNET_LABELS_20).name == 'scannet' and label_set_of(names) is None


def test_s3dis_fmiou_leaves_out_ceiling_floor_and_wall():
    assert dataset_info('s3dis').fmiou_exclude == ('ceiling', 'floor', 'wall')
    L = S3DIS_LABELS_13.index
    # ceiling, floor, wall: 3 points each, all right; chair: 4 points, 2 taken for table; table: 2 points, right
    gt = np.array([L('ceiling')] * 3 + [L('floor')] * 3 + [L('wall')] * 3 + [L('chair')] * 4 + [L('table')] * 2)
    pred = gt.copy()
    pred[9:11] = L('table')
    res = evaluate(pred, gt, S3DIS_LABELS_13)
    # chair 2 / (2 + 0 + 2), table 2 / (2 + 2 + 0); the three structure classes 1 each
    assert res['miou'] == pytest.approx((3 + 0.5 + 0.5) / 13)
    assert res['fmiou'] == pytest.approx((0.5 + 0.5) / 10) and res['fmiou_present'] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- ScanNet200
def test_scannet200_label_set_counts_names_and_splits():
    info = dataset_info('scannet200')
    assert info.num_classes == 200 and len(set(info.labels)) == 200 and info.labels == SCANNET200_LABELS
    assert len(SCANNET200_IDS) == 200 and list(SCANNET200_IDS) == sorted(set(SCANNET200_IDS))
    # the benchmark's order: label i is the i-th category id
    assert [(SCANNET200_IDS[i], SCANNET200_LABELS[i]) for i in (0, 1, 2, 9, 35, 199)] == [
        (1, 'wall'), (2, 'chair'), (3, 'floor'), (10, 'office chair'), (41, 'ceiling'), (1191, 'mattress')]
    splits = dict(info.splits)
    assert list(splits) == ['head', 'common', 'tail'] and info.splits == SCANNET200_SPLITS
    assert [len(splits[s]) for s in splits] == [66, 68, 66]
    every = [c for s in splits.values() for c in s]
    assert len(every) == 200 and set(every) == set(info.labels)  # a partition of the 200 classes
    assert {'wall', 'chair', 'ceiling'} <= set(splits['head']) and 'cushion' in splits['common']
    assert {'paper', 'luggage'} <= set(splits['tail'])
    # a colour per class, all distinct, none black ('unlabeled') or grey (ignored points)
    assert len(SCANNET200_PALETTE) == 200 and len(set(SCANNET200_PALETTE)) == 200
    assert UNLABELED_COLOR not in SCANNET200_PALETTE and all(len(set(c)) > 1 for c in SCANNET200_PALETTE)
    assert dataset_info('scannet200_3d') is info and info.fmiou_exclude == ('wall', 'floor')


def test_scannet200_text_prompts_have_no_other_class(monkeypatch):
    from pipeline.text_embeddings import TextSource, apply_template
    info = dataset_info('scannet200')
    assert info.text_labels == info.labels and 'other' not in info.text_labels
    seen = {}

    def fake(self, names, device='cpu', embeddings_path=None, last_as_other=False):
        seen.update(names=tuple(names), last_as_other=last_as_other)
        return torch.zeros(len(names), 4)

    monkeypatch.setattr(TextSource, 'embeddings', fake)
    TextSource('', 'ViT-L-14-336', 'openai', 'upstream', '').class_embeddings(info)
    assert seen == {'names': SCANNET200_LABELS, 'last_as_other': False}
    assert apply_template(info.text_labels, 'upstream', seen['last_as_other'])[-1] == 'a mattress in a scene'


def test_head_common_tail_means_on_a_constructed_matrix():
    L = SCANNET200_LABELS.index
    # wall 4 points right (IoU 1); chair 4, 2 taken for office chair (2 / 4); cushion 4, 3 taken for pillow (1 / 4);
    # paper 2 right (1); office chair and pillow are absent from GT
    gt = np.array([L('wall')] * 4 + [L('chair')] * 4 + [L('cushion')] * 4 + [L('paper')] * 2)
    pred = gt.copy()
    pred[6:8] = L('office chair')
    pred[9:12] = L('pillow')
    res = evaluate(pred, gt, SCANNET200_LABELS)
    assert res['miou'] == pytest.approx((1 + 0.5 + 0.25 + 1) / 200)
    # head: wall and chair of 66; common: cushion of 68; tail: paper of 66 (upstream's rule: sum / the split's size)
    assert res['split_miou'] == pytest.approx({'head': 1.5 / 66, 'common': 0.25 / 68, 'tail': 1 / 66})
    # the mean over the split's classes present in GT (ScanNet200's benchmark on val)
    assert res['split_miou_present'] == pytest.approx({'head': 0.75, 'common': 0.25, 'tail': 1.0})
    assert res['split_sizes'] == {'head': (66, 2), 'common': (68, 1), 'tail': (66, 1)}
    assert res['fmiou'] == pytest.approx((0.5 + 0.25 + 1) / 198)  # without wall and floor
    text = format_table(res)
    assert ('head mIoU 0.0227  (the 66 head classes; sum over the 2 present / 66, as mIoU; mean over present '
            '0.7500)') in text
    assert 'common mIoU 0.0037' in text and 'tail mIoU 0.0152' in text
    custom = evaluate(pred, gt, SCANNET200_LABELS, splits=(('seating', ('chair', 'office chair', 'cushion')),))
    assert custom['split_miou'] == pytest.approx({'seating': 0.75 / 3})
    assert custom['split_miou_present'] == pytest.approx({'seating': 0.375})


# ----------------------------------------------------------------------------- preprocessing
TSV_HEADER = ('id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\teigen13class\tModelNet40\t'
              'ModelNet10\tShapeNetCore55\tsynsetoffset\twnsynsetid\twnsynsetkey\tmpcat40\tmpcat40index')


def write_tsv(path, skip=()):
    """A tsv in ScanNet's layout: one row per ScanNet200 id (raw category = the class name), and raw categories
    outside the 200 ('wall hanging', id 5000; 'kitchen cabinets' under the id of 'kitchen cabinet')."""
    rows = [TSV_HEADER]
    for class_id, name in zip(SCANNET200_IDS, SCANNET200_LABELS):
        if name not in skip:
            rows.append(f'{class_id}\t{name}\t{name}\t10\t40\t1\t{name}\totherprop\t\t\t\t\t\t\t\totherprop\t40')
    rows.append('5000\twall hanging\twall hanging\t3\t40\t1\twall hanging\totherprop\t\t\t\t\t\t\t\tobjects\t39')
    rows.append(f"{SCANNET200_IDS[SCANNET200_LABELS.index('kitchen cabinet')]}\tkitchen cabinets\tkitchen cabinet\t5"
                '\t3\t1\tcabinet\tcabinet\t\t\t\t\t\t\t\tcabinet\t7')
    with open(path, 'w') as f:
        f.write('\n'.join(rows) + '\n')


def test_tsv_maps_raw_categories_to_the_200_labels(tmp_path):
    write_tsv(str(tmp_path / 'labels.tsv'))
    m = scannet.raw_category_to_scannet200(str(tmp_path / 'labels.tsv'))
    assert m['wall'] == 0 and m['chair'] == 1 and m['floor'] == 2 and m['mattress'] == 199
    assert m['kitchen cabinets'] == SCANNET200_LABELS.index('kitchen cabinet') == 25
    assert 'wall hanging' not in m and len(m) == 201
    write_tsv(str(tmp_path / 'short.tsv'), skip=('mattress', 'tube'))
    with pytest.raises(ValueError, match=r"2 classes, e.g. \['tube \(1172\)', 'mattress \(1191\)'\]"):
        scannet.raw_category_to_scannet200(str(tmp_path / 'short.tsv'))
    with pytest.raises(ValueError, match='label_map_file'):
        scannet.raw_category_to_scannet200(None)


def write_scan(scan_dir, scene, n, seg_indices, groups):
    from plyfile import PlyData, PlyElement
    os.makedirs(scan_dir, exist_ok=True)
    v = np.zeros(n, dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')])
    v['x'] = np.arange(n)
    v['red'] = 10
    face = np.array([([0, 1, 2],)], dtype=[('vertex_indices', 'i4', (3,))])
    PlyData([PlyElement.describe(v, 'vertex'), PlyElement.describe(face, 'face')]).write(
        os.path.join(scan_dir, f'{scene}_vh_clean_2.ply'))
    with open(os.path.join(scan_dir, f'{scene}_vh_clean_2.0.010000.segs.json'), 'w') as f:
        json.dump({'sceneId': scene, 'segIndices': list(seg_indices)}, f)
    with open(os.path.join(scan_dir, f'{scene}.aggregation.json'), 'w') as f:
        json.dump({'sceneId': scene, 'segGroups': [{'id': i, 'objectId': i, 'label': label, 'segments': segs}
                                                   for i, (label, segs) in enumerate(groups)]}, f)


def test_prep_writes_scannet200_labels_from_the_aggregation(tmp_path):
    write_tsv(str(tmp_path / 'labels.tsv'))
    # segments 10..14 over 8 vertices; groups: wall, office chair, a raw category outside the 200, mattress, then
    # bed on the mattress's segment (the later group wins, as ScanNet200's script); segment 14 is in no group
    write_scan(str(tmp_path / 'scans' / 'scene0001_00'), 'scene0001_00', 8, [10, 10, 11, 11, 12, 12, 13, 14],
               [('wall', [10]), ('office chair', [11]), ('wall hanging', [12]), ('mattress', [13]), ('bed', [13])])
    argv = ['3d', '--labelset', 'scannet200', '--scans_dir', str(tmp_path / 'scans'), '--out_dir',
            str(tmp_path / 'out')]
    with pytest.raises(ValueError, match='label_map_file'):
        scannet.main(argv)
    scannet.main(argv + ['--label_map_file', str(tmp_path / 'labels.tsv')])
    scene = formats.load_scene_3d(str(tmp_path / 'out' / 'scene0001_00_vh_clean_2.pth'), 200)
    L = SCANNET200_LABELS.index
    assert scene.labels.tolist() == [L('wall')] * 2 + [L('office chair')] * 2 + [IGNORE_LABEL] * 2 + [L('bed'),
                                                                                                      IGNORE_LABEL]
    assert scene.labels.tolist()[:4] == [0, 0, 9, 9]
    # a segments file that does not match the mesh is refused naming it
    write_scan(str(tmp_path / 'bad' / 'scene0002_00'), 'scene0002_00', 8, [10] * 7, [('wall', [10])])
    with pytest.raises(ValueError, match=r"scene0002_00_vh_clean_2.0.010000.segs.json' has 7 entries"):
        scannet.main(['3d', '--labelset', 'scannet200', '--scans_dir', str(tmp_path / 'bad'), '--out_dir',
                      str(tmp_path / 'out2'), '--label_map_file', str(tmp_path / 'labels.tsv')])


# ----------------------------------------------------------------------------- the stages on ScanNet200
STAGE_FILES = {'vlm_ps_generation.generation_vlm': 'vlm_ps_generation/config/scannet200.yaml',
               'train_openseg_pre_train': 'config/scannet200/openseg_pre_train.yaml',
               'eval_openseg_pre_train': 'config/scannet200/openseg_pre_eval.yaml',
               'train_esg': 'config/scannet200/openseg_train.yaml',
               'evaluate': 'config/scannet200/openseg_eval.yaml'}


def test_scannet200_configs_hold_only_keys_their_stages_know():
    from util.config import load_yaml
    for module, path in STAGE_FILES.items():
        schema = __import__(module, fromlist=['SCHEMA']).SCHEMA
        values, _ = load_yaml(os.path.join(ROOT, path))
        assert values['labelset'] == 'scannet200' and set(values) <= set(schema.by_name), path


# rooms: floor and wall (ScanNet200 labels 2 and 0) and a box of a head, common or tail class
BOXES = ('chair', 'cushion', 'paper', 'table')
TINY = {'ess_train': ['epochs', '2', 'batch_size', '2', 'num_points', '200', 'workers', '0', 'tensorboard', 'False'],
        'ess_infer': ['workers', '0'],
        'esg': ['epochs', '1', 'batch_size', '1', 'loop', '1', 'arch_3d', 'MinkUNet14A', 'workers', '0',
                'tensorboard', 'False'],
        'eval': ['test_repeats', '1', 'workers', '0', 'save_ply', 'False', 'save_png', 'False']}


def make_tiny_scannet200(root, n_train=3, n_val=2, feat_dim=768, seed=0):
    rng = np.random.default_rng(seed)
    L = SCANNET200_LABELS.index
    text = rng.normal(size=(200, feat_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    formats.save_text_embeddings(os.path.join(root, 'text.npy'), text)
    for split, n, first in (('train', n_train, 0), ('val', n_val, 100)):
        for i in range(n):
            name = f'scene{first + i:04d}_00'
            coords, colors, labels = _scene(rng, box_class=L(BOXES[i % len(BOXES)]), floor_class=L('floor'),
                                            wall_class=L('wall'), num_classes=200)
            formats.save_scene_3d(os.path.join(root, '3d', split, f'{name}_vh_clean_2.pth'), coords, colors, labels)
            mask = rng.random(len(labels)) > 0.15
            feat = text[labels[mask]] + 0.05 * rng.normal(size=(int(mask.sum()), feat_dim))
            formats.save_fused_features(os.path.join(root, 'feat', f'{name}_0.pt'), torch.from_numpy(feat),
                                        torch.from_numpy(mask))


@pytest.mark.slow
def test_the_stages_run_on_scannet200(tmp_path):
    import eval_openseg_pre_train
    import evaluate
    import train_esg
    import train_openseg_pre_train
    from vlm_ps_generation import generation_vlm
    shutil.copytree(os.path.join(ROOT, 'config', 'scannet200'), tmp_path / 'config' / 'scannet200')
    os.makedirs(tmp_path / 'vlm_ps_generation' / 'config')
    shutil.copy(os.path.join(ROOT, STAGE_FILES['vlm_ps_generation.generation_vlm']),
                tmp_path / 'vlm_ps_generation' / 'config')
    make_tiny_scannet200(str(tmp_path / 'data'))
    exp = tmp_path / 'exp'
    dataset_file = tmp_path / 'config' / 'scannet200' / 'dataset.yaml'
    tree = yaml.safe_load(dataset_file.read_text())
    tree['DATA'].update(data_root=str(tmp_path / 'data' / '3d'), data_root_2d_fused_feature=str(tmp_path / 'data' /
                        'feat'), exp_root=str(exp), voxel_size=0.025)
    tree['TEXT'].update(text_embeddings_path=str(tmp_path / 'data' / 'text.npy'), text_cache_dir='')
    tree['RUN'] = {'device': 'cpu'}
    dataset_file.write_text(yaml.safe_dump(tree))
    cfg = lambda name: str(tmp_path / 'config' / 'scannet200' / name)

    plg = generation_vlm.main(['--config', str(tmp_path / 'vlm_ps_generation' / 'config' / 'scannet200.yaml')])
    assert plg['fmiou'] is not None and set(plg['split_miou']) == {'head', 'common', 'tail'}
    assert json.load(open(exp / 'plg' / 'plg_summary.json'))['fmiou_exclude'] == ['wall', 'floor']
    train_openseg_pre_train.main(['--config', cfg('openseg_pre_train.yaml'), *TINY['ess_train']])
    ess = eval_openseg_pre_train.main(['--config', cfg('openseg_pre_eval.yaml'), *TINY['ess_infer']])
    row = ess['val']['ESS adapted, argmax']
    assert len(row['iou_covered']) == 200 and 0 <= row['fmiou_covered'] <= 1
    assert set(row['split_miou_covered']) == {'head', 'common', 'tail'}
    train_esg.main(['--config', cfg('openseg_train.yaml'), *TINY['esg']])
    summary = evaluate.main(['--config', cfg('openseg_eval.yaml'), *TINY['eval'],
                             'fmiou_exclude', 'wall,floor,ceiling'])
    assert summary['num_scenes'] == 2 and len(summary['iou']) == 200 and 0 < summary['miou'] <= 1
    assert summary['fmiou_exclude'] == ['wall', 'floor', 'ceiling'] and 0 <= summary['fmiou'] <= 1
    assert set(summary['split_miou']) == set(summary['split_miou_present']) == {'head', 'common', 'tail'}
    # the val rooms hold wall, floor (head) and a chair (head) and a cushion (common): no tail class in GT
    assert summary['split_miou']['tail'] == 0 and summary['split_miou_present']['tail'] is None
    on_disk = json.load(open(exp / 'esg' / 'result_eval' / 'eval_summary.json'))
    assert on_disk['fmiou'] == summary['fmiou'] and on_disk['split_miou'] == summary['split_miou']
    text = open(exp / 'esg' / 'result_eval' / 'metrics.txt').read()
    assert 'f-mIoU' in text and 'head mIoU' in text and 'tail mIoU' in text
    # a class the label set lacks stops the evaluation before it predicts
    with pytest.raises(ValueError, match=r"\['otherfurniture'\] are not classes"):
        evaluate.main(['--config', cfg('openseg_eval.yaml'), *TINY['eval'], 'fmiou_exclude', 'otherfurniture',
                       'save_folder', str(tmp_path / 'refused')])


def test_esg_validation_scalars_carry_fmiou_and_the_splits():
    import logging

    import train_esg
    L = SCANNET200_LABELS.index
    gt = np.array([L('wall')] * 4 + [L('chair')] * 4 + [L('paper')] * 2)
    pred = gt.copy()
    pred[6:8] = L('office chair')
    outcome = train_esg.validation_outcome(evaluate(pred, gt, SCANNET200_LABELS), 1, 'val', logging.getLogger('t'))
    assert outcome.metric == pytest.approx(2.5 / 200)
    assert outcome.scalars['val/fmiou_1vox'] == pytest.approx(1.5 / 198)
    assert outcome.scalars['val/miou_head_1vox'] == pytest.approx(1.5 / 66)
    assert outcome.scalars['val/miou_tail_1vox'] == pytest.approx(1 / 66)
    assert 'f-mIoU 0.0076' in outcome.detail
    scannet20 = train_esg.validation_outcome(evaluate_confusion(scannet_confusion(), SCANNET_LABELS_20), 1, 'val',
                                             logging.getLogger('t'))
    assert scannet20.scalars['val/fmiou_1vox'] == pytest.approx(1.4 / 17)
    assert not any('head' in k for k in scannet20.scalars)
