"""Room types (ScanNet-like and S3DIS-like), their sizes, and ``make_room``: the shell and the furniture of
one room, and the cameras that scan it."""
from typing import Optional

import numpy as np

from dataset.label_constants import DatasetInfo
from synthetic.furniture import (
    _coffee_table_rect,
    build_beams_columns,
    build_cabinet,
    build_chair,
    build_clutter,
    build_counter,
    build_curtain,
    build_nightstands,
    build_shower_curtain,
    build_sink,
    build_table,
    build_wall_furniture,
    build_wall_mounted,
)
from synthetic.geometry import Primitive, Room, _Builder
from synthetic.scan import FUSION_FRAME_FRACTION, make_camera_poses

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
