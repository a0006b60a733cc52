"""Furniture of the synthetic rooms, built from parts with the sizes, heights and placements of real rooms:
tables and desks on legs, chairs with seat, back and legs, cabinets, counters, beds, sofas, shelves, sinks,
toilets, bathtubs, doors, windows, curtains, pictures, S3DIS's beams and columns, clutter."""

import numpy as np

from synthetic.geometry import GLASS_DENSITY, _along, _legs, _over, _part

OTHER_FURNITURE = {'bedroom': ('dresser', 'nightstand', 'bin'), 'kitchen': ('bin', 'stool'),
                   'living': ('tv stand', 'dresser', 'bin', 'stool'), 'bathroom': ('bin',)}


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
            2: ((x0 + inset, y0, z0), (x1 - inset, y0 + t, z1)),
            3: ((x0 + inset, y1 - t, z0), (x1 - inset, y1, z1))}[back]


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
