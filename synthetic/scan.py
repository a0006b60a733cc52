"""The simulated scanner: ScanNet-like pinhole cameras, analytic ray casting of a room's primitives, which
points a camera sees, and the points of a scan (sampled on the visible surfaces, with reconstruction noise)."""

import numpy as np

from synthetic.geometry import UNDERSIDE_DENSITY, Primitive, Room

# ScanNet's colour camera: 577.87 px focal length at 640x480 -> 58 x 45 degree field of view.
CAMERA_HFOV_DEG = 58.0


CAMERA_VFOV_DEG = 45.0


CAMERA_MIN_DEPTH = 0.2   # metres; structured-light sensors see nothing closer


CAMERA_MAX_DEPTH = 4.5   # metres; ScanNet's depth is unreliable beyond ~4-5 m


POINT_NOISE_STD = 0.004  # metres; reconstruction noise of a mesh vertex


OCCLUSION_TOLERANCE = 0.02  # metres; a ray may end this much before the point and still "see" it


OVERSAMPLE = 1.8        # surface samples per final point before the scan simulation drops unseen ones


UNSEEN_KEEP = 0.3       # fraction of points no scan camera sees that stay in the mesh (hole filling)


FUSION_FRAME_FRACTION = 0.6  # share of the scan's cameras whose frames are fused


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
