"""Synthetic rooms that stand in for ScanNet / S3DIS (SPEC §6): the demo and the tests run on them.

No real scans, 2D models or CLIP weights can be downloaded here, so this module builds data that has
the *shape* and the *failure modes* of the real inputs, written in the exact on-disk formats of SPEC §3:

- ``<out>/<name>_3d/{train,val}/<scene>.pth``: procedural rooms made of labelled boxes and vertical
  cylinders (floor, walls, ceiling for S3DIS, furniture), points sampled uniformly on the visible
  surfaces, a few % of points 255. Furniture is built from parts with the sizes, heights and placements
  of real rooms (chairs with seat, legs and back around tables and at desks, table and desk tops at
  72-76 cm, coffee tables in front of sofas, beds with headboard and pillows beside nightstands, base
  cabinets under a countertop with wall cabinets above, doors with frames, open or closed, windows with
  frame, sill and sparse glass, pleated curtains...), so that a 3D network can tell classes apart by
  shape; each object's colour is drawn from a class palette that shares materials with other classes
  (wood, white, fabric), so that colour alone cannot.
- ``<out>/<name>_text_embeddings.npy``: C x D unit rows whose pairwise cosine similarities mimic CLIP
  text embeddings (confusable classes 0.8-0.9, the rest 0.6-0.75; CLIP's are never orthogonal).
- ``<out>/<name>_multiview/<scene>_0.pt``: fused 2D features as multi-view fusion produces them. Simulated
  cameras (ScanNet-like pinhole frusta) see the points that no primitive occludes (analytic ray casting);
  a point's feature is ``normalize(a t_c + b_c t_conf(c) + mean_views(n_view) + d t_ctx + e eps)``:
  a *systematic linear* confusion toward a confusable class (what ESS can learn to undo, because the
  scene-level mask resolves it in scenes without the confusable class), per-view noise shared by every
  point a view sees plus per-view wrong "blobs" (spatially coherent, locally wrong evidence, what the 3D
  network can overrule with geometry and colour), boundary blur toward the nearest point of another
  class, and points that no camera sees (no feature; the 3D network fills them).

The scene geometry stays available as a :class:`Room` (a list of :class:`Primitive`) so that
``dataset/synthetic_render.py`` can ray-cast it into depth / label / feature images.

CLI::

    python -m dataset.synthetic --out data --name demo --dataset scannet --num-train 16 --num-val 4 \\
        --points 20000 --seed 0 [--overwrite]
"""
import argparse
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from scipy.spatial import cKDTree

from dataset.formats import (load_fused_features, load_scene_3d, load_text_embeddings, save_fused_features,
                             save_scene_3d, save_text_embeddings)
from dataset.label_constants import IGNORE_LABEL, DatasetInfo, dataset_info
from pipeline.metric import evaluate
from pipeline.pseudo_labels import pseudo_labels_from_features, scene_label_mask

# ----------------------------------------------------------------------------- constants
# ScanNet's colour camera: 577.87 px focal length at 640x480 -> 58 x 45 degree field of view (SPEC §4b).
CAMERA_HFOV_DEG = 58.0
CAMERA_VFOV_DEG = 45.0
CAMERA_MIN_DEPTH = 0.2   # metres; structured-light sensors see nothing closer
CAMERA_MAX_DEPTH = 4.5   # metres; ScanNet's depth is unreliable beyond ~4-5 m
POINT_NOISE_STD = 0.004  # metres; reconstruction noise of a mesh vertex
OCCLUSION_TOLERANCE = 0.02  # metres; a ray may end this much before the point and still "see" it
OVERSAMPLE = 1.8        # surface samples per final point before the scan simulation drops unseen ones
UNSEEN_KEEP = 0.3       # fraction of points no scan camera sees that stay in the mesh (hole filling)
FUSION_FRAME_FRACTION = 0.6  # share of the scan's cameras whose frames are fused
UNDERSIDE_DENSITY = 0.3  # relative point density on downward faces of raised objects (table undersides)

# Classes a 2D vision-language model confuses (SPEC §6). Pairs get text similarity 0.8-0.9; CONFUSED_AS
# gives, per class, the class its fused feature leans toward and how far (the systematic confusion).
SCANNET_SIMILAR_PAIRS = (
    ('table', 'desk'), ('cabinet', 'otherfurniture'), ('wall', 'picture'), ('bookshelf', 'cabinet'),
    ('curtain', 'window'), ('sofa', 'chair'), ('curtain', 'shower curtain'), ('counter', 'table'),
    ('sink', 'toilet'), ('bathtub', 'toilet'), ('refrigerator', 'cabinet'), ('door', 'wall'),
    ('bed', 'sofa'), ('counter', 'cabinet'))
# Strength ~1 (the feature sits between the two text embeddings) only where the confusable class is
# absent from most scenes holding the class: there the scene-level mask resolves the confusion, so the
# pseudo labels are right in most scenes and ESS can learn the correction for the others. Classes that
# always co-occur (wall, floor, ceiling, chair with sofa...) get weaker confusion, which noise turns into
# occasional errors.
SCANNET_CONFUSED_AS = {  # class -> (confused class, strength relative to the true class' weight)
    'desk': ('table', 1.1), 'table': ('desk', 0.6), 'otherfurniture': ('cabinet', 0.9),
    'cabinet': ('otherfurniture', 0.6), 'picture': ('wall', 0.5), 'bookshelf': ('cabinet', 0.8),
    'curtain': ('window', 0.6), 'window': ('curtain', 0.5), 'sofa': ('chair', 0.5), 'chair': ('sofa', 0.4),
    'shower curtain': ('curtain', 1.1), 'counter': ('cabinet', 0.6), 'sink': ('toilet', 0.5),
    'bathtub': ('toilet', 0.5), 'refrigerator': ('cabinet', 0.6), 'door': ('wall', 0.5),
    'bed': ('sofa', 1.1), 'wall': ('picture', 0.1), 'toilet': ('sink', 0.4), 'floor': ('wall', 0.2)}
S3DIS_SIMILAR_PAIRS = (
    ('wall', 'column'), ('wall', 'beam'), ('wall', 'board'), ('column', 'beam'), ('ceiling', 'beam'),
    ('table', 'chair'), ('bookcase', 'clutter'), ('window', 'door'), ('window', 'board'), ('sofa', 'chair'))
S3DIS_CONFUSED_AS = {
    'column': ('wall', 0.6), 'beam': ('ceiling', 0.6), 'board': ('wall', 0.5), 'wall': ('column', 0.3),
    'table': ('chair', 0.5), 'chair': ('table', 0.5), 'bookcase': ('clutter', 0.6), 'clutter': ('bookcase', 0.5),
    'window': ('door', 0.7), 'door': ('window', 0.6), 'sofa': ('chair', 0.8), 'ceiling': ('beam', 0.2),
    'floor': ('wall', 0.2)}


@dataclass
class FeatureParams:
    """Weights of the fused-feature simulation (module docstring); calibrated so that PLG on the
    default data reaches 0.5-0.75 mIoU (tests/test_synthetic.py checks the band)."""
    true_weight: float = 1.0        # a: weight of the true class' text embedding
    confusion_scale: float = 1.0    # multiplies the per-class strengths b_c of CONFUSED_AS
    view_noise: float = 0.39        # g: std of a view's noise coefficients (per class, zero-sum)
    blob_probability: float = 0.6   # chance that a view mislabels one region ("blob")
    blob_strength: float = 1.0      # weight of the wrong class inside a blob
    blob_radius: Tuple[float, float] = (0.4, 1.0)  # metres
    boundary_weight: float = 0.6    # d at zero distance to another class; falls linearly to 0 at radius
    boundary_radius: float = 0.08   # metres
    isotropic_noise: float = 0.5    # e: norm of an isotropic Gaussian per point (off the class subspace too)


# Rendered frames add errors of their own (coarse 2D feature maps, OpenScene's loose 25 % depth test that
# lets a table top's feature reach the floor under it), so their view noise is lower for the same PLG band.
RENDERED_FEATURE_PARAMS = FeatureParams(view_noise=0.32)


# ----------------------------------------------------------------------------- geometry
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


# Colour palettes (RGB 0-1): every object draws one entry of its class' palette plus a small jitter. The
# palettes overlap as in real scans: wood tones are shared by floors, tables, desks, cabinets, shelves,
# doors and chairs; white by walls, doors, cabinets, counters and sanitary ware; fabrics by sofas, chairs,
# beds and curtains. Colour narrows the class down without deciding it: a 3D network has to use the
# shapes, sizes, heights and placements below (pipeline/colour_baseline.py measures what colour alone gives).
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

# Room types: classes always present and classes present with probability 0.6. The first four types of
# each dataset together contain every class, so any split of >= 4 scenes has every class in its GT.
SCANNET_ROOM_TYPES = (
    ('bedroom', ('bed', 'door', 'window', 'curtain', 'otherfurniture'),
     ('cabinet', 'chair', 'desk', 'picture')),
    ('kitchen', ('counter', 'sink', 'refrigerator', 'cabinet'),
     ('table', 'chair', 'window', 'door', 'picture', 'otherfurniture')),
    ('living', ('sofa', 'table', 'chair', 'bookshelf', 'desk', 'picture'),
     ('window', 'curtain', 'door', 'cabinet', 'otherfurniture')),
    ('bathroom', ('toilet', 'sink', 'bathtub', 'shower curtain', 'door'),
     ('counter', 'cabinet', 'picture', 'window')),
)
S3DIS_ROOM_TYPES = (
    ('office', ('door', 'table', 'chair', 'bookcase', 'clutter'), ('window', 'board', 'column', 'beam', 'sofa')),
    ('conferenceRoom', ('door', 'table', 'chair', 'board'), ('window', 'column', 'beam', 'clutter')),
    ('hallway', ('door', 'beam', 'column'), ('clutter', 'window', 'board')),
    ('lounge', ('sofa', 'table', 'window'), ('chair', 'bookcase', 'clutter', 'board', 'column', 'beam', 'door')),
)
ROOM_SIZES = {  # (x range, y range, height range), metres
    'bedroom': ((3.6, 5.0), (3.4, 4.6), (2.4, 2.8)), 'kitchen': ((3.4, 5.0), (3.0, 4.2), (2.4, 2.8)),
    'living': ((5.0, 7.0), (4.0, 5.5), (2.5, 2.9)), 'bathroom': ((2.6, 3.4), (2.2, 3.0), (2.3, 2.6)),
    'office': ((4.0, 6.0), (3.5, 5.0), (2.9, 3.2)), 'conferenceRoom': ((6.0, 8.0), (4.0, 5.5), (3.0, 3.3)),
    'hallway': ((8.0, 12.0), (2.0, 2.6), (2.9, 3.2)), 'lounge': ((5.5, 7.5), (4.5, 6.0), (3.0, 3.3)),
}


