"""RGB-D frames and cameras: what every frame reader yields (``FrameData``), the pinhole helpers, and the readers
and checks of the frame files.

The per-dataset readers (``prep/scannet.py``: exported ScanNet frames; ``prep/s3dis.py``: Stanford 2D-3D-S) yield
``FrameData``; ``prep/fusion.py`` projects points into them. Intrinsics follow OpenScene's conventions.
A frame file that cannot be read (cut short, not an image, not text) is an ``UnreadableFileError`` and a value that
makes no camera (a NaN or non-rigid pose, a zero focal length) a ``ValueError``, each naming the file: fusion reads
thousands of frames, and a library's "image file is truncated" does not say which one.
"""
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

# ScanNet depth-camera intrinsics at 640x480 (OpenScene's preprocessing constants).
SCANNET_INTRINSIC_640x480 = (577.870605, 577.870605, 319.5, 239.5)
SCANNET_IMAGE_SIZE = (240, 320)  # (H, W) of the exported frames


@dataclass
class FrameData:
    """One RGB-D frame, as every frame reader yields it.

    color: [H_c, W_c, 3] uint8 RGB; depth: [H, W] float metres (0 = no measurement);
    intrinsic: 3x3 or 4x4 at the depth resolution; pose: 4x4 camera-to-world;
    name: '<scene>/<frame id>' (unique; ``PrecomputedFeatureSource`` looks up '<dir>/<name>.pt').
    """
    color: np.ndarray
    depth: np.ndarray
    intrinsic: np.ndarray
    pose: np.ndarray
    name: str


def make_intrinsic(fx, fy, cx, cy):
    K = np.eye(4)
    K[0, 0], K[1, 1], K[0, 2], K[1, 2] = fx, fy, cx, cy
    return K


def resize_intrinsic(intrinsic, src_hw, dst_hw):
    """Intrinsics of an image resized from ``src_hw`` to ``dst_hw`` = (H, W).

    OpenScene's ``adjust_intrinsic`` convention: focal lengths scale with the size ratio (the width ratio is
    taken from the height to keep the aspect ratio, as upstream), principal points with (dst - 1) / (src - 1).
    """
    K = np.array(intrinsic, dtype=np.float64)
    (sh, sw), (dh, dw) = src_hw, dst_hw
    if (sh, sw) == (dh, dw):
        return K
    resize_width = math.floor(dh * sw / sh)
    K[0, 0] *= resize_width / sw
    K[1, 1] *= dh / sh
    K[0, 2] *= (dw - 1) / (sw - 1)
    K[1, 2] *= (dh - 1) / (sh - 1)
    return K


def scannet_intrinsic(image_hw=SCANNET_IMAGE_SIZE):
    """OpenScene's fixed ScanNet intrinsics rescaled to ``image_hw``: 288.935/159.5/119.5 at 320x240."""
    return resize_intrinsic(make_intrinsic(*SCANNET_INTRINSIC_640x480), (480, 640), tuple(image_hw))


# ----------------------------------------------------------------------------- projection
def project_points(points, intrinsic, pose):
    """World points [N, 3] -> (u, v, z) float64 tensors: pixel column, pixel row, camera depth (metres).

    Computed in float64 so that rounding to pixels is exactly OpenScene's numpy computation.
    """
    points = torch.as_tensor(points).to(torch.float64)
    device = points.device
    pose = torch.as_tensor(np.asarray(pose, dtype=np.float64), device=device)
    K = np.asarray(intrinsic, dtype=np.float64)
    world_to_camera = torch.linalg.inv(pose)
    cam = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    z = cam[:, 2]
    u = cam[:, 0] * K[0, 0] / z + K[0, 2]
    v = cam[:, 1] * K[1, 1] / z + K[1, 2]
    return u, v, z


