"""Segmentation metrics exactly as OpenScene's / 3DSS-VLG's ``pipeline/metric.py`` compute them.

- points whose GT is 255 (IGNORE_LABEL) are left out;
- a prediction >= num_classes ('unlabeled' / no 2D feature, or 256 as upstream writes it) is a
  wrong prediction: it never counts as a true positive and it lowers the class accuracy.
  Upstream drops the 'no feature' row of the confusion matrix before computing IoU, so such a point
  is not a false negative in IoU; ``no_feature_in_iou=True`` counts it there too (stricter);
- upstream's mIoU / mAcc divide the sum over the classes present in GT by the number of classes
  (``miou``); the mean over present classes is reported beside it (``miou_present``).
"""
import numpy as np

from dataset.label_constants import IGNORE_LABEL


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


def evaluate(pred, gt, class_names, stdout=False, no_feature_in_iou=False, logger=None):
    """Per-class IoU / accuracy and the means of per-point predictions. Returns a dict (module docstring)."""
    conf = confusion_matrix(pred, gt, len(class_names))
    return evaluate_confusion(conf, class_names, stdout=stdout, no_feature_in_iou=no_feature_in_iou, logger=logger)


def evaluate_confusion(conf, class_names, stdout=False, no_feature_in_iou=False, logger=None):
    """``evaluate`` from a ``confusion_matrix`` (the metric depends on the counts only), so that scenes
    and processes can be summed as small [C+1, C+1] matrices instead of keeping every point."""
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
    return '\n'.join(lines)


def per_class_scalars(result, prefix):
    """{'<prefix>/<class>': IoU} for the classes present in GT (TensorBoard's per-class curves)."""
    return {f"{prefix}/{name.replace(' ', '_')}": float(iou)
            for name, iou, present in zip(result['class_names'], result['iou'], result['present']) if present}