def room_types(dataset):
    return SCANNET_ROOM_TYPES if dataset == 'scannet' else S3DIS_ROOM_TYPES


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


def build_table(b, name='table', rect=None, kind=None):
    """Tables stand free (dining, round, coffee table in front of a sofa); desks stand against a wall, often
    with a drawer pedestal and a modesty panel. Returns the footprint."""
    rng = b.rng
    if name == 'desk':
        w, d, h = rng.uniform(1.1, 1.6), rng.uniform(0.6, 0.8), rng.uniform(0.72, 0.76)
        placed = b.place_against_wall(w, d, height=h)
        if placed is None:
            return None
        wall, rect = placed
        obj, color = b.new_object('desk')
        s0 = _along(wall, rect)
        _part(b, 'desk', wall, s0, 0, w, 0, d, h - 0.03, h, obj, color)                     # top
        pedestal = rng.random() < 0.6
        side = 0.0 if rng.random() < 0.5 else w - 0.42
        if pedestal:  # drawers under one side, with handles
            _part(b, 'desk', wall, s0, side + 0.01, side + 0.41, 0.02, d - 0.03, 0.0, h - 0.03, obj, color)
            for z in np.linspace(0.15, h - 0.15, 3):
                _part(b, 'desk', wall, s0, side + 0.15, side + 0.27, d - 0.03, d, z, z + 0.02, obj, b.material('metal'))
        if rng.random() < 0.5:  # modesty panel at the back
            _part(b, 'desk', wall, s0, 0.03, w - 0.03, 0.02, 0.04, 0.3, h - 0.03, obj, color)
        legs = [(0.02, 0.07), (w - 0.07, w - 0.02)]
        for a0, a1 in legs:
            if pedestal and side <= a0 < side + 0.42:
                continue
            for t0 in (0.03, d - 0.08):
                _part(b, 'desk', wall, s0, a0, a1, t0, t0 + 0.05, 0.0, h - 0.03, obj, color)
        b.floor_rects.append(rect)
        return rect
    if kind is None:
        kind = 'conference' if b.info.name == 's3dis' else str(rng.choice(['dining', 'dining', 'round']))
    dims = {'dining': (rng.uniform(1.1, 1.8), rng.uniform(0.75, 1.0), rng.uniform(0.72, 0.76)),
            'round': (2 * rng.uniform(0.45, 0.6),) * 2 + (rng.uniform(0.72, 0.76),),
            'coffee': (rng.uniform(0.9, 1.3), rng.uniform(0.5, 0.7), rng.uniform(0.40, 0.46)),
            'conference': (rng.uniform(1.8, 3.2), rng.uniform(1.0, 1.4), rng.uniform(0.72, 0.76))}[kind]
    w, d, h = dims
    if rect is None:
        rect = b.place_free(w, d)
        if rect is None:
            return None
    obj, color = b.new_object(name)
    x0, y0, x1, y1 = rect
    if kind == 'round':  # round top on a central column and a foot
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        b.cylinder(name, cx, cy, r, h - 0.03, h, obj, color)
        b.cylinder(name, cx, cy, 0.05, 0.04, h - 0.03, obj, color)
        b.cylinder(name, cx, cy, 0.28, 0.0, 0.04, obj, color)
    else:
        b.box(name, (x0, y0, h - 0.03), (x1, y1, h), obj, color)
        metal = rng.random() < 0.4
        _legs(b, name, rect, h - 0.03, obj, b.material('metal') if metal else color,
              inset=0.04, thick=0.05, round_legs=rng.random() < 0.4)
        if kind == 'coffee' and rng.random() < 0.5:  # a lower shelf
            b.box(name, (x0 + 0.09, y0 + 0.09, 0.12), (x1 - 0.09, y1 - 0.09, 0.14), obj, color)
    b.floor_rects.append(rect)
    return rect


def _chair_rect(b, near_rect, s):
    """A free square footprint of side s beside a table side (facing it) or anywhere: (rect, back side)."""
    rng = b.rng
    for _ in range(40):
        if near_rect is not None:
            x0, y0, x1, y1 = near_rect
            side = int(rng.integers(4))
            if side in (0, 1):
                cy = rng.uniform(y0, max(y0, y1 - s))
                cx = x0 - s - 0.05 if side == 0 else x1 + 0.05
            else:
                cx = rng.uniform(x0, max(x0, x1 - s))
                cy = y0 - s - 0.05 if side == 2 else y1 + 0.05
            rect = (cx, cy, cx + s, cy + s)
            if b.free(rect, margin=0.02):
                return rect, side  # the back is on the side away from the table
        else:
            rect = b.place_free(s, s, tries=1, margin=0.2)
            if rect is not None:
                return rect, int(rng.integers(4))
    return None, None


def _back_box(rect, back, t, z0, z1, inset=0.0):
    x0, y0, x1, y1 = rect
    return {0: ((x0, y0 + inset, z0), (x0 + t, y1 - inset, z1)), 1: ((x1 - t, y0 + inset, z0), (x1, y1 - inset, z1)),
            2: ((x0 + inset, y0, z0), (x1 - inset, y0 + t, z1)), 3: ((x0 + inset, y1 - t, z0), (x1 - inset, y1, z1))}[back]


def build_chair(b, near_rect=None, name='chair', kind=None):
    """Dining chairs (four legs, seat 42-48 cm, back to 80-95 cm), office chairs (a five-star foot read as a disc,
    a column, seat and back) and armchairs (an upholstered seat with arms, a one-seat sofa)."""
    rng = b.rng
    if kind is None:
        kind = str(rng.choice(['dining', 'office'])) if b.info.name == 'scannet' else 'office'
    s = {'dining': rng.uniform(0.42, 0.5), 'office': rng.uniform(0.5, 0.6), 'armchair': rng.uniform(0.75, 0.9)}[kind]
    rect, back = _chair_rect(b, near_rect, s)
    if rect is None:
        return None
    obj, color = b.new_object(name)
    x0, y0, x1, y1 = rect
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    seat = rng.uniform(0.42, 0.48)
    if kind == 'dining':
        b.box(name, (x0, y0, seat - 0.04), (x1, y1, seat), obj, color)
        _legs(b, name, rect, seat - 0.04, obj, color, inset=0.02, thick=0.035, round_legs=rng.random() < 0.5)
        b.box(name, *_back_box(rect, back, 0.035, seat, seat + rng.uniform(0.35, 0.47)), obj, color)
    elif kind == 'office':
        metal = b.material('metal')
        b.cylinder(name, cx, cy, s / 2, 0.0, 0.06, obj, metal)              # the star foot, seen as a disc
        b.cylinder(name, cx, cy, 0.03, 0.06, seat - 0.07, obj, metal)        # gas column
        b.box(name, (x0 + 0.03, y0 + 0.03, seat - 0.07), (x1 - 0.03, y1 - 0.03, seat), obj, color)
        b.box(name, *_back_box(rect, back, 0.06, seat + 0.12, seat + rng.uniform(0.5, 0.65), inset=0.06), obj, color)
    else:  # armchair
        b.box(name, (x0, y0, 0.08), (x1, y1, 0.42), obj, color)
        b.box(name, *_back_box(rect, back, 0.18, 0.42, rng.uniform(0.8, 0.95)), obj, color)
        for side in ((0, 1) if back in (2, 3) else (2, 3)):
            b.box(name, *_back_box(rect, side, 0.14, 0.42, 0.62), obj, color)
        _legs(b, name, rect, 0.08, obj, b.material('frame'), inset=0.04, thick=0.04)
    b.floor_rects.append(rect)
    return rect


def build_cabinet(b, kind):
    """Cabinets as they stand in rooms: a wardrobe, a low cabinet, kitchen wall cabinets mounted from 1.4 m up,
    a bathroom mirror cabinet; doors show as a split line and handles."""
    rng = b.rng
    w, d, z0, z1 = {'wardrobe': (rng.uniform(0.9, 1.6), rng.uniform(0.55, 0.62), 0.0, rng.uniform(1.8, 2.1)),
                    'low': (rng.uniform(0.6, 1.2), rng.uniform(0.4, 0.5), 0.0, rng.uniform(0.7, 1.0)),
                    'wall': (rng.uniform(0.6, 1.4), rng.uniform(0.32, 0.38), rng.uniform(1.42, 1.5), 0.0),
                    'mirror': (rng.uniform(0.5, 0.8), rng.uniform(0.12, 0.16), rng.uniform(1.15, 1.3), 0.0)}[kind]
    if kind in ('wall', 'mirror'):
        z1 = min(b.size[2] - 0.15, z0 + (0.75 if kind == 'wall' else 0.6))
        placed = b.place_on_wall(w, z0, z1)
        if placed is None:
            return None
        wall, s0 = placed
        b.wall_spans.append((wall, s0, s0 + w, z0, z1))
    else:
        placed = b.place_against_wall(w, d, height=z1)
        if placed is None:
            return None
        wall, rect = placed
        s0 = _along(wall, rect)
        b.floor_rects.append(rect)
    obj, color = b.new_object('cabinet')
    _part(b, 'cabinet', wall, s0, 0, w, 0, d, z0 + (0.08 if kind != 'wall' and kind != 'mirror' else 0), z1, obj, color)
    if kind in ('wardrobe', 'low'):  # recessed plinth
        _part(b, 'cabinet', wall, s0, 0.03, w - 0.03, 0, d - 0.05, 0.0, 0.08, obj, color)
    doors = max(1, int(round(w / 0.5)))
    handle = b.material('metal')
    for k in range(doors):
        a = (k + 0.5) * w / doors + (0.12 if k % 2 == 0 else -0.12) * (doors > 1)
        zc = {'wardrobe': 1.0, 'low': z1 - 0.12, 'wall': z0 + 0.08, 'mirror': (z0 + z1) / 2}[kind]
        _part(b, 'cabinet', wall, s0, a - 0.01, a + 0.01, d, d + 0.025, zc - 0.07, zc + 0.07, obj, handle)
    return wall, s0, w


