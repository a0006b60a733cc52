"""Pictures of a segmentation: coloured PLY point clouds, a per-class IoU bar chart, a top-down view.

People look before they read: ``evaluate.py`` writes, per scene, ``<scene>_pred.ply`` / ``<scene>_gt.ply``
(open in MeshLab / CloudCompare) and ``<scene>_topdown.png`` (prediction beside GT), and one
``iou_per_class.png``. Colours come from the dataset palette (``dataset/label_constants.py``);
'unlabeled' and ignored points are black. Every file is written atomically.
"""
import numpy as np

from dataset.label_constants import IGNORE_LABEL
from util.io import atomic_path


def labels_to_colors(labels, palette_with_unlabeled):
    """uint8 RGB [N, 3]; labels outside the palette (unlabeled, 255 = ignore) take the last colour."""
    palette = np.asarray(palette_with_unlabeled, dtype=np.uint8)
    labels = np.asarray(labels).astype(np.int64)
    idx = np.where((labels < 0) | (labels >= len(palette) - 1) | (labels == IGNORE_LABEL), len(palette) - 1, labels)
    return palette[idx]


def write_ply(path, coords, colors, labels=None):
    """Binary PLY with x, y, z (float32), red, green, blue (uint8) and optionally a 'label' per vertex."""
    from plyfile import PlyData, PlyElement
    coords = np.asarray(coords, np.float32)
    colors = np.asarray(colors, np.uint8)
    fields = [('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')]
    if labels is not None:
        fields.append(('label', 'i4'))
    vertex = np.empty(coords.shape[0], dtype=fields)
    vertex['x'], vertex['y'], vertex['z'] = coords[:, 0], coords[:, 1], coords[:, 2]
    vertex['red'], vertex['green'], vertex['blue'] = colors[:, 0], colors[:, 1], colors[:, 2]
    if labels is not None:
        vertex['label'] = np.asarray(labels, np.int32)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, 'vertex')], text=False).write(tmp)


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')  # no display on servers / CI
    import matplotlib.pyplot as plt
    return plt


def iou_bar_chart(result, path, title='per-class IoU'):
    """Horizontal bars of the IoU of every class present in GT (``util.metric.evaluate`` result)."""
    plt = _pyplot()
    names = [n for n, p in zip(result['class_names'], result['present']) if p]
    ious = [float(i) for i, p in zip(result['iou'], result['present']) if p]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
    ax.barh(range(len(names)), ious, color='tab:blue')
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.axvline(result['miou_present'], color='tab:red', linestyle='--', label=f"mean {result['miou_present']:.3f}")
    ax.set_xlabel('IoU')
    ax.set_title(title)
    ax.legend(loc='lower right')
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)


def topdown_image(coords, colors, max_pixels=400):
    """Rasterise a point cloud seen from above: per pixel the colour of its highest point, white elsewhere.

    The pixel size follows the point density (about the mean spacing of the projected points), so a
    sparse cloud still shows as surfaces and a dense one keeps ``max_pixels`` on its long side.
    """
    coords, colors = np.asarray(coords, np.float64), np.asarray(colors, np.uint8)
    lo, hi = coords[:, :2].min(0), coords[:, :2].max(0)
    extent = np.maximum(hi - lo, 1e-6)
    spacing = np.sqrt(extent[0] * extent[1] / max(len(coords), 1))
    pixel = max(extent.max() / max_pixels, 0.8 * spacing)
    size = np.floor(extent / pixel).astype(np.int64) + 1
    ij = np.floor((coords[:, :2] - lo) / pixel).astype(np.int64)
    image = np.full((size[1], size[0], 3), 255, np.uint8)
    order = np.argsort(coords[:, 2], kind='stable')   # later (higher) points overwrite lower ones
    image[size[1] - 1 - ij[order, 1], ij[order, 0]] = colors[order]
    return image


def topdown_png(path, coords, pred_colors, gt_colors, title='', legend=None):
    """Prediction beside GT seen from above; ``legend``: [(name, rgb uint8)] drawn under the pictures."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.5))
    for ax, colors, name in zip(axes, (pred_colors, gt_colors), ('prediction', 'ground truth')):
        ax.imshow(topdown_image(coords, colors), interpolation='nearest')
        ax.set_title(name)
        ax.axis('off')
    if legend:
        from matplotlib.patches import Patch
        handles = [Patch(color=np.asarray(rgb) / 255.0, label=name) for name, rgb in legend]
        fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 if legend else 0, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=80)
    plt.close(fig)


def learning_curve_png(path, steps, values, references=(), title='', ylabel='val mIoU'):
    """A validation curve (``values`` at ``steps``) with horizontal ``references``: [(label, value)], e.g. the
    mIoU of the 2D pseudo labels the 3D network should beat."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(steps, values, marker='o', color='tab:blue', label='ESG 3D network')
    for (label, value), color in zip(references, ('tab:red', 'tab:green', 'tab:purple', 'tab:gray')):
        ax.axhline(value, color=color, linestyle='--', label=f'{label} {value:.3f}')
    ax.set_xlabel('training step')
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)
