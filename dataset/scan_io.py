"""One's own scans as network input: PLY files (as scanner apps and MeshLab write them), ``.pth`` scenes, folders.

    read_scan('room.ply') -> Scene3D(coords float32 [N, 3] metres, colors float32 [N, 3] in [-1, 1], labels, has_labels)
    read_scan_in_frame('room.ply') -> (that Scene3D, ScanFrame: how to map outputs back onto the scan)

A PLY file is read with ``plyfile`` (ASCII or binary, any endianness). What is taken from it:
- the ``vertex`` element's ``x``, ``y``, ``z`` (any numeric type) and its colour, ``red/green/blue`` (also spelled
  ``r/g/b`` or ``diffuse_red/...``). Integer colours are scaled by their type's range (uchar 0-255,
  ushort 0-65535); float colours are 0-1 when none exceeds 1, else 0-255 (more than 255 is an error).
  A scan without colour is an error, not black points: the network was trained on colours.
- other vertex properties (normals, confidence, alpha, intensity, ...) are ignored;
- a mesh's faces are ignored: its vertices are the point set (a mesh PLY of a room, as ScanNet's, has its
  colours on the vertices).
GT labels are never read from a PLY: a ``label`` property of an arbitrary file (ScanNet's ``.labels.ply`` holds
NYU40 ids) is not in the label set of the network, so a scan from a PLY has no GT.

Every problem (not a PLY, no vertices, NaN / inf coordinates, a missing property, colours out of range) is a
``FormatError`` naming the file, what was expected and what was found.

Coordinates are read in float64; a georeferenced scan (offsets of 10^5-10^6 m) is moved to its lowest corner
before anything becomes float32, so it keeps its millimetres; outputs go back to the scan's own frame
(``ScanFrame.to_input``). Two checks catch a wrong ``input_scale`` or ``input_up_axis`` before a wrong prediction
(``input_checks False`` skips them): the scan's largest side must be 0.5-200 m, and its largest plane, the floor
of a room, must be horizontal.
"""
import glob
import os
from dataclasses import dataclass

import numpy as np

from dataset.formats import FormatError, Scene3D, load_scene_3d, scene_name
from dataset.label_constants import IGNORE_LABEL
from dataset.point_loader import Point3DLoader, scene_and_repeat

SCAN_EXTENSIONS = ('.ply', '.pth')
# colour property spellings seen in exporters: plain (MeshLab, Open3D, most apps), short, and 'diffuse_' (some
# photogrammetry tools); checked in this order
COLOR_NAMES = (('red', 'green', 'blue'), ('r', 'g', 'b'), ('diffuse_red', 'diffuse_green', 'diffuse_blue'))


