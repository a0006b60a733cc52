"""Pictures of a segmentation: coloured PLY point clouds, a per-class IoU bar chart, a top-down view.

People look before they read: ``evaluate.py`` writes, per scene, ``<scene>_pred.ply`` / ``<scene>_gt.ply``
(open in MeshLab / CloudCompare) and ``<scene>_topdown.png`` (prediction, GT and the errors from above), and
one ``iou_per_class.png``. Colours come from the dataset palette (``dataset/label_constants.py``);
'unlabeled' (no prediction: a point without 2D feature in ``feature_type fusion``) is black, points whose GT is
ignored (255) are mid grey, so neither can be taken for a class. Every file is written atomically.
"""
import numpy as np

from dataset.label_constants import IGNORE_LABEL, UNLABELED_COLOR
from util.io import atomic_path

IGNORED_COLOR = (100, 100, 100)      # GT 255: unannotated; the grey farthest from every class colour, apart from black
BACKGROUND = 255                      # empty pixels of the top-down pictures (white)
# the error panel: every point falls in exactly one category
ERROR_CATEGORIES = (
    ('correct', (44, 160, 44)),
    ('wrong', (214, 39, 40)),
    ('correct, no 2D feature', (150, 220, 140)),   # the 3D network filled a point no view saw, rightly
    ('wrong, no 2D feature', (255, 150, 40)),
    ('no 2D feature, not predicted', UNLABELED_COLOR),  # 'unlabeled' prediction (feature_type fusion)
    ('ignored (no GT)', IGNORED_COLOR),
)


def labels_to_colors(labels, palette_with_unlabeled):
    """uint8 RGB [N, 3]; 255 (ignore) is ``IGNORED_COLOR``, other labels outside the palette ('unlabeled')
    take the palette's last colour."""
    palette = np.asarray(palette_with_unlabeled, dtype=np.uint8)
    labels = np.asarray(labels).astype(np.int64)
    idx = np.where((labels < 0) | (labels >= len(palette) - 1), len(palette) - 1, labels)
    colors = palette[idx]
    colors[labels == IGNORE_LABEL] = IGNORED_COLOR
    return colors


def error_colors(pred, gt, num_classes, covered=None):
    """The error panel: a colour per point from ``ERROR_CATEGORIES`` -> (uint8 [N, 3], [(name, rgb)] of the
    categories present). ``covered`` (bool [N], points with a 2D feature) splits correct / wrong by whether a
    view saw the point; None when unknown (e.g. one's own scans)."""
    pred, gt = np.asarray(pred, np.int64), np.asarray(gt, np.int64)
    ignored = gt == IGNORE_LABEL
    unpredicted = (pred < 0) | (pred >= num_classes)
    correct = (pred == gt) & ~ignored
    no_2d = np.zeros(len(pred), bool) if covered is None else ~np.asarray(covered, bool)
    category = np.where(correct, 0, 1)
    category[no_2d & correct] = 2
    category[no_2d & ~correct] = 3
    category[unpredicted] = 4
    category[ignored] = 5
    table = np.asarray([rgb for _, rgb in ERROR_CATEGORIES], np.uint8)
    present = np.unique(category)
    return table[category], [ERROR_CATEGORIES[c] for c in present]


def write_ply(path, coords, colors, labels=None, extra=None):
    """Binary PLY with x, y, z (float32; float64 when ``coords`` are float64, as an own scan's coordinates in its
    own frame, which may be georeferenced), red, green, blue (uint8), optionally a 'label' per vertex and
    ``extra``: {property name: array [N]} (uint8 arrays stay uchar, anything else is written as float32: e.g.
    a query's 'score')."""
    from plyfile import PlyData, PlyElement
    xyz = 'f8' if np.asarray(coords).dtype == np.float64 else 'f4'
    coords = np.asarray(coords, np.float64 if xyz == 'f8' else np.float32)
    colors = np.asarray(colors, np.uint8)
    fields = [('x', xyz), ('y', xyz), ('z', xyz), ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')]
    if labels is not None:
        fields.append(('label', 'i4'))
    extra = dict(extra or {})
    extra = {k: np.asarray(v) for k, v in extra.items()}
    fields += [(name, 'u1' if v.dtype == np.uint8 else 'f4') for name, v in extra.items()]
    vertex = np.empty(coords.shape[0], dtype=fields)
    vertex['x'], vertex['y'], vertex['z'] = coords[:, 0], coords[:, 1], coords[:, 2]
    vertex['red'], vertex['green'], vertex['blue'] = colors[:, 0], colors[:, 1], colors[:, 2]
    if labels is not None:
        vertex['label'] = np.asarray(labels, np.int32)
    for name, values in extra.items():
        vertex[name] = values
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, 'vertex')], text=False).write(tmp)


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')  # no display on servers / CI
    import matplotlib.pyplot as plt
    return plt


