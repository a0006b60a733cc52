"""ScanNet-like over-segmentation of a synthetic scan: what ScanNet releases as
``<scene>_vh_clean_2.0.010000.segs.json`` (one segment id per mesh vertex, i.e. per point of the ``.pth``), made
from the room's own parts.

Each segment is a planar piece of one part: a face of a primitive (a box's side, a cylinder's side, top or bottom),
cut into tiles of ``TILE`` metres on the face, so a wall or a floor becomes several segments and a table top one or
two, as ScanNet's mesh segmentation (normals-based Felzenszwalb-Huttenlocher) gives on real scans; pieces under
``MIN_POINTS`` points (a chair leg's side, a picture frame) are merged per object and class, as ScanNet's
segmentation merges segments under its ``segMinVerts``. The
segments follow the true part boundaries, so they are purer than a real over-segmentation (no segment spans two
objects): an upper bound for a refinement that pools over them; ``superpoint_source graph`` segments the same
points from their geometry and colours instead (``dataset/superpoints.py``). Nothing here draws a random number:
the scene's other outputs do not change.
"""
import numpy as np

TILE = 1.0  # metres: the side of the tiles a face is cut into
MIN_POINTS = 20  # pieces with fewer points are merged per object and class (ScanNet's segMinVerts is 20)


def point_faces(room, clean, primitive_index):
    """int [N]: the face of its primitive each point was sampled on (``Primitive.faces`` numbering: box 0-5 =
    -x/+x/-y/+y/-z/+z; cylinder 0 side, 1 bottom, 2 top). ``clean``: the noise-free sample positions."""
    face = np.zeros(len(clean), np.int64)
    for i in np.unique(primitive_index):
        p = room.primitives[i]
        sel = np.flatnonzero(primitive_index == i)
        pts = clean[sel]
        if p.kind == 'box':
            f = np.full(len(sel), -1, np.int64)
            for candidate in p.faces:   # sampled points lie exactly on their face's plane
                axis, side = candidate // 2, candidate % 2
                on = (f < 0) & (pts[:, axis] == (p.hi[axis] if side else p.lo[axis]))
                f[on] = candidate
            f[f < 0] = p.faces[0]
        else:
            f = np.where(pts[:, 2] == p.lo[2], 1, np.where(pts[:, 2] == p.hi[2], 2, 0))
        face[sel] = f
    return face


def scan_segments(room, clean, primitive_index, tile=TILE, min_points=MIN_POINTS):
    """ScanNet-like segment ids int64 [N]: each the lowest point index of its segment (ScanNet's ids are vertex
    indices too), one segment per (primitive, face, tile of the face), the small ones merged per (object, class)."""
    clean = np.asarray(clean, np.float64)
    primitive_index = np.asarray(primitive_index, np.int64)
    face = point_faces(room, clean, primitive_index)
    lo = np.stack([p.lo for p in room.primitives])[primitive_index]
    hi = np.stack([p.hi for p in room.primitives])[primitive_index]
    cyl = np.array([p.kind == 'cylinder' for p in room.primitives])[primitive_index]
    rel = clean - lo
    # two coordinates in the plane of the face: the axes other than its normal (box), arc length and height
    # (cylinder side), x and y (cylinder caps)
    axis = np.where(cyl, 2, face // 2)
    uv = np.zeros((len(clean), 2))
    for a in range(3):
        others = [b for b in range(3) if b != a]
        sel = axis == a
        uv[sel] = rel[sel][:, others]
    side = cyl & (face == 0)
    if side.any():
        centre = (lo[side] + hi[side]) / 2
        radius = (hi[side, 0] - lo[side, 0]) / 2
        angle = np.arctan2(clean[side, 1] - centre[:, 1], clean[side, 0] - centre[:, 0]) + np.pi
        uv[side] = np.stack([angle * radius, rel[side, 2]], 1)
    tiles = np.floor(uv / tile).astype(np.int64)
    keys = np.stack([primitive_index, face, tiles[:, 0], tiles[:, 1]], 1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    small = counts[inverse.ravel()] < min_points
    if small.any():
        obj = np.array([p.object_id for p in room.primitives])[primitive_index]
        cls = np.array([p.class_id for p in room.primitives])[primitive_index]
        keys[small] = np.stack([-1 - obj[small], cls[small], np.zeros_like(obj[small]), np.zeros_like(obj[small])], 1)
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    first = np.full(inverse.max() + 1, len(clean), np.int64)
    np.minimum.at(first, inverse, np.arange(len(clean), dtype=np.int64))
    return first[inverse]