def list_scans(path):
    """The scan files of ``path``: a file itself, or the sorted ``.ply`` / ``.pth`` files of a folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(p for p in glob.glob(os.path.join(glob.escape(path), '*'))
                       if p.lower().endswith(SCAN_EXTENSIONS) and os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"input folder '{path}' holds no .ply or .pth scan")
    elif os.path.isfile(path):
        if not path.lower().endswith(SCAN_EXTENSIONS):
            raise FormatError(f"input '{path}': expected a .ply or .pth scan (or a folder of them), "
                              f"found a '{os.path.splitext(path)[1] or 'no'}' extension")
        files = [path]
    else:
        raise FileNotFoundError(f"input '{path}' does not exist")
    names = [scan_name(p) for p in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        # outputs are named after the scan: two files with one name would overwrite each other's results
        raise FormatError(f"input '{path}': several scans share the name(s) {dupes} (e.g. a .ply and a .pth); "
                          f"rename one of them")
    return files


def scan_name(path):
    """Output name of a scan: the file name without extension (and ScanNet's '_vh_clean_2')."""
    path = os.fspath(path)
    if path.lower().endswith('.ply'):
        return os.path.basename(path)[:-4]
    return scene_name(path)


EXTENT_RANGE = (0.5, 200.0)  # metres: what an indoor scan spans (its largest side), after input_scale
_SLAB = 0.04                 # metres: the thickness of the slabs the up-axis check counts points in
_MIN_POINTS_CHECKED = 1000  # the up-axis check needs a plane's worth of points
_FAR = 1e4                   # coordinates beyond this (in the file's unit) are georeferenced: moved near 0 first


@dataclass(frozen=True)
class ScanFrame:
    """How a scan's own coordinates became the network's: ``local = orient(input - origin, up_axis) * scale``,
    computed in float64 (``origin``: 0, or for georeferenced coordinates beyond 10^4 the scan's lowest corner in
    whole units, so offsets of 10^5-10^6 m keep their millimetres in the float32 the network reads).
    ``to_input`` goes back, for outputs that must overlay the scan."""
    origin: tuple
    up_axis: str
    scale: float

    def to_input(self, coords):
        """[N, 3] float64 in the scan's own frame and unit from network coordinates."""
        local = np.asarray(coords, np.float64) / self.scale
        if self.up_axis == 'y':  # inverse of (x, y, z) -> (x, -z, y)
            local = np.stack([local[:, 0], local[:, 2], -local[:, 1]], axis=1)
        return local + np.asarray(self.origin, np.float64)


def read_scan(path, up_axis='z', scale=1.0, checks=True) -> Scene3D:
    """A scan as the loaders' Scene3D; ``up_axis`` 'y' turns a y-up scan (ARKit / many phone apps) z-up and
    ``scale`` converts its unit to metres (0.001 for millimetres), because the network saw z-up rooms in metres.
    See ``read_scan_in_frame`` (which also returns the ``ScanFrame``) for the checks."""
    return read_scan_in_frame(path, up_axis, scale, checks)[0]


def read_scan_in_frame(path, up_axis='z', scale=1.0, checks=True):
    """(Scene3D in the network's frame, ``ScanFrame``). With ``checks`` (config key ``input_checks``), a scan
    whose extent is not an indoor room's (``EXTENT_RANGE``, the unit is wrong: ``input_scale``) or whose largest
    plane is not horizontal under ``up_axis`` (``check_up_axis``) is refused, saying which key fixes it."""
    path = os.fspath(path)
    if path.lower().endswith('.ply'):
        scene = read_ply_scan(path)
    elif path.lower().endswith('.pth'):
        scene = load_scene_3d(path)
        if not np.isfinite(scene.coords).all():
            raise FormatError(f"scan '{path}': {int((~np.isfinite(scene.coords)).any(1).sum())} points have NaN or "
                              f"inf coordinates; expected finite x, y, z")
        if scene.coords.shape[0] == 0:
            raise FormatError(f"scan '{path}': expected at least one point, found none")
    else:
        raise FormatError(f"scan '{path}': expected a .ply or .pth file")
    if not scale > 0:
        raise ValueError(f"input_scale must be positive, found {scale}")
    raw = np.asarray(scene.coords, np.float64)
    # georeferenced coordinates: move to the scan's lowest corner (whole metres) before anything is float32; a room
    # in its own frame is left where it is, so it voxelises exactly as the same scene of a data set
    origin = np.floor(raw.min(0)) if np.abs(raw).max() > _FAR else np.zeros(3)
    coords = orient(raw - origin, up_axis, path) * float(scale)
    if checks:
        check_extent(coords, path, scale)
        check_up_axis(coords, path, up_axis)
    frame = ScanFrame(tuple(float(v) for v in origin), up_axis, float(scale))
    return Scene3D(coords.astype(np.float32), scene.colors, scene.labels, scene.has_labels), frame


def check_extent(coords, path, scale):
    """Refuse a scan whose largest side, in metres after ``scale``, is outside ``EXTENT_RANGE``."""
    side = float(np.ptp(coords, axis=0).max()) if len(coords) else 0.0
    lo, hi = EXTENT_RANGE
    if lo <= side <= hi:
        return
    if side > hi:
        hint = ('a scan in millimetres needs input_scale 0.001, in centimetres 0.01' if scale == 1.0 else
                f'check input_scale ({scale:g})')
    else:
        hint = f'a scan in kilometres or a single object? check input_scale ({scale:g})'
    raise ValueError(f"scan '{path}' spans {side:,.2f} m after input_scale {scale:g}, but an indoor room spans "
                     f"{lo:g}-{hi:g} m: {hint}; input_checks False skips this check")


def plane_shares(coords):
    """Per axis (x, y, z): the share of the points in the most populated slab of ``_SLAB`` metres perpendicular to
    it. A room's largest plane is its floor, horizontal: the up axis is the one with the largest share."""
    shares = []
    for a in range(3):
        v = coords[:, a]
        bins = max(int(np.ceil((v.max() - v.min()) / (_SLAB / 2))), 1)
        counts = np.bincount(np.minimum(((v - v.min()) / (_SLAB / 2)).astype(np.int64), bins - 1), minlength=bins)
        slab = counts[:-1] + counts[1:] if bins > 1 else counts  # two half-slabs: a plane on a bin edge counts
        shares.append(float(slab.max()) / len(v))
    return shares


def check_up_axis(coords, path, up_axis):
    """Refuse a scan (already turned z-up by ``up_axis``) whose largest plane is clearly not horizontal: a slab
    perpendicular to another axis holds at least 10 % of the points and twice as many as the best horizontal
    slab (a y-up scan read as z-up has its floor as a wall). Scans of fewer than 1,000 points are not checked."""
    if len(coords) < _MIN_POINTS_CHECKED:
        return  # too few points to tell a plane from chance
    shares = plane_shares(coords)
    best = int(np.argmax(shares))
    if best == 2 or shares[best] < 2 * shares[2] or shares[best] < 0.1:
        return
    in_file = 'xyz'[best] if up_axis == 'z' else 'xzy'[best]  # the axis of the file that this one came from
    fix = ('input_up_axis y' if in_file == 'y' else
           f'the scan turned so that its floor is horizontal (up axis {in_file})')
    raise ValueError(f"scan '{path}': with input_up_axis {up_axis} its largest plane is vertical: "
                     f"{shares[best]:.0%} of the points lie in one {100 * _SLAB:.0f} cm slab perpendicular to the "
                     f"file's {in_file} axis, {shares[2]:.0%} in the best horizontal one; a room's largest plane is "
                     f"its floor, so it looks {in_file}-up: give {fix}; input_checks False skips this check")


def orient(coords, up_axis, path=''):
    """Rotate so that ``up_axis`` becomes +z (a proper rotation: y-up -> z-up is x, y, z -> x, -z, y)."""
    if up_axis == 'z':
        return coords
    if up_axis == 'y':
        return np.stack([coords[:, 0], -coords[:, 2], coords[:, 1]], axis=1)
    raise ValueError(f"input_up_axis must be 'z' or 'y', found '{up_axis}' (scan '{path}')")


def _vertex_properties(vertex):
    return [p.name for p in vertex.properties]


def read_ply_scan(path) -> Scene3D:
    """x, y, z and colours of a PLY file's vertices (module docstring); faces are ignored."""
    from plyfile import PlyData
    try:
        ply = PlyData.read(path)
    except Exception as err:  # plyfile raises PlyHeaderParseError, PlyElementParseError, ValueError, ...
        raise FormatError(f"scan '{path}': cannot read it as a PLY file ({type(err).__name__}: {err})") from err
    elements = [e.name for e in ply.elements]
    if 'vertex' not in elements:
        raise FormatError(f"scan '{path}': expected a 'vertex' element with x, y, z and colours, "
                          f"found the elements {elements}")
    vertex = ply['vertex']
    n = vertex.count
    if n == 0:
        raise FormatError(f"scan '{path}': the 'vertex' element is empty; expected at least one point")
    names = _vertex_properties(vertex)
    missing = [a for a in 'xyz' if a not in names]
    if missing:
        raise FormatError(f"scan '{path}': expected vertex properties x, y, z; missing {missing}, "
                          f"found {names}")
    data = vertex.data
    for a in 'xyz':
        if data[a].dtype.kind not in 'fiu':
            raise FormatError(f"scan '{path}': vertex property '{a}' must be numeric, found {data[a].dtype}")
    coords = np.stack([np.asarray(data[a], np.float64) for a in 'xyz'], axis=1)  # float64: georeferenced scans
    bad = ~np.isfinite(coords).all(1)
    if bad.any():
        raise FormatError(f"scan '{path}': {int(bad.sum())} of {n} points have NaN or inf coordinates "
                          f"(first at vertex {int(np.argmax(bad))}); expected finite x, y, z")
    spelling = next((c for c in COLOR_NAMES if all(name in names for name in c)), None)
    if spelling is None:
        raise FormatError(f"scan '{path}': expected vertex colours (red, green, blue), found only the properties "
                          f"{names}; the network needs colours (a scan without them cannot be predicted as trained)")
    colors = _colors_01(np.stack([np.asarray(data[c]) for c in spelling], axis=1), path, spelling)
    return Scene3D(coords, (colors * 2.0 - 1.0).astype(np.float32), np.full(n, IGNORE_LABEL, np.int64), False)


def _colors_01(raw, path, spelling):
    """Colours in [0, 1] from an integer or float PLY colour array (module docstring for the rule)."""
    kind = raw.dtype.kind
    if kind in 'iu':
        if kind == 'i' and raw.min() < 0:
            raise FormatError(f"scan '{path}': colour properties {list(spelling)} hold negative values "
                              f"(min {int(raw.min())}); expected 0-255")
        top = 255.0 if raw.dtype.itemsize == 1 else (65535.0 if raw.dtype.itemsize == 2 else None)
        if top is None:  # a 32-bit integer colour: only 0-255 is meaningful
            top = 255.0
            if raw.max() > 255:
                raise FormatError(f"scan '{path}': 32-bit integer colours {list(spelling)} up to {int(raw.max())}; "
                                  f"expected 0-255")
        return raw.astype(np.float64) / top
    if kind != 'f':
        raise FormatError(f"scan '{path}': colour properties {list(spelling)} must be numeric, found {raw.dtype}")
    raw = raw.astype(np.float64)
    if not np.isfinite(raw).all():
        raise FormatError(f"scan '{path}': {int((~np.isfinite(raw)).any(1).sum())} points have NaN or inf colours")
    lo, hi = float(raw.min()), float(raw.max())
    if lo < 0:
        raise FormatError(f"scan '{path}': float colours {list(spelling)} go down to {lo:g}; expected 0-1 or 0-255")
    if hi <= 1.0:
        return raw           # 0-1 floats (Open3D writes these)
    if hi <= 255.0:
        return raw / 255.0   # 0-255 stored as floats
    raise FormatError(f"scan '{path}': float colours {list(spelling)} go up to {hi:g}; expected 0-1 or 0-255")


class ScanLoader(Point3DLoader):
    """The evaluation loader (``pipeline.inference.eval_dataset``: ``Point3DLoader(eval_all=True, aug=False)``) over
    arbitrary scan files instead of ``<data_root>/<split>``: the same voxeliser and its test-time rotation /
    scale, so a scan is predicted exactly as a scene of the data set would be. Module level, so DataLoader
    workers can pickle it."""

    has_fused_features = False  # one's own scans: no fused 2D features exist for them

    def __init__(self, paths, voxel_size, input_color=True, seed=0, up_axis='z', scale=1.0, checks=True):
        orient(np.zeros((1, 3)), up_axis)  # a wrong up axis fails here, before any file is read
        if not scale > 0:
            raise ValueError(f"input_scale must be positive, found {scale}")
        self.up_axis, self.scale, self.checks = up_axis, scale, checks
        super().__init__(data_paths=list(paths), voxel_size=voxel_size, aug=False, eval_all=True,
                         input_color=input_color, seed=seed)

    def scene_name(self, index):
        return scan_name(self.data_paths[scene_and_repeat(index, len(self.data_paths))[0]])

    def read_scene(self, index):
        if index in self._cache:
            return super().read_scene(index)
        scene = read_scan(self.data_paths[index], up_axis=self.up_axis, scale=self.scale, checks=self.checks)
        return scene.coords, (scene.colors.astype(np.float64) + 1.0) * 127.5, scene.labels

    def frame(self, index):
        """The ``ScanFrame`` of scan ``index`` (outputs written with ``frame.to_input`` overlay the scan)."""
        return read_scan_in_frame(self.data_paths[index], self.up_axis, self.scale, checks=False)[1]