def iou_bar_chart(result, path, title='per-class IoU', compare=()):
    """Horizontal bars of the IoU of every class present in GT (``pipeline.metric.evaluate`` result), the value
    written on each bar. ``compare``: [(series name, {class name: IoU or None})] drawn beside each class's bar
    (e.g. the PLG pseudo labels and the ESS labels of the same split), the result's own series last.
    Returns the texts written on the bars, series by series."""
    plt = _pyplot()
    names = [n for n, p in zip(result['class_names'], result['present']) if p]
    own = [float(i) for i, p in zip(result['iou'], result['present']) if p]
    series = [(label, [values.get(n) for n in names]) for label, values in compare]
    series.append((result.get('series_name', 'this evaluation'), own))
    k = len(series)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(7, (0.22 + 0.16 * k) * len(names) + 1.4))
    colors = ('tab:orange', 'tab:green', 'tab:purple', 'tab:gray')[:k - 1] + ('tab:blue',)
    texts = []
    for j, ((label, values), color) in enumerate(zip(series, colors)):
        y = np.arange(len(names)) + (j - (k - 1) / 2) * height
        shown = [np.nan if v is None else float(v) for v in values]
        bars = ax.barh(y, np.nan_to_num(shown), height=height, color=color, label=label)
        for bar, v in zip(bars, shown):
            text = '-' if np.isnan(v) else f'{v:.2f}'
            ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text, va='center',
                    fontsize=7 if k > 1 else 8)
            texts.append(text)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.axvline(result['miou_present'], color='tab:red', linestyle='--',
               label=f"{series[-1][0]}: mean over the {len(names)} classes present in GT {result['miou_present']:.3f}")
    ax.set_xlabel('IoU')
    ax.set_title(title, fontsize=10)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)
    return texts


def per_class_columns_png(path, class_names, series, title='per-class IoU'):
    """Grouped columns, one group per class and one column per series: ``series`` [(label, {class: IoU or None})]
    (None: the class is absent from that evaluation, drawn as no column). The series' mean over the classes
    shown is in its legend label."""
    plt = _pyplot()
    k = len(series)
    width = 0.85 / max(k, 1)
    fig, ax = plt.subplots(figsize=(min(16.0, max(8.0, 0.13 * k * len(class_names) + 2)), 4.8))
    x = np.arange(len(class_names))
    colors = plt.get_cmap('tab10').colors
    for j, (label, values) in enumerate(series):
        v = np.array([np.nan if values.get(n) is None else float(values[n]) for n in class_names])
        mean = float(np.nanmean(v)) if np.isfinite(v).any() else float('nan')
        ax.bar(x + (j - (k - 1) / 2) * width, np.nan_to_num(v), width=width, color=colors[j % len(colors)],
               label=f'{label} (mean {mean:.3f})')
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=45, ha='right', fontsize=8)
    ax.set_xlim(-0.6, len(class_names) - 0.4)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel('IoU')
    ax.grid(axis='y', alpha=0.3)
    ax.set_title(title)
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.28), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)


def point_spacing(coords, max_queries=50_000, seed=0, k=8):
    """The scan's sampling step: 1 / sqrt(points per square metre of surface), from the median distance r_k to the
    k-th nearest neighbour in 3D (on a surface, k points within r_k: step = r_k sqrt(pi / k)).

    The k-th neighbour rather than the first, so that clustered sampling (several returns per spot, as scanners
    and fused frames give) is measured by how it covers the surface, not by the gaps inside a cluster. The tree
    holds every point; distances are measured from at most ``max_queries`` of them (seconds for millions)."""
    from scipy.spatial import cKDTree
    coords = np.asarray(coords, np.float64)
    n = len(coords)
    if n < 2:
        return 1.0
    k = min(k, n - 1)
    queries = coords if n <= max_queries else coords[np.random.default_rng(seed).choice(n, max_queries, replace=False)]
    dist, _ = cKDTree(coords).query(queries, k=k + 1)
    step = float(np.median(dist[:, k])) * float(np.sqrt(np.pi / k))
    if step <= 0:  # duplicated points: fall back to the mean spacing over the footprint
        extent = np.maximum(coords[:, :2].max(0) - coords[:, :2].min(0), 1e-6)
        step = float(np.sqrt(extent[0] * extent[1] / n))
    return step


def ceiling_height(coords, margin):
    """z above which points are cut for a top-down view: ``margin`` metres below the top of the scan (its
    99.5th height percentile, so a few stray points above the ceiling do not move it)."""
    return float(np.percentile(np.asarray(coords)[:, 2], 99.5)) - float(margin)


