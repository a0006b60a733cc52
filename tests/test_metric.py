"""pipeline/metric.py against a brute-force per-class loop with upstream's (OpenScene's) rules."""
import numpy as np
import pytest

from pipeline.metric import confusion_matrix, evaluate, evaluate_confusion, format_table

C = 6
NAMES = [f'c{i}' for i in range(C)]


def brute_force(pred, gt, num_classes, no_feature_in_iou=False):
    """Upstream's rules, one class at a time: GT 255 ignored; a prediction outside [0, C) is a wrong
    prediction that upstream leaves out of the IoU confusion (not a false negative) but that still
    lowers accuracy (acc = tp / #GT points of the class); classes absent from GT are skipped and the
    means divide by C."""
    valid = gt != 255
    no_feat = (pred < 0) | (pred >= num_classes)
    ious, accs = [], []
    for c in range(num_classes):
        n_gt = np.sum(valid & (gt == c))
        if n_gt == 0:
            ious.append(np.nan)
            accs.append(np.nan)
            continue
        tp = np.sum(valid & (pred == c) & (gt == c))
        fp = np.sum(valid & (pred == c) & (gt != c))
        fn = np.sum(valid & (gt == c) & (pred != c) & (~no_feat | no_feature_in_iou))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else 0.0)
        accs.append(tp / n_gt)
    ious, accs = np.array(ious), np.array(accs)
    return ious, accs, np.nansum(ious) / num_classes, np.nansum(accs) / num_classes


@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('no_feature_in_iou', [False, True])
def test_evaluate_equals_brute_force(seed, no_feature_in_iou):
    rng = np.random.default_rng(seed)
    n = 3000
    gt = rng.integers(0, C - 1, n)          # class C-1 absent from GT
    gt[rng.random(n) < 0.1] = 255            # ignored points
    pred = np.where(rng.random(n) < 0.6, gt, rng.integers(0, C, n))
    pred[rng.random(n) < 0.1] = 256          # 'no feature' as upstream writes it
    pred[rng.random(n) < 0.05] = C           # the 'unlabeled' index of our PLG
    pred[gt == 255] = rng.integers(0, C, int((gt == 255).sum()))
    res = evaluate(pred, gt, NAMES, no_feature_in_iou=no_feature_in_iou)
    iou, acc, miou, macc = brute_force(pred, gt, C, no_feature_in_iou)
    assert np.allclose(res['iou'], iou, equal_nan=True) and np.allclose(res['acc'], acc, equal_nan=True)
    assert np.isclose(res['miou'], miou) and np.isclose(res['macc'], macc)
    assert np.isclose(res['miou_present'], np.nanmean(iou)) and np.isclose(res['macc_present'], np.nanmean(acc))
    assert res['present'].tolist() == [True] * (C - 1) + [False]
    assert res['num_points'] == int((gt != 255).sum())


def test_exact_small_case():
    gt = np.array([0, 0, 1, 1, 255, 1])
    pred = np.array([0, 256, 1, 0, 0, 1])
    res = evaluate(pred, gt, ['a', 'b', 'c'])
    # class a: tp 1, fp 1 (point 3), fn 0 (point 1 has no feature: not in IoU) -> 1/2; acc 1/2
    # class b: tp 2, fp 0, fn 1 -> 2/3; acc 2/3; class c absent
    assert np.allclose(res['iou'][:2], [0.5, 2 / 3]) and np.isnan(res['iou'][2])
    assert np.allclose(res['acc'][:2], [0.5, 2 / 3])
    assert np.isclose(res['miou'], (0.5 + 2 / 3) / 3) and np.isclose(res['miou_present'], (0.5 + 2 / 3) / 2)
    strict = evaluate(pred, gt, ['a', 'b', 'c'], no_feature_in_iou=True)
    assert np.isclose(strict['iou'][0], 1 / 3)
    text = format_table(res)
    assert 'absent from GT' in text and '0.500' in text


def test_confusion_matrix_counts_and_errors():
    conf = confusion_matrix(np.array([0, 1, 7, 2]), np.array([0, 2, 1, 255]), 3)
    assert conf.shape == (4, 4) and conf.sum() == 3 and conf[0, 0] == 1 and conf[1, 2] == 1 and conf[3, 1] == 1
    with pytest.raises(ValueError, match='GT labels must lie'):
        confusion_matrix(np.array([0]), np.array([5]), 3)
    with pytest.raises(ValueError, match='3 points but GT has 2'):
        confusion_matrix(np.zeros(3), np.zeros(2), 3)


def test_summed_scene_confusions_give_the_metric_of_all_points():
    """Stages sum per-scene (and per-process) confusion matrices instead of keeping every point."""
    rng = np.random.default_rng(3)
    scenes = [(rng.integers(0, C + 1, n), rng.choice(np.r_[np.arange(C), 255], n)) for n in (50, 300, 7)]
    summed = sum(confusion_matrix(p, g, C) for p, g in scenes)
    pred = np.concatenate([p for p, _ in scenes])
    gt = np.concatenate([g for _, g in scenes])
    ious, accs, miou, macc = brute_force(pred, gt, C, no_feature_in_iou=True)
    result = evaluate_confusion(summed, NAMES, no_feature_in_iou=True)
    np.testing.assert_allclose(result['iou'], ious)
    assert result['miou'] == pytest.approx(miou) and result['macc'] == pytest.approx(macc)
    with pytest.raises(ValueError, match='confusion matrix'):
        evaluate_confusion(summed[:C], NAMES)
