"""The building blocks of the synthetic rooms: labelled boxes and vertical cylinders (``Primitive``), a room
(``Room``), the class palettes objects draw their colours from, and ``_Builder``, which places parts in a room."""
import zlib
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from dataset.label_constants import IGNORE_LABEL, DatasetInfo

UNDERSIDE_DENSITY = 0.3  # relative point density on downward faces of raised objects (table undersides)


# Colour palettes (RGB 0-1): every object draws one entry of its class' palette plus a small jitter. The
# palettes overlap as in real scans: wood tones are shared by floors, tables, desks, cabinets, shelves,
# doors and chairs; white by walls, doors, cabinets, counters and sanitary ware; fabrics by sofas, chairs,
# beds and curtains. Colour narrows the class down without deciding it: a 3D network has to use the
# shapes, sizes, heights and placements below (bench/colour_baseline.py measures what colour alone gives).
WOOD = ((0.74, 0.60, 0.44), (0.60, 0.45, 0.31), (0.45, 0.31, 0.20), (0.34, 0.23, 0.16), (0.56, 0.33, 0.24))


WHITE = ((0.92, 0.92, 0.90), (0.85, 0.83, 0.78))


GREY = ((0.70, 0.70, 0.71), (0.50, 0.50, 0.52), (0.30, 0.30, 0.32))


BLACK = ((0.14, 0.14, 0.15),)


FABRIC = ((0.76, 0.70, 0.60), (0.32, 0.40, 0.56), (0.56, 0.24, 0.24), (0.36, 0.46, 0.36), (0.42, 0.29, 0.21),
          (0.28, 0.28, 0.31), (0.62, 0.60, 0.62))


PASTEL = ((0.85, 0.80, 0.70), (0.76, 0.81, 0.86), (0.79, 0.83, 0.73), (0.88, 0.82, 0.78))


STEEL = ((0.68, 0.70, 0.72),)


GLASS = ((0.50, 0.60, 0.70), (0.42, 0.46, 0.50))


CLASS_PALETTES = {
    'wall': WHITE + PASTEL + GREY[:1], 'floor': WOOD[:4] + GREY[:2] + ((0.78, 0.74, 0.66), (0.45, 0.48, 0.55)),
    'ceiling': WHITE, 'cabinet': WOOD + WHITE + GREY, 'bed': WHITE + FABRIC + PASTEL,
    'chair': BLACK + GREY + WOOD[1:4] + FABRIC[1:4] + WHITE[:1], 'sofa': FABRIC,
    'table': WOOD + WHITE[:1] + BLACK + GREY[1:2], 'door': WOOD[:4] + WHITE + GREY[:1],
    'window': WHITE[:1] + BLACK + WOOD[1:2], 'bookshelf': WOOD[:4] + WHITE[:1] + BLACK,
    'counter': WHITE[:1] + GREY + BLACK + ((0.80, 0.75, 0.65),) + WOOD[:1], 'desk': WOOD + WHITE[:1] + BLACK + GREY[:1],
    'curtain': FABRIC + PASTEL + WHITE[1:], 'refrigerator': WHITE + STEEL + BLACK, 'shower curtain': WHITE + PASTEL,
    'toilet': WHITE, 'sink': WHITE + STEEL, 'bathtub': WHITE,
    'otherfurniture': WOOD + WHITE[:1] + BLACK + GREY + FABRIC[1:3],
    'beam': WHITE + GREY[:1], 'column': WHITE + GREY[:1], 'bookcase': WOOD[:4] + WHITE[:1] + BLACK,
    'board': ((0.93, 0.94, 0.95), (0.20, 0.30, 0.25)),
    # parts with their own materials
    'glass': GLASS, 'metal': STEEL + BLACK + GREY[2:], 'frame': WOOD + WHITE[:1] + BLACK + GREY[:1],
}


ANY_COLOUR = ('picture', 'clutter', 'unannotated', 'books')  # pictures, books and small objects: any colour


COLOUR_JITTER = 0.035   # per-object deviation from the palette entry (dye lots, lighting, white balance)


GLASS_DENSITY = 0.3     # relative point density on glass: depth sensors get few returns from it


@dataclass
class Primitive:
    """An axis-aligned box or a z-axis cylinder (inscribed in its [lo, hi] box) with a class.

    faces: the surfaces that get points (box: 0/1 = -x/+x, 2/3 = -y/+y, 4/5 = -z/+z; cylinder:
    0 = side, 1 = bottom, 2 = top). Room shells (floor, walls, ceiling) are thick boxes outside the room
    with only their inner face sampled, so that every surface is also a solid for ray casting.
    """
    kind: str
    lo: np.ndarray
    hi: np.ndarray
    class_id: int            # label id, or IGNORE_LABEL for an unannotated object
    object_id: int
    color: np.ndarray        # base RGB in [0, 1] of the object
    faces: Tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    feature_class: int = -1  # class the simulated 2D model sees (differs from class_id only for 255 objects)
    density: float = 1.0     # relative point density of its surfaces (glass: few depth returns)

    def face_areas(self):
        size = self.hi - self.lo
        if self.kind == 'box':
            full = [size[1] * size[2]] * 2 + [size[0] * size[2]] * 2 + [size[0] * size[1]] * 2
        else:
            r = size[0] / 2
            full = [2 * np.pi * r * size[2], np.pi * r * r, np.pi * r * r]
        return np.array([full[f] for f in self.faces], dtype=np.float64)