def ceiling_crop(topdown_ceiling_crop, info):
    """Metres cut below the top of a scan for its top-down pictures (config key ``topdown_ceiling_crop``); a
    negative value means by label set: 0.5 m for S3DIS (its rooms have ceilings, which hide everything from
    above), none for ScanNet (its meshes have none)."""
    crop = float(topdown_ceiling_crop)
    if crop < 0:
        crop = 0.5 if info.name == 's3dis' else 0.0
    return crop


class TopDown:
    """The raster of a top-down view, computed once per scene and reused for every colouring of its points.

    Pixel size: the scan's sampling step (``point_spacing``), or larger so that the long side stays within
    ``max_pixels``. Each pixel shows its highest point; points above ``max_z`` are cut first (a ceiling crop:
    S3DIS rooms have ceilings that hide everything from above). Empty pixels inside the footprint (holes of
    at most about ``fill`` pixels, left by irregular sampling) take the colour of the nearest drawn pixel;
    the outline of the scan is not grown.
    """

    def __init__(self, coords, max_pixels=500, max_z=None, fill=2, spacing=None):
        from scipy import ndimage
        coords = np.asarray(coords, np.float64)
        keep = np.ones(len(coords), bool) if max_z is None else coords[:, 2] <= max_z
        if not keep.any():
            raise ValueError(f'top-down view: every point lies above the crop height {max_z:.2f} m')
        self.keep = keep
        xy = coords[keep, :2]
        lo, hi = xy.min(0), xy.max(0)
        extent = np.maximum(hi - lo, 1e-6)
        step = point_spacing(coords) if spacing is None else spacing
        self.pixel = max(float(extent.max()) / max_pixels, step)
        size = np.floor(extent / self.pixel).astype(np.int64) + 1
        ij = np.floor((xy - lo) / self.pixel).astype(np.int64)
        order = np.argsort(coords[keep, 2], kind='stable')  # later (higher) points overwrite lower ones
        rows, cols = size[1] - 1 - ij[order, 1], ij[order, 0]
        owner = np.full((size[1], size[0]), -1, np.int64)
        owner[rows, cols] = np.flatnonzero(keep)[order]
        drawn = owner >= 0
        if fill > 0:
            # holes: pixels the closing of the drawn mask covers; each takes its nearest drawn pixel's point
            closed = ndimage.binary_closing(drawn, structure=np.ones((3, 3), bool), iterations=int(fill),
                                            border_value=0)
            holes = closed & ~drawn
            if holes.any():
                _, (ri, ci) = ndimage.distance_transform_edt(~drawn, return_indices=True)
                owner[holes] = owner[ri[holes], ci[holes]]
        self.owner = owner
        self.shape = owner.shape

    def image(self, colors):
        """uint8 [H, W, 3]: the colours of the points each pixel shows, white where none."""
        colors = np.asarray(colors, np.uint8)
        image = np.full(self.shape + (3,), BACKGROUND, np.uint8)
        shown = self.owner >= 0
        image[shown] = colors[self.owner[shown]]
        return image


def topdown_image(coords, colors, max_pixels=400, max_z=None, fill=2):
    """Rasterise a point cloud seen from above (``TopDown``): per pixel the colour of its highest point."""
    return TopDown(coords, max_pixels=max_pixels, max_z=max_z, fill=fill).image(colors)


OUTLINE_COLOR = '#00c8ff'  # outlines and marks over the heat maps (inferno has no cyan)


def _legend_handles(entries):
    from matplotlib.patches import Patch
    return [Patch(facecolor=np.asarray(rgb) / 255.0, edgecolor='0.3', linewidth=0.5, label=name)
            for name, rgb in entries]


