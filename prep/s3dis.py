"""S3DIS preprocessing: Stanford3dDataset v1.2 rooms -> 3D ``.pth`` files, and a 2D-3D-S RGB-D frame reader.

3D. Input ``<s3dis_root>/Area_<n>/<room>/Annotations/<class>_<i>.txt``, rows ``x y z r g b`` (r g b 0-255).
Output ``<out>/<split>/Area_<n>_<room>.pth`` = (coords float32 [N,3], colors float32 in [-1,1], labels int64)
with labels indexing ``label_constants.S3DIS_LABELS_13``. Points are the annotation files concatenated in
sorted file-name order (fused features index points in this order, so do not reorder afterwards).
Annotation names outside the 13 classes (``stairs`` in Area 2, ...) are labelled ``clutter``, the common
practice of S3DIS preprocessing. Area 5 is ``val`` and the other areas ``train`` (``--val_areas``).
Coordinates are kept as given (no per-room shift), so they stay in the frame of the 2D-3D-S camera poses;
use the non-aligned ``Stanford3dDataset_v1.2`` release for fusion: the ``_Aligned_Version`` rotates rooms.
Known defects of the release are repaired with a warning naming the file: a stray control byte in
Area_5/hallway_6/Annotations/ceiling_1.txt (line 180389) is read as a separator, and files not named
``<class>_<i>.txt`` (the duplicate ``Area_5/office_36/Annotations/wall_3 (1).txt``) are skipped.

2D (Stanford 2D-3D-Semantics, the RGB-D frames of the same areas). The download is laid out as::

    <root>/area_<n>/data/rgb/camera_<uuid>_<room>_frame_<j>_domain_rgb.png      1080x1080 RGB
    <root>/area_<n>/data/depth/camera_<uuid>_<room>_frame_<j>_domain_depth.png  uint16, 1/512 m, 65535 = missing
    <root>/area_<n>/data/pose/camera_<uuid>_<room>_frame_<j>_domain_pose.json

(Area 5 comes as ``area_5a`` and ``area_5b``; both are searched.) The pose json holds ``camera_k_matrix``
(3x3) and ``camera_rt_matrix``: a 3x4 [R | t] mapping *world to camera* (OpenCV axes: x right, y down,
z forward), which ``Stanford2D3DSFrames`` inverts to the camera-to-world pose ``FrameData`` carries.
Depth units are 1/512 m per the dataset's README (alexsax/2D-3D-Semantics: "16-bit PNGs ... a sensitivity of
1/512m. Missing values are encoded with the value 2^16 - 1"; z-depth in ``data/``, not in ``pano/``);
``depth_scale`` is a parameter in case a copy was re-encoded.

CLI::

    python -m prep.s3dis --s3dis_root /data/Stanford3dDataset_v1.2 --out_dir data/s3dis_3d
"""
import argparse
import glob
import json
import os
import re
import warnings
from typing import Iterator, List, Optional, Sequence

import numpy as np

from dataset.label_constants import S3DIS_LABELS_13
from prep.frames import FrameData, check_intrinsic, check_pose, read_image, resize_intrinsic, resize_nearest
from util.cli import run_cli

UNKNOWN_CLASS = 'clutter'
DEPTH_SCALE_2D3DS = 512.0
MISSING_DEPTH_2D3DS = 65535
_ANNOTATION_NAME = re.compile(r'^[A-Za-z]+_\d+\.txt$')
_CONTROL = re.compile(r'[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')