def build_counter(b, room_type, with_cabinets):
    """A run of base cabinets under a countertop (ScanNet labels the top 'counter', the base 'cabinet'), with a
    toe-kick recess; without cabinets in the room the whole block is the counter. Kitchens get wall cabinets
    above. Returns (wall, rect, height) of the run."""
    rng = b.rng
    w = rng.uniform(1.8, 3.2) if room_type == 'kitchen' else rng.uniform(0.8, 1.3)
    d = rng.uniform(0.58, 0.64) if room_type == 'kitchen' else rng.uniform(0.48, 0.55)
    h = rng.uniform(0.86, 0.92) if room_type == 'kitchen' else rng.uniform(0.8, 0.86)
    placed = b.place_against_wall(w, d, height=h)
    if placed is None:
        return None
    wall, rect = placed
    s0 = _along(wall, rect)
    base_name = 'cabinet' if with_cabinets else 'counter'
    obj, color = b.new_object('counter')
    base_obj, base_color = b.new_object(base_name) if with_cabinets else (obj, b.material('counter'))
    _part(b, 'counter', wall, s0, 0, w, 0, d, h - 0.035, h, obj, color)                       # the top
    _part(b, base_name, wall, s0, 0, w, 0, d - 0.04, 0.1, h - 0.035, base_obj, base_color)    # the base
    _part(b, base_name, wall, s0, 0, w, 0, d - 0.1, 0.0, 0.1, base_obj, base_color)           # toe kick
    if with_cabinets:
        handle = b.material('metal')
        for k in range(max(1, int(w / 0.6))):
            a = (k + 0.5) * w / max(1, int(w / 0.6))
            _part(b, 'cabinet', wall, s0, a - 0.07, a + 0.07, d - 0.04, d - 0.015, h - 0.13, h - 0.11, base_obj, handle)
    b.floor_rects.append(rect)
    if room_type == 'kitchen' and with_cabinets:  # wall cabinets over the run
        z0, z1 = rng.uniform(1.42, 1.5), min(b.size[2] - 0.15, 2.25)
        a0 = rng.uniform(0.0, 0.3)
        a1 = w - rng.uniform(0.0, 0.3)
        clash = any(wl == wall and s0 + a0 < e1 and e0 < s0 + a1 and z0 < f1 and f0 < z1
                    for wl, e0, e1, f0, f1 in b.wall_spans)
        if not clash:
            cobj, ccolor = b.new_object('cabinet')
            _part(b, 'cabinet', wall, s0, a0, a1, 0, 0.35, z0, z1, cobj, ccolor)
            b.wall_spans.append((wall, s0 + a0, s0 + a1, z0, z1))
    return wall, rect, h


OTHER_FURNITURE = {'bedroom': ('dresser', 'nightstand', 'bin'), 'kitchen': ('bin', 'stool'),
                   'living': ('tv stand', 'dresser', 'bin', 'stool'), 'bathroom': ('bin',)}


def build_wall_furniture(b, name, room_type=None):
    """Floor-standing objects with their back against a wall: bookshelves, refrigerators, sofas, beds,
    bathtubs, toilets, other furniture (dressers, nightstands, TV stands, bins, stools), S3DIS clutter."""
    rng = b.rng
    kind = None
    if name == 'otherfurniture':
        kinds = OTHER_FURNITURE.get(room_type, ('dresser', 'bin', 'stool'))
        kind = str(kinds[int(rng.integers(len(kinds)))])
    dims = {  # width along the wall, depth, height
        'bookshelf': (rng.uniform(0.8, 1.6), rng.uniform(0.3, 0.4), rng.uniform(1.5, 2.1)),
        'bookcase': (rng.uniform(0.8, 1.6), rng.uniform(0.3, 0.4), rng.uniform(1.5, 2.1)),
        'refrigerator': (rng.uniform(0.6, 0.8), rng.uniform(0.65, 0.75), rng.uniform(1.7, 1.9)),
        'sofa': (rng.uniform(1.7, 2.3), rng.uniform(0.85, 0.95), rng.uniform(0.8, 0.9)),
        'bed': (rng.uniform(1.4, 1.8), rng.uniform(2.0, 2.15), rng.uniform(0.5, 0.6)),
        'bathtub': (rng.uniform(1.5, 1.8), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6)),
        'toilet': (0.4, 0.68, 0.8),
        'clutter': (rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.9)),
        'nightstand': (rng.uniform(0.4, 0.55), rng.uniform(0.35, 0.45), rng.uniform(0.5, 0.62)),
        'dresser': (rng.uniform(0.8, 1.2), rng.uniform(0.42, 0.5), rng.uniform(0.8, 1.0)),
        'tv stand': (rng.uniform(1.2, 1.8), rng.uniform(0.38, 0.45), rng.uniform(0.42, 0.55)),
        'bin': (rng.uniform(0.25, 0.35),) * 2 + (rng.uniform(0.4, 0.6),),
        'stool': (rng.uniform(0.32, 0.4),) * 2 + (rng.uniform(0.45, 0.65),),
    }[kind or name]
    w, d, h = dims
    placed = b.place_against_wall(w, d, height=max(h, 1.0) if name == 'bed' else h)
    if placed is None:
        return None
    wall, rect = placed
    obj, color = b.new_object(name)
    x0, y0, x1, y1 = rect
    s0 = _along(wall, rect)

    def part(a0, a1, t0, t1, z0, z1, col=None, n=name):
        _part(b, n, wall, s0, a0, a1, t0, t1, z0, z1, obj, color if col is None else col)

    if name in ('bookshelf', 'bookcase'):
        p = 0.02
        part(0, w, 0, p, 0, h)                                       # back panel
        part(0, p, 0, d, 0, h)                                       # side panels
        part(w - p, w, 0, d, 0, h)
        n = int(rng.integers(3, 6))
        for z in np.linspace(0.0, h - p, n + 1):
            part(p, w - p, p, d, z, z + p)                           # shelves
            if z < h - 0.3 and rng.random() < 0.8:  # books: the same class in ScanNet/S3DIS annotations
                bw = rng.uniform(0.2, w - 0.1)
                part(0.03, 0.03 + bw, p, d * rng.uniform(0.6, 0.9), z + p, z + p + rng.uniform(0.15, 0.25),
                     col=b.material('books'))
    elif name == 'refrigerator':
        part(0, w, 0, d, 0.02, h)
        handle = b.material('metal')
        split = rng.uniform(0.55, 0.65) * h if rng.random() < 0.7 else None
        for z0, z1 in (((split + 0.05, split + 0.4), (split - 0.5, split - 0.1)) if split else ((0.9, 1.5),)):
            part(w - 0.09, w - 0.06, d, d + 0.04, z0, z1, col=handle)
    elif name == 'sofa':
        legs = 0.08
        part(0, w, 0, d, legs, 0.4)                                  # body
        arm = rng.uniform(0.14, 0.22)
        cushions = int(rng.integers(2, 4))
        cw = (w - 2 * arm) / cushions
        for k in range(cushions):                                    # seat cushions with gaps
            part(arm + k * cw + 0.01, arm + (k + 1) * cw - 0.01, 0.22, d - 0.02, 0.4, 0.48)
        part(0, w, 0, 0.22, 0.4, h)                                  # back
        part(0, arm, 0.22, d, 0.4, 0.62)                             # arms
        part(w - arm, w, 0.22, d, 0.4, 0.62)
        for a in (0.05, w - 0.1):
            for t in (0.05, d - 0.1):
                part(a, a + 0.05, t, t + 0.05, 0.0, legs, col=b.material('frame'))
    elif name == 'bed':
        frame = b.material('frame')
        part(0, w, 0, d, 0.12, 0.32, col=frame)                      # frame
        part(0.02, w - 0.02, 0.06, d, 0.32, h)                       # mattress and bedding
        part(0, w, 0, 0.06, 0.0, rng.uniform(0.9, 1.2), col=frame)   # headboard
        pw = (w - 0.2) / 2 if w > 1.2 else w - 0.2
        for k in range(2 if w > 1.2 else 1):                          # pillows
            part(0.1 + k * (pw + 0.0), 0.1 + k * pw + pw - 0.05, 0.1, 0.45, h, h + 0.12,
                 col=b.material('bed'))
        for a in (0.05, w - 0.1):
            part(a, a + 0.05, 0.06, 0.11, 0.0, 0.12, col=frame)
            part(a, a + 0.05, d - 0.1, d - 0.05, 0.0, 0.12, col=frame)
    elif name == 'bathtub':
        r = 0.08
        part(0, w, 0, d, 0, 0.12)                                    # bottom
        part(0, w, 0, r, 0.12, h)
        part(0, w, d - r, d, 0.12, h)
        part(0, r, r, d - r, 0.12, h)
        part(w - r, w, r, d - r, 0.12, h)
    elif name == 'toilet':
        part(0.0, w, 0, 0.2, 0.4, 0.8)                               # tank
        lo, hi = b.wall_box(wall, s0, w, 0, 0.4, 0.2, d)
        cx, cy = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2
        rad = min(hi[0] - lo[0], hi[1] - lo[1]) / 2
        b.cylinder(name, cx, cy, rad * 0.75, 0.0, 0.38, obj, color)  # bowl
        b.cylinder(name, cx, cy, rad, 0.38, 0.43, obj, color)        # seat
    elif kind == 'bin':
        b.cylinder(name, (x0 + x1) / 2, (y0 + y1) / 2, w / 2, 0.0, h, obj, color)
    elif kind == 'stool':
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        b.cylinder(name, cx, cy, w / 2, h - 0.04, h, obj, color)
        _legs(b, name, (cx - w * 0.35, cy - w * 0.35, cx + w * 0.35, cy + w * 0.35), h - 0.04, obj, color,
              inset=0.0, thick=0.03, round_legs=True)
    elif kind in ('nightstand', 'dresser', 'tv stand'):
        part(0, w, 0, d, 0.06, h)
        part(0.03, w - 0.03, 0, d - 0.04, 0.0, 0.06)
        handle = b.material('metal')
        rows = {'nightstand': 1, 'dresser': 3, 'tv stand': 1}[kind]
        for k in range(rows):
            z = h - 0.1 - k * (h - 0.15) / max(rows, 1)
            part(w / 2 - 0.06, w / 2 + 0.06, d, d + 0.02, z, z + 0.02, col=handle)
        if kind == 'tv stand':  # a television on it (not one of the 20 classes: unannotated)
            tv_w = min(w - 0.1, rng.uniform(0.9, 1.3))
            a = (w - tv_w) / 2
            tobj, tcol = b.new_object('unannotated')
            _part(b, 'unannotated', wall, s0, a, a + tv_w, 0.1, 0.16, h + 0.05, h + 0.05 + tv_w * 0.58, tobj,
                  b.material('metal'), feature_name='otherfurniture')
            _part(b, 'unannotated', wall, s0, w / 2 - 0.15, w / 2 + 0.15, 0.05, 0.25, h, h + 0.05, tobj,
                  b.material('metal'), feature_name='otherfurniture')
    else:
        b.box(name, (x0, y0, 0.0), (x1, y1, h), obj, color)
    b.floor_rects.append(rect)
    return wall, rect, h