@dataclass
class Room:
    name: str
    dataset: str
    room_type: str
    size: np.ndarray                 # (x, y, z) extent of the room's interior, metres
    primitives: List[Primitive]
    camera_poses: List[np.ndarray] = field(default_factory=list)  # 4x4 camera-to-world, OpenCV axes
    fusion_views: List[int] = field(default_factory=list)  # indices of the poses whose frames are fused

    def primitive_arrays(self):
        """(kind_is_cylinder bool [P], lo [P,3], hi [P,3], class_id [P]) for vectorised ray casting."""
        cyl = np.array([p.kind == 'cylinder' for p in self.primitives])
        lo = np.stack([p.lo for p in self.primitives]).astype(np.float64)
        hi = np.stack([p.hi for p in self.primitives]).astype(np.float64)
        cls = np.array([p.class_id for p in self.primitives], dtype=np.int64)
        return cyl, lo, hi, cls


class _Builder:
    """Collects primitives of one room and keeps furniture from overlapping (rejection sampling)."""

    def __init__(self, rng, info: DatasetInfo, size):
        self.rng, self.info, self.size = rng, info, np.asarray(size, dtype=np.float64)
        self.primitives: List[Primitive] = []
        self.floor_rects: List[Tuple[float, float, float, float]] = []   # occupied (x0, y0, x1, y1)
        self.wall_spans: List[Tuple[int, float, float, float, float]] = []  # (wall, s0, s1, z0, z1)
        self.next_object = 0

    # -- primitives
    def class_id(self, name):
        return IGNORE_LABEL if name == 'unannotated' else self.info.labels.index(name)

    def material(self, name):
        """An RGB colour drawn from ``CLASS_PALETTES[name]`` (any colour for pictures, books, small objects)."""
        if name in ANY_COLOUR:
            base = self.rng.uniform(0.15, 0.9, 3)
        else:
            palette = CLASS_PALETTES[name]
            base = np.array(palette[int(self.rng.integers(len(palette)))])
        return np.clip(base + self.rng.normal(0, COLOUR_JITTER, 3), 0, 1)

    def object_color(self, name):
        return self.material(name)

    def new_object(self, name):
        self.next_object += 1
        return self.next_object - 1, self.object_color(name)

    def box(self, name, lo, hi, obj, color, faces=(0, 1, 2, 3, 4, 5), feature_name=None, density=1.0):
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        assert np.all(hi > lo), (name, lo, hi)
        if lo[2] <= 1e-6:  # a face resting on the floor is never scanned
            faces = tuple(f for f in faces if f != 4)
        self._add('box', name, lo, hi, obj, color, faces, feature_name, density)

    def cylinder(self, name, cx, cy, r, z0, z1, obj, color, feature_name=None):
        faces = (0, 2) if z0 <= 1e-6 else (0, 1, 2)
        self._add('cylinder', name, np.array([cx - r, cy - r, z0]), np.array([cx + r, cy + r, z1]), obj, color,
                  faces, feature_name, 1.0)

    def _add(self, kind, name, lo, hi, obj, color, faces, feature_name, density):
        cid = self.class_id(name)
        fcls = self.class_id(feature_name) if feature_name else cid
        self.primitives.append(Primitive(kind, lo, hi, cid, obj, np.asarray(color, np.float64), tuple(faces), fcls,
                                         float(density)))

    # -- placement
    def free(self, rect, margin=0.05):
        x0, y0, x1, y1 = rect
        if x0 < -1e-9 or y0 < -1e-9 or x1 > self.size[0] + 1e-9 or y1 > self.size[1] + 1e-9:
            return False
        return all(x1 + margin <= a0 or a1 + margin <= x0 or y1 + margin <= b0 or b1 + margin <= y0
                   for a0, b0, a1, b1 in self.floor_rects)

    def wall_rect(self, wall, s, width, depth):
        """Footprint of an object of `width` along wall `wall` (0:-x, 1:+x, 2:-y, 3:+y) starting at s."""
        X, Y = self.size[:2]
        if wall == 0:
            return (0.0, s, depth, s + width)
        if wall == 1:
            return (X - depth, s, X, s + width)
        if wall == 2:
            return (s, 0.0, s + width, depth)
        return (s, Y - depth, s + width, Y)

    def wall_length(self, wall):
        return self.size[1] if wall in (0, 1) else self.size[0]

    def wall_clash(self, wall, s, width, z0, z1, margin=0.05):
        """Does [s, s+width] x [z0, z1] on ``wall`` overlap a door, window, picture, cabinet... already there?"""
        return any(w == wall and s < b1 + margin and a0 < s + width + margin and z0 < d1 and c0 < z1
                   for w, a0, b1, c0, d1 in self.wall_spans)

    def place_against_wall(self, width, depth, tries=60, walls=(0, 1, 2, 3), height=None):
        """A free footprint against a random wall: (wall, rect) or None. With ``height``, the object also keeps
        clear of what hangs on that wall below its top (no wardrobe in front of a window) and claims its span."""
        for _ in range(tries):
            wall = int(self.rng.choice(walls))
            length = self.wall_length(wall)
            if width > length:
                continue
            s = self.rng.uniform(0, length - width)
            rect = self.wall_rect(wall, s, width, depth)
            if self.free(rect) and (height is None or not self.wall_clash(wall, s, width, 0.0, height)):
                if height is not None:
                    self.wall_spans.append((wall, s, s + width, 0.0, height))
                return wall, rect
        return None

    def place_free(self, w, d, tries=60, margin=0.3):
        X, Y = self.size[:2]
        for _ in range(tries):
            if w + 2 * margin > X or d + 2 * margin > Y:
                return None
            x0, y0 = self.rng.uniform(margin, X - w - margin), self.rng.uniform(margin, Y - d - margin)
            rect = (x0, y0, x0 + w, y0 + d)
            if self.free(rect, margin=0.25):
                return rect
        return None

    def place_on_wall(self, width, z0, z1, tries=60, walls=(0, 1, 2, 3), need_floor_free=False, s_range=None):
        """A free span on a wall for a wall-mounted object: (wall, s) or None."""
        for _ in range(tries):
            wall = int(self.rng.choice(walls))
            length = self.wall_length(wall)
            lo, hi = (0.05, length - width - 0.05) if s_range is None else s_range
            if hi <= lo:
                continue
            s = self.rng.uniform(lo, hi)
            clash = any(w == wall and s < b1 + 0.1 and a0 < s + width + 0.1 and z0 < d1 and c0 < z1
                        for w, a0, b1, c0, d1 in self.wall_spans)
            if clash:
                continue
            if need_floor_free and not self.free(self.wall_rect(wall, s, width, 0.9), margin=0.0):
                continue
            return wall, s
        return None

    def wall_box(self, wall, s, width, z0, z1, t0, t1):
        """lo, hi of a box spanning [s, s+width] along the wall, [t0, t1] metres away from it."""
        X, Y = self.size[:2]
        if wall == 0:
            return (t0, s, z0), (t1, s + width, z1)
        if wall == 1:
            return (X - t1, s, z0), (X - t0, s + width, z1)
        if wall == 2:
            return (s, t0, z0), (s + width, t1, z1)
        return (s, Y - t1, z0), (s + width, Y - t0, z1)


