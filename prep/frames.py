"""RGB-D frames and cameras: what every frame reader yields (``FrameData``) and the pinhole helpers.

The per-dataset readers (``prep/scannet.py``: exported ScanNet frames; ``prep/s3dis.py``: Stanford 2D-3D-S) yield
``FrameData``; ``prep/fusion.py`` projects points into them. Intrinsics follow OpenScene's conventions.
"""
import math
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
