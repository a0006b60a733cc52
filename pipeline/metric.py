"""Segmentation metrics exactly as OpenScene's / 3DSS-VLG's ``pipeline/metric.py`` compute them.

- points whose GT is 255 (IGNORE_LABEL) are left out;
- a prediction >= num_classes ('unlabeled' / no 2D feature, or 256 as upstream writes it) is a
  wrong prediction: it never counts as a true positive and it lowers the class accuracy.
  Upstream drops the 'no feature' row of the confusion matrix before computing IoU, so such a point
  is not a false negative in IoU; ``no_feature_in_iou=True`` counts it there too (stricter);
- upstream's mIoU / mAcc divide the sum over the classes present in GT by the number of classes
  (``miou``); the mean over present classes is reported beside it (``miou_present``).

The paper's number is ``miou``. Beside it, for the comparisons later papers make (options; ``miou`` is unchanged):

- ``fmiou``, the "foreground" mIoU of RegionPLC / PLA: the same rule over the classes F the label set keeps for it
  (all but ``fmiou_exclude``: ScanNet wall, floor, otherfurniture; S3DIS ceiling, floor, wall; ScanNet200 wall,
  floor), ``fmiou = sum of IoU_c over c in F present in GT / |F|``; ``fmiou_present`` is the mean over F's
  present classes;
- ``split_miou[s]`` for a label set with benchmark splits (ScanNet200's head / common / tail), the same rule over
  the split's classes S, ``sum of IoU_c over c in S present in GT / |S|``; ``split_miou_present[s]`` is the mean
  over S's present classes, which is what ScanNet200's benchmark reports on val, where 11 of its classes never
  occur ("we don't evaluate on unseen validation categories").

Both default to the label set whose classes ``class_names`` are (``label_constants.label_set_of``); class names of
no known label set get neither (``fmiou`` None, ``split_miou`` {}) unless ``fmiou_exclude`` / ``splits`` are given.
"""
import numpy as np

from dataset.label_constants import IGNORE_LABEL, label_set_of