# -- furniture builders: each adds the primitives of one object and returns its placement (None if it did not fit).
# Sizes and heights are those of real furniture (seat 42-48 cm, table and desk tops 72-76 cm, counters 86-92 cm,
# beds 50-60 cm with a headboard, wall cabinets from 1.4 m up); parts of an object share its object id and
# may have their own material (metal legs, bedding on a wooden frame, glass in a window frame).
def _along(wall, rect):
    """Start of a wall-anchored footprint along its wall (the wall_box coordinate s)."""
    x0, y0, x1, y1 = rect
    return y0 if wall in (0, 1) else x0


def _part(b, name, wall, s0, a0, a1, t0, t1, z0, z1, obj, color, feature_name=None, density=1.0):
    """A box of a wall-anchored object: [a0, a1] along the wall from s0, [t0, t1] metres from it, [z0, z1] high."""
    lo, hi = b.wall_box(wall, s0 + a0, a1 - a0, z0, z1, t0, t1)
    b.box(name, lo, hi, obj, color, feature_name=feature_name, density=density)


def _legs(b, name, rect, z_top, obj, color, inset=0.05, thick=0.05, round_legs=False, z0=0.0):
    x0, y0, x1, y1 = rect
    for lx in (x0 + inset, x1 - inset - thick):
        for ly in (y0 + inset, y1 - inset - thick):
            if round_legs:
                b.cylinder(name, lx + thick / 2, ly + thick / 2, thick / 2, z0, z_top, obj, color)
            else:
                b.box(name, (lx, ly, z0), (lx + thick, ly + thick, z_top), obj, color)


def _over(p: Primitive, x, y):
    """Is (x, y) inside the footprint of primitive p (a box's rectangle, a cylinder's disc)?"""
    if p.kind == 'box':
        return p.lo[0] <= x <= p.hi[0] and p.lo[1] <= y <= p.hi[1]
    c, r = (p.lo + p.hi) / 2, (p.hi[0] - p.lo[0]) / 2
    return (x - c[0]) ** 2 + (y - c[1]) ** 2 <= r * r


def _seed(*parts):
    """A stable 32-bit seed from strings and ints (Python's hash() is salted per process)."""
    return zlib.crc32('/'.join(str(p) for p in parts).encode())