# ----------------------------------------------------------------------------- 3D
def annotation_class(filename):
    """'chair_12.txt' -> 'chair'; 'stairs_1.txt' -> 'stairs'."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    return stem.rsplit('_', 1)[0] if '_' in stem else stem


def class_index(name):
    """S3DIS-13 label of an annotation class name; names outside the 13 classes map to clutter."""
    name = name.lower()
    labels = [c.lower() for c in S3DIS_LABELS_13]
    return labels.index(name) if name in labels else labels.index(UNKNOWN_CLASS)


def _repair_line(line, path):
    # A control byte either separates two numbers (Area_5/hallway_6/Annotations/ceiling_1.txt, line 180389)
    # or sits inside one; keep whichever reading leaves the six numbers of a row.
    for repl in (' ', ''):
        fixed = _CONTROL.sub(repl, line)
        if len(fixed.split()) == 6:
            return fixed
    raise ValueError(f"S3DIS annotation '{path}': cannot repair the line {line!r} into 'x y z r g b'")


def read_annotation(path):
    """[K, 6] float array of one ``<class>_<i>.txt`` file."""
    with open(path, 'r', errors='replace') as f:
        text = f.read()
    if _CONTROL.search(text):
        bad = [i for i, line in enumerate(text.splitlines()) if _CONTROL.search(line)]
        warnings.warn(f"'{path}' holds control characters on line(s) {[i + 1 for i in bad[:5]]} (a known defect of "
                      f"the S3DIS release); repairing them")
        lines = text.splitlines()
        for i in bad:
            lines[i] = _repair_line(lines[i], path)
        text = '\n'.join(lines)
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"S3DIS annotation '{path}': expected numbers 'x y z r g b' per row: {err}") from None
    if values.size % 6:
        raise ValueError(f"S3DIS annotation '{path}': expected rows of 6 numbers 'x y z r g b', found "
                         f"{values.size} numbers in all")
    rows = values.reshape(-1, 6)
    # 'nan' and 'inf' parse as numbers: refused here, naming the file, rather than by a reader of the .pth
    bad = np.flatnonzero(~(np.isfinite(rows[:, :3]).all(1) & ((rows[:, 3:] >= 0) & (rows[:, 3:] <= 255)).all(1)))
    if bad.size:
        raise ValueError(f"S3DIS annotation '{path}': {bad.size} of {len(rows)} rows hold non-finite coordinates or "
                         f"colours outside 0..255; the first is row {bad[0] + 1} = {rows[bad[0]].tolist()}")
    return rows


def process_room(room_dir):
    """One room folder -> (coords float32 [N,3], colors float32 [N,3] in [-1,1], labels int64 [N])."""
    ann_dir = os.path.join(room_dir, 'Annotations')
    files = []
    for path in sorted(glob.glob(os.path.join(glob.escape(ann_dir), '*.txt'))):
        if _ANNOTATION_NAME.match(os.path.basename(path)):
            files.append(path)
        else:  # e.g. the duplicate 'Area_5/office_36/Annotations/wall_3 (1).txt' of the release
            warnings.warn(f"S3DIS: skipping '{path}': not named <class>_<i>.txt (a duplicate copy?)")
    if not files:
        raise FileNotFoundError(f"S3DIS room '{room_dir}': expected Annotations/<class>_<i>.txt files, found none")
    parts, labels = [], []
    for path in files:
        rows = read_annotation(path)
        parts.append(rows)
        labels.append(np.full(rows.shape[0], class_index(annotation_class(path)), np.int64))
    data = np.concatenate(parts)
    coords = data[:, :3].astype(np.float32)
    colors = (data[:, 3:6] / 127.5 - 1.0).astype(np.float32)
    return coords, colors, np.concatenate(labels)


def room_scene_name(area, room):
    return f'{area}_{room}'


def list_rooms(s3dis_root):
    """[(area 'Area_5', room 'office_1', path)] sorted; an error when nothing matches the layout."""
    rooms = []
    for area_dir in sorted(glob.glob(os.path.join(glob.escape(s3dis_root), 'Area_*'))):
        for room_dir in sorted(glob.glob(os.path.join(glob.escape(area_dir), '*'))):
            if os.path.isdir(os.path.join(room_dir, 'Annotations')):
                rooms.append((os.path.basename(area_dir), os.path.basename(room_dir), room_dir))
    if not rooms:
        raise FileNotFoundError(f"no S3DIS rooms under '{s3dis_root}': expected Area_<n>/<room>/Annotations/")
    return rooms


def area_number(area):
    m = re.match(r'(?i)area_(\d+)', area)
    if not m:
        raise ValueError(f"'{area}' is not an S3DIS area name (Area_<n>)")
    return int(m.group(1))


def preprocess(s3dis_root, out_dir, val_areas: Sequence[int] = (5,), overwrite=False, progress=True):
    """Write every room to ``<out_dir>/{train,val}/Area_<n>_<room>.pth``; returns the written paths."""
    from dataset.formats import save_scene_3d
    rooms = list_rooms(s3dis_root)
    if progress:
        from tqdm import tqdm
        rooms = tqdm(rooms, desc='s3dis', unit='room')
    written = []
    for area, room, room_dir in rooms:
        split = 'val' if area_number(area) in set(val_areas) else 'train'
        out = os.path.join(out_dir, split, room_scene_name(area, room) + '.pth')
        if os.path.isfile(out) and not overwrite:
            continue
        save_scene_3d(out, *process_room(room_dir))
        written.append(out)
    return written


# ----------------------------------------------------------------------------- 2D-3D-S frames
_FRAME_NAME = re.compile(r'^camera_(?P<uuid>[0-9a-fA-F]+)_(?P<room>.+?)_frame_(?P<frame>\d+)_domain_+pose\.json$')


# 2D-3D-S ships Area 5 as two scans, area_5a and area_5b; the poses of area_5b are in a frame of their own,
# rotated by -90 degrees about z and shifted against the S3DIS Area_5 points. This maps area_5b's world
# frame onto Area_5's (the correction DeepViewAgg's read_s3dis_pose and Pointcept's align_area5b apply;
# Pointcept's Y-up mesh transform written for Z-up points). Not verified on the real data in this repository.
AREA_5B_TO_AREA_5 = np.array([[0.0, 1.0, 0.0, -4.09703582],
                              [-1.0, 0.0, 0.0, 6.22617759],
                              [0.0, 0.0, 1.0, 0.0],
                              [0.0, 0.0, 0.0, 1.0]])


def read_2d3ds_pose(path, area_5b=False):
    """(K 3x3, camera-to-world 4x4) from a 2D-3D-S pose json (its camera_rt_matrix is world-to-camera);
    ``area_5b``: the pose comes from the area_5b scan and is moved into Area_5's frame."""
    from util.io import UnreadableFileError
    if not os.path.isfile(path):
        raise FileNotFoundError(f"2D-3D-S pose '{path}' does not exist")
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except ValueError as err:  # json's errors (a cut file, binary content) do not name the file
        raise UnreadableFileError(f"cannot read 2D-3D-S pose '{path}': not a complete JSON file ({err})") from None
    try:
        K = np.asarray(meta['camera_k_matrix'], np.float64)
        rt = np.asarray(meta['camera_rt_matrix'], np.float64)
    except (KeyError, TypeError) as err:
        raise ValueError(f"2D-3D-S pose '{path}': expected keys camera_k_matrix and camera_rt_matrix, missing "
                         f"{err}") from None
    except ValueError as err:  # ragged lists or non-numbers
        raise ValueError(f"2D-3D-S pose '{path}': camera_k_matrix and camera_rt_matrix must be matrices of "
                         f"numbers ({err})") from None
    if K.shape != (3, 3) or rt.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"2D-3D-S pose '{path}': expected camera_k_matrix 3x3 and camera_rt_matrix 3x4, found "
                         f"{list(K.shape)} and {list(rt.shape)}")
    check_intrinsic(K, f"2D-3D-S pose '{path}' (camera_k_matrix)")
    world_to_camera = np.eye(4)
    world_to_camera[:3] = rt[:3]
    # 2D-3D-S has no marker of invalid poses: an infinite entry is garbage like a NaN
    if not check_pose(world_to_camera, f"2D-3D-S pose '{path}' (camera_rt_matrix)"):
        raise ValueError(f"2D-3D-S pose '{path}': camera_rt_matrix holds infinite values")
    camera_to_world = np.linalg.inv(world_to_camera)
    if area_5b:
        camera_to_world = AREA_5B_TO_AREA_5 @ camera_to_world
    return K, camera_to_world