def build_nightstands(b, bed):
    """One or two nightstands (other furniture) beside the head of the bed."""
    wall, rect, _ = bed
    s_bed = _along(wall, rect)
    w_bed = (rect[3] - rect[1]) if wall in (0, 1) else (rect[2] - rect[0])
    placed = []
    for a in (-0.5, w_bed + 0.05):
        if b.rng.random() < 0.3:
            continue
        w, d, h = b.rng.uniform(0.4, 0.5), b.rng.uniform(0.35, 0.42), b.rng.uniform(0.5, 0.62)
        s = s_bed + a
        if s < 0 or s + w > b.wall_length(wall):
            continue
        r = b.wall_rect(wall, s, w, d)
        if not b.free(r, margin=0.0) or b.wall_clash(wall, s, w, 0.0, h):
            continue
        b.wall_spans.append((wall, s, s + w, 0.0, h))
        obj, color = b.new_object('otherfurniture')
        _part(b, 'otherfurniture', wall, s, 0, w, 0, d, 0.05, h, obj, color)
        _part(b, 'otherfurniture', wall, s, 0.02, w - 0.02, 0, d - 0.04, 0.0, 0.05, obj, color)
        _part(b, 'otherfurniture', wall, s, w / 2 - 0.05, w / 2 + 0.05, d, d + 0.02, h - 0.12, h - 0.1, obj,
              b.material('metal'))
        b.floor_rects.append(r)
        placed.append(r)
    return placed


def build_sink(b, counter=None):
    """A basin set into a counter top (with a tap), or a pedestal sink against a wall."""
    rng = b.rng
    if counter is not None:
        wall, rect, h = counter
        obj, color = b.new_object('sink')
        s0 = _along(wall, rect)
        length = (rect[3] - rect[1]) if wall in (0, 1) else (rect[2] - rect[0])
        depth = (rect[2] - rect[0]) if wall in (0, 1) else (rect[3] - rect[1])
        w = min(0.5, length - 0.1)
        a = rng.uniform(0.05, max(0.05, length - w - 0.05))
        # the rim of the basin, a little above the top, and the tap behind it
        _part(b, 'sink', wall, s0, a, a + w, depth * 0.2, depth * 0.85, h, h + 0.05, obj, color)
        _part(b, 'sink', wall, s0, a + w / 2 - 0.02, a + w / 2 + 0.02, depth * 0.08, depth * 0.18, h, h + 0.28, obj,
              b.material('metal'))
        return True
    placed = b.place_against_wall(0.5, 0.45, height=0.85)
    if placed is None:
        return None
    wall, rect = placed
    obj, color = b.new_object('sink')
    x0, y0, x1, y1 = rect
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    b.cylinder('sink', cx, cy, 0.08, 0.0, 0.7, obj, color)                  # pedestal
    b.box('sink', (x0, y0, 0.7), (x1, y1, 0.85), obj, color)                # basin
    b.floor_rects.append(rect)
    return True


def build_wall_mounted(b, name, avoid_walls=()):
    """Objects on a wall: doors (a frame and a leaf, closed or open at 90 degrees into the room), windows (a
    frame, a sill and sparse glass), pictures (a frame around a canvas), S3DIS boards."""
    rng = b.rng
    walls = tuple(w for w in range(4) if w not in avoid_walls) or (0, 1, 2, 3)
    H = b.size[2]
    if name == 'door':
        w, z0, z1 = rng.uniform(0.8, 0.95), 0.0, min(2.05, H - 0.15)
    elif name == 'window':
        w, z0, z1 = rng.uniform(0.9, 1.8), rng.uniform(0.8, 1.0), min(H - 0.2, rng.uniform(1.9, 2.2))
    elif name == 'picture':
        w = rng.uniform(0.4, 1.0)
        z0 = rng.uniform(1.2, 1.5)
        z1 = min(H - 0.2, z0 + rng.uniform(0.3, 0.7))
    else:  # board (whiteboard / blackboard)
        w, z0, z1 = rng.uniform(1.2, 2.5), rng.uniform(0.8, 1.0), min(H - 0.3, 2.1)
    open_door = name == 'door' and rng.random() < 0.4
    placed = b.place_on_wall(w, z0, z1, walls=walls, need_floor_free=(name == 'door'))
    if placed is None:
        return None
    wall, s = placed
    if open_door and not b.free(b.wall_rect(wall, s, 0.06, w + 0.05), margin=0.0):
        open_door = False
    obj, color = b.new_object(name)
    if name == 'door':
        trim = b.material('frame') if rng.random() < 0.5 else color
        _part(b, 'door', wall, s, -0.07, 0.0, 0, 0.02, 0.0, z1 + 0.07, obj, trim)      # frame
        _part(b, 'door', wall, s, w, w + 0.07, 0, 0.02, 0.0, z1 + 0.07, obj, trim)
        _part(b, 'door', wall, s, 0.0, w, 0, 0.02, z1, z1 + 0.07, obj, trim)
        if open_door:  # the leaf stands into the room at the hinge; the doorway shows the dark next room
            _part(b, 'door', wall, s, 0.0, 0.04, 0.02, w + 0.02, 0.0, z1 - 0.01, obj, color)
            _part(b, 'door', wall, s, 0.04, w, 0, 0.01, 0.0, z1, obj, (0.12, 0.12, 0.13), density=0.3)
        else:
            _part(b, 'door', wall, s, 0.0, w, 0, 0.04, 0.0, z1, obj, color)
            _part(b, 'door', wall, s, w - 0.12, w - 0.05, 0.04, 0.09, 1.0, 1.05, obj, b.material('metal'))
        b.floor_rects.append(b.wall_rect(wall, s, w, 0.8))  # keep the floor in front of a door free
        if open_door:
            b.floor_rects.append(b.wall_rect(wall, s, 0.06, w + 0.05))
    elif name == 'window':
        frame = color
        _part(b, 'window', wall, s, 0, w, 0, 0.01, z0, z1, obj, b.material('glass'), density=GLASS_DENSITY)
        for a0, a1, zz0, zz1 in ((-0.05, 0.0, z0, z1), (w, w + 0.05, z0, z1), (-0.05, w + 0.05, z1, z1 + 0.05)):
            _part(b, 'window', wall, s, a0, a1, 0, 0.05, zz0, zz1, obj, frame)
        if w > 1.2:  # a mullion
            _part(b, 'window', wall, s, w / 2 - 0.02, w / 2 + 0.02, 0.01, 0.04, z0, z1, obj, frame)
        _part(b, 'window', wall, s, -0.08, w + 0.08, 0, rng.uniform(0.12, 0.2), z0 - 0.04, z0, obj, frame)  # sill
    elif name == 'picture':
        frame = b.material('frame')
        t = rng.uniform(0.02, 0.04)
        fw = rng.uniform(0.03, 0.06)
        _part(b, 'picture', wall, s, fw, w - fw, 0, t - 0.01, z0 + fw, z1 - fw, obj, color)  # canvas
        for a0, a1, zz0, zz1 in ((0, fw, z0, z1), (w - fw, w, z0, z1), (fw, w - fw, z0, z0 + fw),
                                 (fw, w - fw, z1 - fw, z1)):
            _part(b, 'picture', wall, s, a0, a1, 0, t, zz0, zz1, obj, frame)
    else:
        _part(b, name, wall, s, 0, w, 0, 0.02, z0, z1, obj, color)
    b.wall_spans.append((wall, s, s + w, z0, z1))
    return wall, s, w, z0, z1