def resize_nearest(image, hw):
    """Nearest-neighbour resize to (H, W) choosing source pixel floor(i * src / dst), as OpenCV's
    INTER_NEAREST that OpenScene's ScanNet export uses (so depth values are never interpolated)."""
    image = np.asarray(image)
    h, w = hw
    rows = np.minimum((np.arange(h) * image.shape[0]) // h, image.shape[0] - 1)
    cols = np.minimum((np.arange(w) * image.shape[1]) // w, image.shape[1] - 1)
    return image[rows][:, cols]


# ----------------------------------------------------------------------------- frame files: reading and checks
POSE_ORTHONORMAL_TOLERANCE = 1e-2  # max |R^T R - I| of a pose's rotation; files written with 6 decimals are ~1e-6


def read_image(path, what, mode=None) -> np.ndarray:
    """An image file as an array (``mode`` e.g. 'RGB' converts); a missing, cut or foreign file named in words.

    PIL decodes lazily and reports a truncated PNG / JPEG as a bare "image file is truncated" OSError, so the
    decoding is forced here, where the path is known."""
    from PIL import Image, UnidentifiedImageError

    from util.io import UnreadableFileError
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert(mode) if mode else image)
    except UnidentifiedImageError:
        size = os.path.getsize(path)
        reason = 'empty (0 bytes)' if size == 0 else f'not an image file PIL can read ({size} bytes)'
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # PIL's errors for a damaged file
        text = str(err) or type(err).__name__
        reason = (f'truncated ({text}): the write was interrupted or the copy is partial'
                  if 'truncat' in text.lower() else f'damaged ({text})')
    raise UnreadableFileError(f"cannot read {what} '{path}': {reason}")


def read_matrix(path, what) -> np.ndarray:
    """A text file of whitespace-separated numbers (``#`` starts a comment), as ScanNet's pose and intrinsic
    files; float64 [rows, cols]. Unlike ``np.loadtxt``, every error names the file."""
    from util.io import UnreadableFileError
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except UnicodeDecodeError:
        raise UnreadableFileError(f"cannot read {what} '{path}': not a text file (binary content)") from None
    rows = [(i, line.split('#', 1)[0].split()) for i, line in enumerate(text.splitlines(), 1)]
    rows = [(i, row) for i, row in rows if row]
    if not rows:
        raise ValueError(f"{what} '{path}': expected a matrix of numbers, found an empty file")
    widths = sorted({len(row) for _, row in rows})
    if len(widths) > 1:
        raise ValueError(f"{what} '{path}': expected a matrix (rows of equal length), found rows of {widths} numbers")
    values = []
    for i, row in rows:
        try:
            values.append([float(x) for x in row])
        except ValueError:
            bad = next(x for x in row if not _is_number(x))
            raise ValueError(f"{what} '{path}': expected numbers, found {bad!r} on line {i}") from None
    return np.array(values, dtype=np.float64)


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def check_pose(pose, where) -> bool:
    """Is ``pose`` (4x4 camera-to-world) a usable camera? False for ScanNet's marker of lost tracking (infinite
    entries, -inf in its files): such frames are skipped. Garbage is refused (``ValueError`` naming ``where``):
    NaN, all zeros, a last row other than [0 0 0 1], or a rotation far from orthonormal (a scaled, sheared or
    mirrored matrix, which would project every point to a wrong pixel without any error)."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"{where}: expected a 4x4 camera-to-world pose, found shape {list(pose.shape)}")
    if np.isnan(pose).any():
        raise ValueError(f"{where}: the pose holds NaN ({int(np.isnan(pose).sum())} of 16 entries); ScanNet marks "
                         f"invalid poses with -inf, NaN means the file is damaged")
    if not np.isfinite(pose).all():
        return False
    if not pose.any():
        raise ValueError(f"{where}: the pose is all zeros, expected a rigid 4x4 camera-to-world matrix")
    if np.abs(pose[3] - [0, 0, 0, 1]).max() > 1e-3:
        raise ValueError(f"{where}: expected the last row of a camera-to-world pose to be [0 0 0 1], found "
                         f"{pose[3].tolist()}")
    R = pose[:3, :3]
    error = float(np.abs(R.T @ R - np.eye(3)).max())
    if error > POSE_ORTHONORMAL_TOLERANCE or np.linalg.det(R) < 0:
        what = 'a reflection (det -1)' if error <= POSE_ORTHONORMAL_TOLERANCE else f'max |R^T R - I| = {error:.3g}'
        raise ValueError(f"{where}: the pose is not rigid: its rotation is not a rotation matrix ({what}; "
                         f"tolerance {POSE_ORTHONORMAL_TOLERANCE})")
    return True


def check_intrinsic(K, where):
    """Refuse an intrinsic matrix that makes no pinhole camera (``ValueError`` naming ``where``): not 3x3 / 4x4,
    non-finite fx, fy, cx, cy, or a focal length <= 0 (every point would be 'seen by no frame', a misleading
    message much later)."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"{where}: expected a 3x3 or 4x4 intrinsic, found shape {list(K.shape)}")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not np.isfinite([fx, fy, cx, cy]).all() or fx <= 0 or fy <= 0:
        raise ValueError(f"{where}: expected finite intrinsics with positive focal lengths, found fx={fx:g}, "
                         f"fy={fy:g}, cx={cx:g}, cy={cy:g}")
    return K


def read_pose(path) -> np.ndarray:
    """A ScanNet pose file (4x4 camera-to-world, text); checked with ``check_pose`` (-inf frames pass, to be
    skipped by fusion)."""
    pose = read_matrix(path, 'pose file')
    check_pose(pose, f"pose file '{path}'")
    return pose


def read_intrinsic(path) -> np.ndarray:
    """An intrinsic file (3x3 or 4x4 text at the depth resolution), checked with ``check_intrinsic``."""
    return check_intrinsic(read_matrix(path, 'intrinsic file'), f"intrinsic file '{path}'")