def confusion_matrix(pred, gt, num_classes):
    """[C+1, C+1] counts, rows = prediction, columns = GT; row/column C collects 'no feature'."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    gt = np.asarray(gt).astype(np.int64).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f'prediction has {pred.shape[0]} points but GT has {gt.shape[0]}')
    keep = gt != IGNORE_LABEL
    pred, gt = pred[keep], gt[keep]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f'GT labels must lie in [0, {num_classes}) or be {IGNORE_LABEL}; found {gt.min()}..{gt.max()}')
    pred = np.where((pred < 0) | (pred >= num_classes), num_classes, pred)
    counts = np.bincount(pred * (num_classes + 1) + gt, minlength=(num_classes + 1) ** 2)
    return counts.reshape(num_classes + 1, num_classes + 1)


def evaluate(pred, gt, class_names, stdout=False, no_feature_in_iou=False, logger=None, fmiou_exclude=None,
             splits=None):
    """Per-class IoU / accuracy and the means of per-point predictions. Returns a dict (module docstring)."""
    conf = confusion_matrix(pred, gt, len(class_names))
    return evaluate_confusion(conf, class_names, stdout=stdout, no_feature_in_iou=no_feature_in_iou, logger=logger,
                              fmiou_exclude=fmiou_exclude, splits=splits)


def fmiou_classes(class_names, fmiou_exclude=None):
    """The classes f-mIoU leaves out: ``fmiou_exclude`` (None or empty: the label set's), checked to be classes of
    ``class_names``; None when neither names any (class names of no known label set)."""
    if not fmiou_exclude:
        info = label_set_of(class_names)
        if info is None or not info.fmiou_exclude:
            return None
        fmiou_exclude = info.fmiou_exclude
    unknown = [c for c in fmiou_exclude if c not in class_names]
    if unknown:
        raise ValueError(f'fmiou_exclude: {unknown} are not classes of the label set; expected names among '
                         f'{list(class_names)}')
    return tuple(fmiou_exclude)


def _subset_means(iou, present, members):
    """(upstream's rule over ``members``: IoUs summed over those present / their number, mean over those present)."""
    n = int(members.sum())
    if n == 0:
        return float('nan'), float('nan')
    kept = members & present
    return float(np.nansum(iou[members]) / n), (float(np.mean(iou[kept])) if kept.any() else float('nan'))


def evaluate_confusion(conf, class_names, stdout=False, no_feature_in_iou=False, logger=None, fmiou_exclude=None,
                       splits=None):
    """``evaluate`` from a ``confusion_matrix`` (the metric depends on the counts only), so that scenes
    and processes can be summed as small [C+1, C+1] matrices instead of keeping every point.

    ``fmiou_exclude``: the classes f-mIoU leaves out (None or empty: the label set's); ``splits``: ((name, class
    names), ...) reported as split mIoUs (None: the label set's, ScanNet200's head / common / tail)."""
    num_classes = len(class_names)
    conf = np.asarray(conf, np.int64)
    if conf.shape != (num_classes + 1, num_classes + 1):
        raise ValueError(f'confusion matrix must be [{num_classes + 1}, {num_classes + 1}], found {list(conf.shape)}')
    iou_conf = conf if no_feature_in_iou else conf[:num_classes, :num_classes]
    gt_count = conf[:, :num_classes].sum(0)                  # every GT point of the class
    tp = np.diag(conf)[:num_classes].astype(np.float64)
    fp = iou_conf[:num_classes, :num_classes].sum(1) - tp
    fn = iou_conf[:, :num_classes].sum(0) - tp
    present = gt_count > 0                                     # upstream skips classes absent from GT
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(present, tp / np.maximum(tp + fp + fn, 1), np.nan)
        acc = np.where(present, tp / np.maximum(gt_count, 1), np.nan)
    result = {
        'class_names': list(class_names),
        'iou': iou, 'acc': acc, 'present': present, 'tp': tp.astype(np.int64),
        'union': (tp + fp + fn).astype(np.int64), 'gt_count': gt_count.astype(np.int64),
        'miou': float(np.nansum(iou) / num_classes),
        'macc': float(np.nansum(acc) / num_classes),
        'miou_present': float(np.nanmean(iou)) if present.any() else float('nan'),
        'macc_present': float(np.nanmean(acc)) if present.any() else float('nan'),
        'num_points': int(conf.sum()),
    }
    names = list(class_names)
    excluded = fmiou_classes(names, fmiou_exclude)
    result['fmiou_exclude'] = None if excluded is None else list(excluded)
    result['fmiou'] = result['fmiou_present'] = None
    if excluded is not None:
        foreground = np.array([n not in excluded for n in names])
        result['fmiou'], result['fmiou_present'] = _subset_means(iou, present, foreground)
    if splits is None:
        info = label_set_of(names)
        splits = info.splits if info is not None else ()
    result['split_miou'], result['split_miou_present'], result['split_sizes'] = {}, {}, {}
    for split, members in splits:
        unknown = [c for c in members if c not in names]
        if unknown:
            raise ValueError(f"split '{split}': {unknown} are not classes of the label set")
        mask = np.array([n in members for n in names])
        result['split_miou'][split], result['split_miou_present'][split] = _subset_means(iou, present, mask)
        result['split_sizes'][split] = (int(mask.sum()), int((mask & present).sum()))
    if stdout or logger is not None:
        text = format_table(result)
        (logger.info if logger is not None else print)('\n' + text)
    return result


def format_table(result):
    """Per-class IoU / accuracy table, the way upstream prints it, plus both means."""
    width = max(14, max(len(n) for n in result['class_names']))
    lines = [f"{'class':<{width}}   IoU     Acc     (tp / union)", '-' * (width + 38)]
    for i, name in enumerate(result['class_names']):
        if not result['present'][i]:
            lines.append(f'{name:<{width}}   -       -       (absent from GT)')
            continue
        lines.append(f"{name:<{width}}   {result['iou'][i]:.3f}   {result['acc'][i]:.3f}   "
                     f"({result['tp'][i]} / {result['union'][i]})")
    lines.append('-' * (width + 38))
    lines.append(f"mIoU {result['miou']:.4f}  mAcc {result['macc']:.4f}  (upstream: sum over present classes / "
                 f"{len(result['class_names'])})")
    lines.append(f"mIoU {result['miou_present']:.4f}  mAcc {result['macc_present']:.4f}  "
                 f"(mean over the {int(result['present'].sum())} classes present in GT)")
    lines.extend(secondary_lines(result))
    return '\n'.join(lines)


def secondary_lines(result):
    """The lines of f-mIoU and of the split mIoUs (when the result has them), each saying what it averages; mIoU
    above them stays the paper's number."""
    lines = []
    if result.get('fmiou') is not None:
        excluded = result['fmiou_exclude']
        n = len(result['class_names']) - len(excluded)
        kept = sum(1 for name, p in zip(result['class_names'], result['present']) if p and name not in excluded)
        lines.append(f"f-mIoU {result['fmiou']:.4f}  (foreground: the {n} classes without {', '.join(excluded)}; "
                     f"sum over the {kept} present / {n}, as mIoU; mean over present {result['fmiou_present']:.4f})")
    for split, value in result.get('split_miou', {}).items():
        n, kept = result['split_sizes'][split]
        lines.append(f"{split} mIoU {value:.4f}  (the {n} {split} classes; sum over the {kept} present / {n}, as mIoU; "
                     f"mean over present {result['split_miou_present'][split]:.4f})")
    return lines


def per_class_scalars(result, prefix):
    """{'<prefix>/<class>': IoU} for the classes present in GT (TensorBoard's per-class curves)."""
    return {f"{prefix}/{name.replace(' ', '_')}": float(iou)
            for name, iou, present in zip(result['class_names'], result['iou'], result['present']) if present}