def build_curtain(b, window, name='curtain'):
    """Two pleated curtain panels flanking a window, hanging from above it nearly to the floor."""
    rng = b.rng
    wall, s, w, z0, z1 = window
    length = b.wall_length(wall)
    obj, color = b.new_object(name)
    top = min(b.size[2] - 0.05, z1 + 0.15)
    bottom = rng.uniform(0.03, 0.3)
    pw = rng.uniform(0.35, 0.6)
    for a0 in (max(0.0, s - pw * 0.6), min(length - pw, s + w - pw * 0.4)):
        folds = int(rng.integers(3, 6))
        fw = pw / folds
        for k in range(folds):  # folds alternate in depth, as a hanging fabric
            t0 = 0.16 if k % 2 else 0.09
            _part(b, name, wall, a0, k * fw, (k + 1) * fw, t0, t0 + 0.04, bottom, top, obj, color)
    b.wall_spans.append((wall, max(0.0, s - pw * 0.6), min(length, s + w + pw * 0.6), bottom, top))
    return True


def build_shower_curtain(b, tub):
    """A thin curtain along the open long side of a bathtub, from the rim upwards."""
    wall, rect, h = tub
    x0, y0, x1, y1 = rect
    obj, color = b.new_object('shower curtain')
    z0, z1 = h + 0.3, min(b.size[2] - 0.1, 2.0)
    cover = b.rng.uniform(0.4, 0.8)  # drawn part
    if wall in (0, 1):
        t = x1 - 0.02 if wall == 0 else x0
        b.box('shower curtain', (t, y0, z0), (t + 0.02, y0 + (y1 - y0) * cover, z1), obj, color)
    else:
        t = y1 - 0.02 if wall == 2 else y0
        b.box('shower curtain', (x0, t, z0), (x0 + (x1 - x0) * cover, t + 0.02, z1), obj, color)
    return True


def build_beams_columns(b, name):
    rng = b.rng
    X, Y, H = b.size
    obj, color = b.new_object(name)
    if name == 'beam':  # across the short side, under the ceiling
        wdt, dep = rng.uniform(0.25, 0.4), rng.uniform(0.25, 0.5)
        if X >= Y:
            x = rng.uniform(0.5, X - 0.5 - wdt)
            b.box(name, (x, 0.0, H - dep), (x + wdt, Y, H), obj, color, faces=(0, 1, 4))
        else:
            y = rng.uniform(0.5, Y - 0.5 - wdt)
            b.box(name, (0.0, y, H - dep), (X, y + wdt, H), obj, color, faces=(2, 3, 4))
        return True
    c = rng.uniform(0.3, 0.5)   # column: in a corner or against a wall, floor to ceiling
    placed = b.place_against_wall(c, c, height=H)
    if placed is None:
        return None
    wall, rect = placed
    x0, y0, x1, y1 = rect
    b.box(name, (x0, y0, 0.0), (x1, y1, H), obj, color)
    b.floor_rects.append(rect)
    return True


def _over(p: Primitive, x, y):
    """Is (x, y) inside the footprint of primitive p (a box's rectangle, a cylinder's disc)?"""
    if p.kind == 'box':
        return p.lo[0] <= x <= p.hi[0] and p.lo[1] <= y <= p.hi[1]
    c, r = (p.lo + p.hi) / 2, (p.hi[0] - p.lo[0]) / 2
    return (x - c[0]) ** 2 + (y - c[1]) ** 2 <= r * r


def build_clutter(b, tables, name='clutter', feature_name=None):
    """Small objects on a table top or on the floor."""
    rng = b.rng
    if tables and rng.random() < 0.7:
        x0, y0, x1, y1 = tables[int(rng.integers(len(tables)))]
        w, d, h = rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.3), rng.uniform(0.05, 0.3)
        if x1 - x0 > w + 0.1 and y1 - y0 > d + 0.1:
            cx, cy = rng.uniform(x0 + 0.05, x1 - w - 0.05), rng.uniform(y0 + 0.05, y1 - d - 0.05)
            # stand on the highest surface below 1.2 m under the object's corner (the table top)
            top = max(p.hi[2] for p in b.primitives if p.hi[2] < 1.2 and _over(p, cx, cy))
            obj, color = b.new_object(name)
            b.box(name, (cx, cy, top), (cx + w, cy + d, top + h), obj, color, feature_name=feature_name)
            return True
    w, d, h = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.6)
    rect = b.place_free(w, d, margin=0.1)
    if rect is None:
        return None
    obj, color = b.new_object(name)
    b.box(name, (rect[0], rect[1], 0.0), (rect[2], rect[3], h), obj, color, feature_name=feature_name)
    b.floor_rects.append(rect)
    return True


def _shell(b, with_ceiling):
    """Floor, four walls (and the ceiling): thick boxes around the interior, inner face sampled."""
    X, Y, H = b.size
    T = 0.2
    obj, color = b.new_object('floor')
    b.primitives.append(Primitive('box', np.array([-T, -T, -T]), np.array([X + T, Y + T, 0.0]),
                                  b.class_id('floor'), obj, color, (5,), b.class_id('floor')))
    wall_id = b.class_id('wall')
    obj, color = b.new_object('wall')  # one wall object; its faces are separate primitives
    for lo, hi, face in (((-T, -T, 0.0), (0.0, Y + T, H), 1), ((X, -T, 0.0), (X + T, Y + T, H), 0),
                         ((-T, -T, 0.0), (X + T, 0.0, H), 3), ((-T, Y, 0.0), (X + T, Y + T, H), 2)):
        b.primitives.append(Primitive('box', np.array(lo), np.array(hi), wall_id, obj,
                                      np.clip(color + b.rng.normal(0, 0.02, 3), 0, 1), (face,), wall_id))
    if with_ceiling:
        obj, color = b.new_object('ceiling')
        cid = b.class_id('ceiling')
        b.primitives.append(Primitive('box', np.array([-T, -T, H]), np.array([X + T, Y + T, H + T]),
                                      cid, obj, color, (4,), cid))


def make_room(rng: np.random.Generator, info: DatasetInfo, room_type: Optional[str] = None, name: str = 'room',
              optional_probability: float = 0.6, num_cameras: Optional[int] = None) -> Room:
    """One procedural room: primitives (with class ids) and simulated camera poses.

    room_type: one of ``room_types(info.name)`` names (random when None). Classes 'always' present in
    that type are placed (retried until they fit); the optional ones with ``optional_probability``.
    The furniture is arranged as in real rooms: chairs around tables and at desks, a coffee table in front
    of the sofa, nightstands beside the bed, wall cabinets over the kitchen counter, curtains at a window.
    """
    types = {t[0]: t for t in room_types(info.name)}
    if room_type is None:
        room_type = list(types)[int(rng.integers(len(types)))]
    if room_type not in types:
        raise ValueError(f"unknown room type '{room_type}' for {info.name}: expected one of {sorted(types)}")
    _, always, optional = types[room_type]
    xr, yr, hr = ROOM_SIZES[room_type]
    size = np.array([rng.uniform(*xr), rng.uniform(*yr), rng.uniform(*hr)])
    b = _Builder(rng, info, size)
    _shell(b, with_ceiling=(info.name == 's3dis'))
    wanted = list(always) + [c for c in optional if rng.random() < optional_probability]

    def want(c):
        return c in wanted

    # Order matters: wall openings first, then large furniture against walls, then free-standing.
    window = None
    if want('door'):
        build_wall_mounted(b, 'door')
    if want('window'):
        window = build_wall_mounted(b, 'window')
        if window is not None and rng.random() < 0.5:
            build_wall_mounted(b, 'window')
    if want('curtain'):
        if window is None:
            window = build_wall_mounted(b, 'window') if info.name == 'scannet' else None
        if window is not None:
            build_curtain(b, window)
    if want('board'):
        build_wall_mounted(b, 'board')
    if want('column'):
        for _ in range(int(rng.integers(1, 3))):
            build_beams_columns(b, 'column')
    if want('beam'):
        for _ in range(int(rng.integers(1, 3))):
            build_beams_columns(b, 'beam')
    counter = None
    if want('counter'):
        counter = build_counter(b, room_type, with_cabinets=want('cabinet'))
    sofa = None
    for name_ in ('bed', 'bathtub', 'refrigerator', 'sofa', 'bookshelf', 'bookcase', 'toilet'):
        if want(name_):
            count = 1 if name_ in ('bed', 'bathtub', 'refrigerator', 'toilet', 'sofa') else int(rng.integers(1, 3))
            for _ in range(count):
                placed = build_wall_furniture(b, name_)
                if name_ == 'bathtub' and placed is not None and want('shower curtain'):
                    build_shower_curtain(b, placed)
                if name_ == 'bed' and placed is not None and want('otherfurniture'):
                    build_nightstands(b, placed)
                if name_ == 'sofa':
                    sofa = placed
    if want('sink'):
        build_sink(b, counter if (counter is not None and room_type in ('kitchen', 'bathroom')) else None)
    if want('cabinet'):
        kinds = {'bedroom': ('wardrobe', 'low'), 'kitchen': ('wall', 'low'), 'living': ('low', 'wardrobe'),
                 'bathroom': ('mirror', 'low')}.get(room_type, ('low',))
        for k in range(1 if counter is not None and room_type == 'kitchen' else int(rng.integers(1, 3))):
            build_cabinet(b, kinds[k % len(kinds)] if k else str(rng.choice(kinds)))
    if want('otherfurniture'):
        for _ in range(int(rng.integers(1, 3))):
            build_wall_furniture(b, 'otherfurniture', room_type)
    tables = []
    if want('table'):
        if sofa is not None:  # a coffee table in front of the sofa
            rect = _coffee_table_rect(b, sofa)
            if rect is not None:
                tables.append(('coffee', build_table(b, 'table', rect=rect, kind='coffee')))
        if sofa is None or rng.random() < 0.6 or info.name == 's3dis':
            tables.append(('table', build_table(b, 'table')))
    desk = build_table(b, 'desk') if want('desk') else None
    tables = [(k, r) for k, r in tables if r is not None]
    if want('chair'):
        if desk is not None:
            build_chair(b, desk, kind='office')
        dining = [r for k, r in tables if k == 'table']
        if info.name == 's3dis' or room_type == 'living':
            n = int(rng.integers(2, 7))
        else:
            n = int(rng.integers(2, 5)) if dining else int(rng.integers(1, 3))
        for _ in range(n):
            near = dining[int(rng.integers(len(dining)))] if dining and rng.random() < 0.85 else None
            kind = 'armchair' if near is None and room_type == 'living' and rng.random() < 0.5 else None
            build_chair(b, near, kind=kind)
    if want('picture'):
        for _ in range(int(rng.integers(1, 4))):
            build_wall_mounted(b, 'picture')
    surfaces = [r for _, r in tables] + ([desk] if desk is not None else [])
    if want('clutter'):
        for _ in range(int(rng.integers(2, 6))):
            build_clutter(b, surfaces)
    # Real scans hold objects nobody annotated (label 255); the 2D model still calls them something.
    fallback = 'otherfurniture' if info.name == 'scannet' else 'clutter'
    for _ in range(int(rng.integers(0, 3))):
        build_clutter(b, surfaces, name='unannotated', feature_name=fallback)
    room = Room(name, info.name, room_type, size, b.primitives)
    room.camera_poses = make_camera_poses(rng, room, num_cameras)
    n = len(room.camera_poses)
    room.fusion_views = sorted(rng.choice(n, max(1, round(n * FUSION_FRAME_FRACTION)), replace=False).tolist())
    return room