class Stanford2D3DSFrames:
    """The 2D-3D-S frames of one S3DIS room as ``FrameData`` (same contract as ScanNet's exported frames).

    root: the 2D-3D-S folder holding ``area_<n>[a|b]/data``; scene: 'Area_<n>_<room>' (our room naming).
    image_size: (H, W) to resize to (nearest for depth; intrinsics rescaled as OpenScene does), None keeps
    1080x1080. depth_scale: PNG units per metre (512 for 2D-3D-S). frame_skip: keep every k-th frame.
    """

    def __init__(self, root, scene, image_size: Optional[Sequence[int]] = None, depth_scale=DEPTH_SCALE_2D3DS,
                 frame_skip=1):
        m = re.match(r'^(Area_\d+)_(.+)$', scene)
        if not m:
            raise ValueError(f"S3DIS scene '{scene}': expected 'Area_<n>_<room>'")
        area, self.room = m.group(1), m.group(2)
        n = area_number(area)
        area_dirs = [d for d in sorted(glob.glob(os.path.join(glob.escape(root), f'area_{n}*')))
                     if re.fullmatch(rf'area_{n}[ab]?', os.path.basename(d))]
        if not area_dirs:
            raise FileNotFoundError(f"2D-3D-S: no folder area_{n} (or area_{n}a/area_{n}b) under '{root}'")
        self.poses: List[str] = []
        for d in area_dirs:
            for path in sorted(glob.glob(os.path.join(glob.escape(os.path.join(d, 'data', 'pose')), '*.json'))):
                fm = _FRAME_NAME.match(os.path.basename(path))
                if fm and fm.group('room') == self.room:
                    self.poses.append(path)
        self.poses = self.poses[::frame_skip]
        self.scene = scene
        self.image_size = tuple(image_size) if image_size else None
        self.depth_scale = depth_scale

    def __len__(self):
        return len(self.poses)

    def files(self):
        """Every file the frames are read from (pose, colour, depth), for provenance."""
        return [p for pose in self.poses for p in (pose, self._sibling(pose, 'rgb'), self._sibling(pose, 'depth'))]

    @staticmethod
    def _sibling(pose_path, domain):
        data_dir = os.path.dirname(os.path.dirname(pose_path))
        stem = re.sub(r'_domain_+pose\.json$', '', os.path.basename(pose_path))
        return os.path.join(data_dir, domain, f'{stem}_domain_{domain}.png')

    def __iter__(self) -> Iterator[FrameData]:
        for pose_path in self.poses:
            area_dir = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(pose_path))))
            K, pose = read_2d3ds_pose(pose_path, area_5b=area_dir == 'area_5b')
            rgb_path, depth_path = self._sibling(pose_path, 'rgb'), self._sibling(pose_path, 'depth')
            for p in (rgb_path, depth_path):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"2D-3D-S frame '{pose_path}' has no '{p}'")
            color = read_image(rgb_path, '2D-3D-S colour image', 'RGB')
            raw = read_image(depth_path, '2D-3D-S depth image')
            if raw.ndim != 2:
                raise ValueError(f"2D-3D-S depth '{depth_path}': expected a 16-bit single-channel PNG, found shape "
                                 f"{list(raw.shape)}")
            depth = raw.astype(np.float32) / self.depth_scale
            depth[raw == MISSING_DEPTH_2D3DS] = 0.0  # missing measurement
            if self.image_size and tuple(depth.shape) != self.image_size:
                K = resize_intrinsic(K, depth.shape, self.image_size)
                depth = resize_nearest(depth, self.image_size)
                color = resize_nearest(color, self.image_size)
            name = os.path.basename(pose_path)[:-len('_domain_pose.json')]
            yield FrameData(color=color, depth=depth, intrinsic=K, pose=pose, name=f'{self.scene}/{name}')


# ----------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m prep.s3dis',
                                description='Stanford3dDataset v1.2 rooms -> <out_dir>/{train,val}/Area_<n>_<room>.pth')
    p.add_argument('--s3dis_root', required=True, help='folder holding Area_1 ... Area_6')
    p.add_argument('--out_dir', required=True)
    p.add_argument('--val_areas', type=int, nargs='+', default=[5])
    p.add_argument('--overwrite', action='store_true')
    args = p.parse_args(argv)
    written = preprocess(args.s3dis_root, args.out_dir, args.val_areas, overwrite=args.overwrite)
    print(f'wrote {len(written)} rooms to {args.out_dir} (val areas: {args.val_areas})')


if __name__ == '__main__':
    run_cli(main)