def topdown_panels_png(path, coords, panels, title='', legend=None, max_z=None, panel_legends=None, view=None,
                       colorbar=None, colorbar_marks=(), outlines=None):
    """Top-down pictures of one scene side by side: ``panels`` [(title, colours uint8 [N, 3])]; ``legend``
    [(name, rgb)] under all of them; ``panel_legends`` {panel index: [(name, rgb)]} under one panel (the
    error panel's categories); ``max_z`` a ceiling crop; ``view`` an already computed ``TopDown``;
    ``colorbar`` (cmap, lo, hi, label) beside the last panel (a heat map's scale), ``colorbar_marks``
    values marked by a line across it (say what they are in the label); ``outlines`` {panel index: (points
    bool [N], label)}: the outline of those points drawn over the panel (e.g. the GT points of a queried
    class)."""
    plt = _pyplot()
    view = view if view is not None else TopDown(coords, max_z=max_z)
    h, w = view.shape
    n = len(panels)
    panel_w = 4.6
    fig, axes = plt.subplots(1, n, figsize=(panel_w * n, panel_w * min(max(h / max(w, 1), 0.4), 1.6) + 1.6),
                             squeeze=False)
    for i, (ax, (name, colors)) in enumerate(zip(axes[0], panels)):
        ax.imshow(view.image(colors), interpolation='nearest')
        ax.set_title(name, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if panel_legends and i in panel_legends:
            ax.legend(handles=_legend_handles(panel_legends[i]), loc='upper center', bbox_to_anchor=(0.5, -0.01),
                      ncol=2, fontsize=7, frameon=False)
        if outlines and i in outlines:
            points, label = outlines[i]
            inside = (view.owner >= 0) & np.asarray(points, bool)[np.maximum(view.owner, 0)]
            if inside.any() and not inside.all():
                ax.contour(inside.astype(float), levels=[0.5], colors=[OUTLINE_COLOR], linewidths=1.0)
                ax.plot([], [], color=OUTLINE_COLOR, linewidth=1.0, label=label)
                ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.01), fontsize=7, frameon=False)
    if colorbar is not None:
        import matplotlib
        cmap, lo, hi, label = colorbar
        mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(lo, hi), cmap=cmap)
        bar = fig.colorbar(mappable, ax=axes[0][-1], fraction=0.046, pad=0.02, label=label)
        for value in colorbar_marks:
            if lo <= value <= hi:
                bar.ax.axhline(value, color=OUTLINE_COLOR, linewidth=2)
    note = f'pixel {100 * view.pixel:.1f} cm' + ('' if max_z is None else f', points above z = {max_z:.2f} m cut')
    fig.text(0.99, 0.005, note, ha='right', va='bottom', fontsize=7, color='0.4')
    bottom = 0.0
    if legend:
        ncol = min(len(legend), 3 * n)  # about three names fit under each panel
        rows = -(-len(legend) // ncol)
        bottom = min(0.05 + 0.045 * rows, 0.45)
        fig.legend(handles=_legend_handles(legend), loc='lower center', ncol=ncol, fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, 0.015))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom + (0.08 if panel_legends else 0), 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=90)
    plt.close(fig)


def topdown_png(path, coords, pred_colors, gt_colors, title='', legend=None, max_z=None):
    """Prediction beside GT seen from above; ``legend``: [(name, rgb uint8)] drawn under the pictures."""
    topdown_panels_png(path, coords, [('prediction', pred_colors), ('ground truth', gt_colors)], title=title,
                       legend=legend, max_z=max_z)


def legend_png(path, entries, title=''):
    """A picture of a legend alone: one swatch and name per entry ([(name, rgb)])."""
    plt = _pyplot()
    rows = max(len(entries), 1)
    fig = plt.figure(figsize=(3.6, 0.26 * rows + 0.5))
    fig.legend(handles=_legend_handles(entries), loc='center', frameon=False, fontsize=9, title=title or None)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)


def heat_colors(values, lo, hi, cmap='inferno', missing=None):
    """uint8 [N, 3] of ``values`` mapped linearly from [lo, hi] onto a matplotlib colour map; ``missing``
    (bool [N]) points are drawn in ``IGNORED_COLOR`` (e.g. points without a 2D feature)."""
    import matplotlib
    t = (np.asarray(values, np.float64) - lo) / max(hi - lo, 1e-12)
    colors = (matplotlib.colormaps[cmap](np.clip(t, 0, 1))[:, :3] * 255 + 0.5).astype(np.uint8)
    if missing is not None:
        colors[np.asarray(missing, bool)] = IGNORED_COLOR
    return colors


def learning_curve_png(path, curves, references=(), title='', ylabel='val mIoU'):
    """Validation curves ``curves``: [(label, steps, values)], e.g. the 3D networks of the demo, with horizontal
    ``references``: [(label, value)], e.g. the mIoU of the 2D labels the 3D networks should beat."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, steps, values), color in zip(curves, plt.get_cmap('tab10').colors):
        ax.plot(steps, values, marker='o', markersize=3, color=color, label=f'{label} (last {values[-1]:.3f})')
    for (label, value), color, style in zip(references, ('black', 'dimgray', 'darkgray', 'silver'),
                                            ('--', '-.', ':', '--')):
        ax.axhline(value, color=color, linestyle=style, label=f'{label} {value:.3f}')
    ax.set_xlabel('training step')
    ax.set_ylabel(ylabel)
    top = max([max(v) for _, _, v in curves if len(v)] + [v for _, v in references] + [0.0])
    ax.set_ylim(0, min(1.0, top + 0.15))
    ax.grid(alpha=0.3)
    ax.legend(loc='best', fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)