def _coffee_table_rect(b, sofa):
    """The footprint of a coffee table 35-50 cm in front of the sofa, centred on it."""
    wall, rect, _ = sofa
    w, d = b.rng.uniform(0.9, 1.3), b.rng.uniform(0.5, 0.7)
    gap = b.rng.uniform(0.35, 0.5)
    x0, y0, x1, y1 = rect
    if wall in (0, 1):
        cy = (y0 + y1) / 2
        x = x1 + gap if wall == 0 else x0 - gap - d
        r = (x, cy - w / 2, x + d, cy + w / 2)
    else:
        cx = (x0 + x1) / 2
        y = y1 + gap if wall == 2 else y0 - gap - d
        r = (cx - w / 2, y, cx + w / 2, y + d)
    return r if b.free(r, margin=0.05) else None


# ----------------------------------------------------------------------------- cameras and ray casting
def look_at_pose(eye, target, up=(0.0, 0.0, 1.0)):
    """4x4 camera-to-world pose, OpenCV axes (x right, y down, z forward), as ScanNet's poses."""
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, np.float64))
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def make_camera_poses(rng, room: Room, num_cameras=None):
    """A hand-held scan: cameras on a loop inside the room at chest height, each looking across the room
    at a random spot on a wall (any height) or at the furniture, as a ScanNet trajectory sweeps."""
    X, Y, H = room.size
    if num_cameras is None:
        num_cameras = int(np.clip(round(4 * (X + Y)), 30, 48))
    poses = []
    center = np.array([X / 2, Y / 2])
    for k in range(num_cameras):
        ang = 2 * np.pi * (k + rng.uniform(-0.3, 0.3)) / num_cameras
        rad = rng.uniform(0.3, 0.7)
        eye_xy = center + np.array([np.cos(ang) * X / 2, np.sin(ang) * Y / 2]) * rad
        eye = np.array([eye_xy[0], eye_xy[1], rng.uniform(1.2, min(1.7, H - 0.3))])
        if room.dataset == 's3dis' and rng.random() < 0.3:  # S3DIS rooms have a scanned ceiling (and beams)
            target = np.array([rng.uniform(0.2, X - 0.2), rng.uniform(0.2, Y - 0.2), H])
        elif rng.random() < 0.5:  # a spot on a wall, preferably not the nearest one
            wall = int(rng.integers(4))
            s = rng.uniform(0, 1)
            tgt_xy = [(0.0, s * Y), (X, s * Y), (s * X, 0.0), (s * X, Y)][wall]
            target = np.array([tgt_xy[0], tgt_xy[1], rng.uniform(0.0, H)])
        else:  # furniture height, across the room
            tgt_xy = center - (eye_xy - center) * rng.uniform(0.0, 1.0) + rng.normal(0, 0.5, 2)
            tgt_xy = np.clip(tgt_xy, 0.1, [X - 0.1, Y - 0.1])
            target = np.array([tgt_xy[0], tgt_xy[1], rng.uniform(0.0, 1.2)])
        if np.linalg.norm(target[:2] - eye[:2]) < 0.8:  # too close to the wall in front: look across instead
            target[:2] = center - (eye_xy - center)
        poses.append(look_at_pose(eye, target))
    return poses


def ray_cast(origins, directions, room: Room, t_min=1e-6, chunk=4096):
    """First hit of rays ``origins + t * directions`` (t > t_min) with the room's primitives.

    origins [R,3] or [3], directions [R,3] (not necessarily unit; t is in units of their length).
    Returns (t [R] float64, inf where nothing is hit; primitive index [R] int64, -1 where nothing is hit).
    Boxes: slab test; cylinders (z axis): side quadric plus the two caps.
    """
    directions = np.asarray(directions, np.float64).reshape(-1, 3)
    origins = np.broadcast_to(np.asarray(origins, np.float64), directions.shape)
    cyl, lo, hi, _ = room.primitive_arrays()
    t_out = np.full(len(directions), np.inf)
    idx_out = np.full(len(directions), -1, np.int64)
    boxes, cyls = np.flatnonzero(~cyl), np.flatnonzero(cyl)
    for s in range(0, len(directions), chunk):
        o, d = origins[s:s + chunk, None, :], directions[s:s + chunk, None, :]
        best_t = np.full(len(o), np.inf)
        best_i = np.full(len(o), -1, np.int64)
        if len(boxes):
            # slab test, one axis at a time on [R, P] arrays (faster than reducing a trailing axis of 3)
            t_enter = np.full((len(o), len(boxes)), -np.inf)
            t_exit = np.full((len(o), len(boxes)), np.inf)
            with np.errstate(divide='ignore', invalid='ignore'):
                for a in range(3):
                    inv = 1.0 / d[:, :, a]
                    t1 = (lo[None, boxes, a] - o[:, :, a]) * inv
                    t2 = (hi[None, boxes, a] - o[:, :, a]) * inv
                    np.maximum(t_enter, np.fmin(t1, t2), out=t_enter)  # fmin/fmax skip the NaN of 0/0
                    np.minimum(t_exit, np.fmax(t1, t2), out=t_exit)
            hit = (t_enter <= t_exit) & (t_enter > t_min)
            t = np.where(hit, t_enter, np.inf)
            j = t.argmin(axis=1)
            tj = t[np.arange(len(o)), j]
            better = tj < best_t
            best_t[better], best_i[better] = tj[better], boxes[j[better]]
        if len(cyls):
            c = (lo[cyls] + hi[cyls]) / 2
            r = (hi[cyls, 0] - lo[cyls, 0]) / 2
            z0, z1 = lo[cyls, 2], hi[cyls, 2]
            ox, oy, oz = o[..., 0] - c[None, :, 0], o[..., 1] - c[None, :, 1], o[..., 2]
            dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
            a = dx * dx + dy * dy
            bq = 2 * (ox * dx + oy * dy)
            cq = ox * ox + oy * oy - r[None] ** 2
            disc = bq * bq - 4 * a * cq
            with np.errstate(divide='ignore', invalid='ignore'):
                ts = (-bq - np.sqrt(np.maximum(disc, 0))) / (2 * a)
                zs = oz + ts * dz
                side_ok = (disc >= 0) & (a > 1e-12) & (ts > t_min) & (zs >= z0[None]) & (zs <= z1[None])
                t = np.where(side_ok, ts, np.inf)
                for zc in (z0, z1):
                    tc = (zc[None] - oz) / dz
                    px, py = ox + tc * dx, oy + tc * dy
                    cap_ok = np.isfinite(tc) & (tc > t_min) & (px * px + py * py <= r[None] ** 2)
                    t = np.minimum(t, np.where(cap_ok, tc, np.inf))
            j = t.argmin(axis=1)
            tj = t[np.arange(len(o)), j]
            better = tj < best_t
            best_t[better], best_i[better] = tj[better], cyls[j[better]]
        t_out[s:s + chunk], idx_out[s:s + chunk] = best_t, best_i
    return t_out, idx_out


def camera_visibility(room: Room, points, hfov_deg=CAMERA_HFOV_DEG, vfov_deg=CAMERA_VFOV_DEG,
                      min_depth=CAMERA_MIN_DEPTH, max_depth=CAMERA_MAX_DEPTH, tolerance=OCCLUSION_TOLERANCE):
    """bool [V, N]: camera v sees point n (inside its frustum, within depth range, nothing in between)."""
    points = np.asarray(points, np.float64)
    vis = np.zeros((len(room.camera_poses), len(points)), dtype=bool)
    tx, ty = np.tan(np.radians(hfov_deg) / 2), np.tan(np.radians(vfov_deg) / 2)
    for v, pose in enumerate(room.camera_poses):
        rot, eye = pose[:3, :3], pose[:3, 3]
        cam = (points - eye) @ rot  # world -> camera (rot is orthonormal)
        z = cam[:, 2]
        inside = (z > min_depth) & (z < max_depth) & (np.abs(cam[:, 0]) <= tx * z) & (np.abs(cam[:, 1]) <= ty * z)
        cand = np.flatnonzero(inside)
        if not len(cand):
            continue
        seg = points[cand] - eye
        dist = np.linalg.norm(seg, axis=1)
        t, _ = ray_cast(eye, seg, room)
        vis[v, cand] = t >= 1.0 - tolerance / dist
    return vis


# ----------------------------------------------------------------------------- point sampling
def _inside_primitives(room: Room, pts, eps=0.003):
    """int [N]: number of primitives whose (eps-grown) solid contains each point."""
    cyl, lo, hi, _ = room.primitive_arrays()
    count = np.zeros(len(pts), np.int64)
    for i in range(len(lo)):
        if cyl[i]:
            c = (lo[i] + hi[i]) / 2
            r = (hi[i, 0] - lo[i, 0]) / 2 + eps
            inside = (((pts[:, 0] - c[0]) ** 2 + (pts[:, 1] - c[1]) ** 2) <= r * r) & \
                     (pts[:, 2] >= lo[i, 2] - eps) & (pts[:, 2] <= hi[i, 2] + eps)
        else:
            inside = np.all((pts >= lo[i] - eps) & (pts <= hi[i] + eps), axis=1)
        count += inside
    return count


def _sample_on_primitive(rng, prim: Primitive, face, n):
    lo, hi = prim.lo, prim.hi
    u = rng.random((n, 3))
    if prim.kind == 'box':
        axis, side = face // 2, face % 2
        pts = lo + u * (hi - lo)
        pts[:, axis] = hi[axis] if side else lo[axis]
        return pts
    c = (lo + hi) / 2
    r = (hi[0] - lo[0]) / 2
    if face == 0:
        ang = u[:, 0] * 2 * np.pi
        return np.stack([c[0] + r * np.cos(ang), c[1] + r * np.sin(ang), lo[2] + u[:, 1] * (hi[2] - lo[2])], 1)
    rad, ang = r * np.sqrt(u[:, 0]), u[:, 1] * 2 * np.pi
    z = lo[2] if face == 1 else hi[2]
    return np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang), np.full(n, z)], 1)


def sample_points(rng, room: Room, num_points):
    """Uniform points on the exposed surfaces: (clean xyz float64 [N,3], primitive index int64 [N]).

    Faces are sampled in proportion to their area (undersides of raised objects at UNDERSIDE_DENSITY: a
    reconstructed mesh has few vertices where no camera looked); points inside another solid (a table leg's top inside
    the table top, a wall behind a picture, the floor under a cabinet) are discarded, as a scan has none.
    """
    areas, owners = [], []
    for i, p in enumerate(room.primitives):
        for f, a in zip(p.faces, p.face_areas()):
            if f == (4 if p.kind == 'box' else 1) and p.lo[2] > 0.05:
                a *= UNDERSIDE_DENSITY
            a *= p.density
            areas.append(a)
            owners.append((i, f))
    areas = np.array(areas)
    pts_all, idx_all = [], []
    have, n_draw = 0, int(num_points * 1.5) + 100
    for _ in range(20):
        counts = rng.multinomial(n_draw, areas / areas.sum())
        pts, idx = [], []
        for (i, f), k in zip(owners, counts):
            if k:
                pts.append(_sample_on_primitive(rng, room.primitives[i], f, k))
                idx.append(np.full(k, i, np.int64))
        pts, idx = np.concatenate(pts), np.concatenate(idx)
        keep = _inside_primitives(room, pts) == 1  # only inside (on the surface of) its own primitive
        pts_all.append(pts[keep])
        idx_all.append(idx[keep])
        have += int(keep.sum())
        if have >= num_points:
            break
    pts, idx = np.concatenate(pts_all), np.concatenate(idx_all)
    if len(pts) < num_points:
        raise RuntimeError(f'could only sample {len(pts)} of {num_points} points in room {room.name}')
    choice = rng.choice(len(pts), num_points, replace=False)
    return pts[choice], idx[choice]


# ----------------------------------------------------------------------------- text embeddings
def similar_pairs(info: DatasetInfo):
    return SCANNET_SIMILAR_PAIRS if info.name == 'scannet' else S3DIS_SIMILAR_PAIRS


def confused_as(info: DatasetInfo):
    """int [C] confused class per class and float [C] its strength (SPEC §6 t_conf)."""
    table = SCANNET_CONFUSED_AS if info.name == 'scannet' else S3DIS_CONFUSED_AS
    conf = np.arange(info.num_classes)
    strength = np.zeros(info.num_classes)
    for name, (other, s) in table.items():
        conf[info.labels.index(name)] = info.labels.index(other)
        strength[info.labels.index(name)] = s
    return conf, strength


def make_text_embeddings(info: DatasetInfo, feat_dim=768, seed=0):
    """[C, D] unit rows with CLIP-like cosine similarities: similar pairs 0.80-0.90, the rest 0.60-0.75.

    A target Gram matrix is drawn in the bands (with a margin), made positive definite, factored into
    C-dim vectors and rotated into D dims by a random orthonormal basis.
    """
    rng = np.random.default_rng(_seed(seed, info.name, 'text'))
    C = info.num_classes
    if feat_dim < C:
        raise ValueError(f'feat_dim {feat_dim} must be at least the number of classes {C}')
    gram = rng.uniform(0.63, 0.72, (C, C))
    for a, b in similar_pairs(info):
        i, j = sorted((info.labels.index(a), info.labels.index(b)))
        gram[i, j] = rng.uniform(0.82, 0.88)  # upper triangle: mirrored below
    gram = np.triu(gram, 1)
    gram = gram + gram.T + np.eye(C)
    pair = np.zeros((C, C), bool)
    for a, b in similar_pairs(info):
        i, j = info.labels.index(a), info.labels.index(b)
        pair[i, j] = pair[j, i] = True
    lo_band, hi_band = np.where(pair, 0.81, 0.61), np.where(pair, 0.89, 0.74)
    np.fill_diagonal(lo_band, 1.0)
    np.fill_diagonal(hi_band, 1.0)
    # Dense clusters of similar classes (wall/column/beam/board) can make the targets indefinite:
    # alternate a projection onto positive-definite matrices with unit diagonal and a clip into the bands.
    for _ in range(100):
        w, v = np.linalg.eigh(gram)
        if w.min() >= 0.02:
            break
        gram = (v * np.maximum(w, 0.03)) @ v.T
        scale = 1.0 / np.sqrt(np.diag(gram))
        gram = np.clip(gram * scale[:, None] * scale[None, :], lo_band, hi_band)
    w, v = np.linalg.eigh(gram)
    if w.min() < 0.005:
        raise RuntimeError(f'text-similarity targets of {info.name} are not realisable (eigenvalue {w.min():.3f})')
    vecs = v * np.sqrt(w)                     # rows: C-dim vectors with Gram == gram
    basis, _ = np.linalg.qr(rng.normal(size=(feat_dim, C)))
    emb = vecs @ basis.T
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- fused features
def simulate_fused_features(rng, room: Room, points, labels_feature, visibility, text_embeddings,
                            params: FeatureParams = FeatureParams()):
    """Fused 2D features of the points some camera sees (SPEC §6 formula; module docstring).

    points [N,3] clean xyz; labels_feature [N]: the class the 2D model would see per point;
    visibility bool [V, N]. Returns (feat float32 [M, D], mask_full bool [N]).
    """
    info = dataset_info(room.dataset)
    C, D = text_embeddings.shape
    N, V = len(points), visibility.shape[0]
    mask = visibility.any(0)
    conf, strength = confused_as(info)
    # per-view noise: zero-sum coefficients over classes, i.e. noise inside the text subspace that moves
    # scores between classes (a 2D model's errors are confusions between classes, not isotropic noise)
    z = rng.normal(0, params.view_noise, (V, C))
    z -= z.mean(1, keepdims=True)
    coef = np.zeros((N, C))
    seen = visibility.sum(0).astype(np.float64)
    coef += (visibility.T.astype(np.float64) @ z) / np.maximum(seen, 1)[:, None]
    # per-view blobs: a region the view calls a wrong class (present in the room: a plausible mistake)
    room_classes = np.unique(labels_feature)
    for v in range(V):
        if rng.random() >= params.blob_probability:
            continue
        vis_idx = np.flatnonzero(visibility[v])
        if not len(vis_idx):
            continue
        centre = points[vis_idx[int(rng.integers(len(vis_idx)))]]
        radius = rng.uniform(*params.blob_radius)
        k = int(rng.choice(room_classes))
        dist = np.linalg.norm(points[vis_idx] - centre, axis=1)
        w = np.clip(1.0 - dist / radius, 0.0, 1.0)
        coef[vis_idx, k] += params.blob_strength * w / seen[vis_idx]
    # the true class and its systematic confusion (the same in every scene: a linear shift ESS can undo)
    rows = np.arange(N)
    coef[rows, labels_feature] += params.true_weight
    coef[rows, conf[labels_feature]] += params.true_weight * params.confusion_scale * strength[labels_feature]
    # boundary blur: a 2D feature pixel mixes the neighbouring object
    tree = cKDTree(points)
    nn_dist, nn_idx = tree.query(points, k=16, distance_upper_bound=params.boundary_radius)
    valid = np.isfinite(nn_dist)
    nn_lab = np.where(valid, labels_feature[np.minimum(nn_idx, N - 1)], -1)
    other = valid & (nn_lab != labels_feature[:, None]) & (nn_lab >= 0)
    has = other.any(1)
    first = other.argmax(1)
    d_other = nn_dist[rows, first]
    w_ctx = np.where(has, params.boundary_weight * np.clip(1 - d_other / params.boundary_radius, 0, 1), 0.0)
    coef[rows[has], nn_lab[rows[has], first[has]]] += w_ctx[has]
    idx = np.flatnonzero(mask)
    feat = coef[idx].astype(np.float32) @ text_embeddings.astype(np.float32)
    iso = rng.standard_normal((len(idx), D), dtype=np.float32)
    feat += iso * np.float32(params.isotropic_noise / np.sqrt(D))
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    return feat, mask


# ----------------------------------------------------------------------------- a full scene
def _seed(*parts):
    """A stable 32-bit seed from strings and ints (Python's hash() is salted per process)."""
    return zlib.crc32('/'.join(str(p) for p in parts).encode())


def scene_names(info: DatasetInfo, num_train, num_val):
    """[(split, scene, room_type, global index)]: ScanNet 'scene%04d_00'; S3DIS 'Area_<a>_<type>_<i>'
    with area 5 for val and areas 1-4, 6 for train, as the real benchmark splits."""
    types = [t[0] for t in room_types(info.name)]
    out = []
    counters: Dict[Tuple[int, str], int] = {}
    for g in range(num_train + num_val):
        split = 'train' if g < num_train else 'val'
        k = g if split == 'train' else g - num_train
        rtype = types[k % len(types)]
        if info.name == 'scannet':
            out.append((split, f'scene{g:04d}_00', rtype, g))
        else:
            area = (1, 2, 3, 4, 6)[(k // len(types)) % 5] if split == 'train' else 5
            counters[(area, rtype)] = counters.get((area, rtype), 0) + 1
            out.append((split, f'Area_{area}_{rtype}_{counters[(area, rtype)]}', rtype, g))
    return out


def make_scene(info: DatasetInfo, text_embeddings, room_type, name, index, seed=0, num_points=20000,
               params: Optional[FeatureParams] = None, features='simulated'):
    """One scene: dict(room, coords f32 [N,3] (noisy), colors f32 [N,3] in [-1,1], labels int64 [N],
    clean_coords, primitive_index, visibility bool [V,N], feat f32 [M,D], mask_full bool [N]).

    features: 'simulated' (the formula on the analytic visibility, fast) or 'rendered' (depth / feature
    images ray-cast from the fusion cameras and fused by prep/fusion.py; dataset/synthetic_render.py).
    """
    if features not in ('simulated', 'rendered'):
        raise ValueError(f"features must be 'simulated' or 'rendered', found {features!r}")
    if params is None:
        params = FeatureParams() if features == 'simulated' else RENDERED_FEATURE_PARAMS
    rng = np.random.default_rng(_seed(seed, info.name, index))
    room = make_room(rng, info, room_type, name=name)
    # The mesh comes from every frame of the scan, the fusion from a subset (OpenScene fuses every 20th
    # frame): points no scan camera saw are mostly missing from a real mesh (holes), so keep only a few.
    clean, prim_idx = sample_points(rng, room, int(num_points * OVERSAMPLE))
    vis_scan = camera_visibility(room, clean)
    keep = np.flatnonzero(vis_scan.any(0) | (rng.random(len(clean)) < UNSEEN_KEEP))
    if len(keep) < num_points:
        raise RuntimeError(f'room {name}: only {len(keep)} of {num_points} points survive the scan simulation')
    keep = np.sort(rng.choice(keep, num_points, replace=False))
    clean, prim_idx = clean[keep], prim_idx[keep]
    visibility = vis_scan[room.fusion_views][:, keep]
    prim_class = np.array([p.class_id for p in room.primitives])
    prim_feature = np.array([p.feature_class for p in room.primitives])
    prim_color = np.stack([p.color for p in room.primitives])
    labels = prim_class[prim_idx].astype(np.int64)
    colors = np.clip(prim_color[prim_idx] + rng.normal(0, 0.04, (num_points, 3)), 0, 1)
    coords = clean + rng.normal(0, POINT_NOISE_STD, clean.shape)
    # a few unannotated points scattered over the scene, on top of the unannotated objects
    labels[rng.random(num_points) < 0.01] = IGNORE_LABEL
    timing = {}
    if features == 'simulated':
        feat, mask = simulate_fused_features(rng, room, clean, prim_feature[prim_idx], visibility, text_embeddings,
                                             params)
    else:
        from dataset.synthetic_render import rendered_fused_features  # runs prep/fusion.py
        feat, mask, timing = rendered_fused_features(rng, room, coords, text_embeddings, params)
    return dict(timing=timing, room=room, coords=coords.astype(np.float32), colors=(colors * 2 - 1).astype(np.float32),
                labels=labels, clean_coords=clean, primitive_index=prim_idx, visibility=visibility,
                feat=feat, mask_full=mask)


def plg_pseudo_labels(feat, mask_full, labels, text_embeddings, num_classes):
    """Per-point PLG labels as the PLG stage computes them (scene-level mask from GT; points without a
    feature get the 'unlabeled' index num_classes)."""
    pred = np.full(len(mask_full), num_classes, np.int64)
    mask = np.asarray(mask_full, bool)
    if mask.any():
        lab, _ = pseudo_labels_from_features(np.asarray(feat, np.float32), text_embeddings,
                                             scene_label_mask(labels, num_classes))
        pred[mask] = lab
    return pred


def make_synthetic_dataset(out, name, dataset='scannet', num_train=16, num_val=4, points_per_scene=20000,
                           seed=0, feat_dim=768, overwrite=False, params: Optional[FeatureParams] = None,
                           verbose=False, features='simulated'):
    """Write a synthetic dataset (module docstring) and return its paths and statistics.

    Returns dict(data_root, feature_root, text_embeddings_path, scenes {split: [names]}, stats {split:
    dict(scenes, points, coverage, plg_miou, plg_miou_present)}, seconds, skipped). Existing files are
    kept (and only re-read for the statistics) unless ``overwrite``.
    """
    info = dataset_info(dataset)
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f'need at least one scene, got num_train={num_train} num_val={num_val}')
    data_root = os.path.join(out, f'{name}_3d')
    feature_root = os.path.join(out, f'{name}_multiview')
    text_path = os.path.join(out, f'{name}_text_embeddings.npy')
    start = time.time()
    if overwrite or not os.path.isfile(text_path):
        text = make_text_embeddings(info, feat_dim, seed)
        save_text_embeddings(text_path, text)
    text = load_text_embeddings(text_path, info.num_classes, feat_dim)
    result = dict(data_root=data_root, feature_root=feature_root, text_embeddings_path=text_path,
                  scenes={'train': [], 'val': []}, stats={}, skipped=0)
    preds = {'train': [], 'val': []}
    gts = {'train': [], 'val': []}
    covered = {'train': [0, 0], 'val': [0, 0]}
    for split, scene, rtype, g in scene_names(info, num_train, num_val):
        file_name = scene + ('_vh_clean_2' if info.name == 'scannet' else '') + '.pth'
        scene_path = os.path.join(data_root, split, file_name)
        feat_path = os.path.join(feature_root, f'{scene}_0.pt')
        if not overwrite and os.path.isfile(scene_path) and os.path.isfile(feat_path):
            s3d = load_scene_3d(scene_path)
            feat, mask = load_fused_features(feat_path, len(s3d.coords), feat_dim)
            labels, feat, mask = s3d.labels, feat.float().numpy(), mask.numpy()
            result['skipped'] += 1
        else:
            scene_data = make_scene(info, text, rtype, scene, g, seed, points_per_scene, params, features)
            labels, feat, mask = scene_data['labels'], scene_data['feat'], scene_data['mask_full']
            save_fused_features(feat_path, torch.from_numpy(feat), torch.from_numpy(mask))
            # the statistics describe the files as written (float16 features), as a re-run that reads them back
            feat = torch.from_numpy(feat).half().float().numpy()
            save_scene_3d(scene_path, scene_data['coords'], scene_data['colors'], labels.astype(np.int64))
        result['scenes'][split].append(scene)
        preds[split].append(plg_pseudo_labels(feat, mask, labels, text, info.num_classes))
        gts[split].append(labels)
        covered[split][0] += int(mask.sum())
        covered[split][1] += len(mask)
        if verbose:
            print(f'  {split:5s} {scene}: {len(mask)} points, coverage {mask.mean():.3f}', flush=True)
    for split in ('train', 'val'):
        if not preds[split]:
            continue
        r = evaluate(np.concatenate(preds[split]), np.concatenate(gts[split]), info.labels)
        result['stats'][split] = dict(scenes=len(preds[split]), points=covered[split][1],
                                      coverage=covered[split][0] / max(covered[split][1], 1),
                                      plg_miou=r['miou'], plg_miou_present=r['miou_present'],
                                      plg_iou={info.labels[c]: float(r['iou'][c]) for c in range(info.num_classes)
                                               if r['present'][c]})
    result['seconds'] = time.time() - start
    return result


def get_parser():
    p = argparse.ArgumentParser(description='Write a synthetic ScanNet/S3DIS-like dataset (SPEC §6).')
    p.add_argument('--out', default='data', help='output folder')
    p.add_argument('--name', default='demo', help='dataset name: <out>/<name>_3d, <name>_multiview, ...')
    p.add_argument('--dataset', default='scannet', choices=['scannet', 's3dis'], help='label space')
    p.add_argument('--num-train', type=int, default=16)
    p.add_argument('--num-val', type=int, default=4)
    p.add_argument('--points', type=int, default=20000, help='points per scene')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--feat-dim', type=int, default=768)
    p.add_argument('--overwrite', action='store_true', help='regenerate existing files')
    p.add_argument('--features', default='simulated', choices=['simulated', 'rendered'],
                   help="fused features: 'simulated' (formula on analytic visibility, fast) or 'rendered' "
                        "(ray-cast RGB-D + 2D feature frames fused by prep/fusion.py)")
    p.add_argument('--verbose', action='store_true', help='one line per scene')
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    res = make_synthetic_dataset(args.out, args.name, args.dataset, args.num_train, args.num_val, args.points,
                                 args.seed, args.feat_dim, args.overwrite, verbose=args.verbose,
                                 features=args.features)
    print(f"synthetic {args.dataset} dataset '{args.name}' in {args.out} ({res['seconds']:.1f} s, "
          f"{res['skipped']} existing scenes kept; --overwrite regenerates)")
    print(f"  3D scenes:       {res['data_root']}/{{train,val}}/")
    print(f"  fused features:  {res['feature_root']}/<scene>_0.pt")
    print(f"  text embeddings: {res['text_embeddings_path']}")
    for split, s in res['stats'].items():
        print(f"  {split:5s}: {s['scenes']} scenes, {s['points']} points, 2D coverage {s['coverage']:.3f}, "
              f"PLG mIoU {s['plg_miou']:.4f} (upstream: / all classes), {s['plg_miou_present']:.4f} "
              f"(mean over present classes)")
    return res


if __name__ == '__main__':
    main()
