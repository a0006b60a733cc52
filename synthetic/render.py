"""Rendered RGB-D frames of the synthetic rooms, fused with the real fusion code (docs/synthetic_data.md).

``synthetic/features.py`` simulates fused features directly. This module instead produces what a real
pipeline starts from: per camera a depth image (metres, z-depth), a colour image, a label image and a 2D
feature map from a simulated 2D vision-language model, and then runs ``prep.fusion.fuse_features``
(OpenScene's projection + 25 % relative depth test + mean over views) to get ``<scene>_0.pt``. Rendering is
analytic ray casting of the room's boxes and cylinders (``synthetic.scan.ray_cast``), vectorised over pixels.

The simulated 2D model is the per-pixel version of ``synthetic/features.py``'s formula: the hit surface's
class embedding, shifted toward its confusable class (systematic, the same in every frame), a per-frame
noise vector (shared by every pixel of the frame), a per-frame wrong "blob" (a disc in the image that
the model calls another class of the room), and boundary blur as a 2D box filter of the class map
(a 2D model's receptive field mixes neighbouring objects).
"""
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dataset.label_constants import IGNORE_LABEL, dataset_info
from prep.frames import FrameData, scannet_intrinsic
from prep.fusion import fuse_features
from synthetic.features import RENDERED_FEATURE_PARAMS, FeatureParams, confused_as
from synthetic.geometry import Room
from synthetic.scan import CAMERA_MAX_DEPTH, CAMERA_MIN_DEPTH, ray_cast

IMAGE_HW = (240, 320)      # OpenScene's fusion resolution
FEATURE_HW = (60, 80)      # resolution of the simulated 2D model's feature map (fusion maps pixels onto it)
BLUR_PIXELS = 3            # box-filter width (feature-map pixels, ~5 cm at 2 m) of the boundary blur


def pixel_rays(intrinsic, pose, image_hw):
    """World-space rays through every pixel centre: (origin [3], directions [H*W, 3]) with directions scaled
    so that their camera-z component is 1, hence the ray parameter t of a hit *is* the z-depth."""
    H, W = image_hw
    K = np.asarray(intrinsic, np.float64)
    v, u = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing='ij')
    cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    pose = np.asarray(pose, np.float64)
    return pose[:3, 3], cam @ pose[:3, :3].T


def render_frame(room: Room, pose, intrinsic=None, image_hw=IMAGE_HW, min_depth=CAMERA_MIN_DEPTH,
                 max_depth=CAMERA_MAX_DEPTH):
    """Ray-cast one camera. Returns dict(depth float32 [H,W] metres (0 = no measurement, as a depth sensor
    beyond its range), primitive int64 [H,W] (-1 = none), label int64 [H,W] (GT class, 255 = none),
    feature_class int64 [H,W] (class the 2D model sees, -1 = none), color uint8 [H,W,3])."""
    H, W = image_hw
    K = scannet_intrinsic(image_hw) if intrinsic is None else np.asarray(intrinsic, np.float64)
    origin, dirs = pixel_rays(K, pose, image_hw)
    t, prim = ray_cast(origin, dirs, room)
    valid = np.isfinite(t) & (t >= min_depth) & (t <= max_depth)
    prim = np.where(valid, prim, -1)
    depth = np.where(valid, t, 0.0).astype(np.float32).reshape(H, W)
    cls = np.array([p.class_id for p in room.primitives] + [IGNORE_LABEL])
    fcls = np.array([p.feature_class for p in room.primitives] + [-1])
    col = np.concatenate([np.stack([p.color for p in room.primitives]), np.zeros((1, 3))])
    return dict(depth=depth, primitive=prim.reshape(H, W), label=cls[prim].reshape(H, W),
                feature_class=fcls[prim].reshape(H, W),
                color=(np.clip(col[prim], 0, 1) * 255).round().astype(np.uint8).reshape(H, W, 3))


class SimulatedFeatureSource:
    """Feature source for ``fuse_features``: ``FrameData -> [D, H', W']`` maps of a simulated 2D model.

    Every random choice of a frame (noise vector, blob) is drawn when the frame is registered, so the
    maps do not depend on the order or the number of times fusion asks for them.
    """

    def __init__(self, text_embeddings, params: FeatureParams, dataset: str, feature_hw=FEATURE_HW):
        self.text = torch.as_tensor(np.asarray(text_embeddings, np.float32))
        self.params, self.feature_hw = params, tuple(feature_hw)
        self.feat_dim = int(self.text.shape[1])
        self.conf, self.strength = confused_as(dataset_info(dataset))
        self.frames: Dict[str, dict] = {}

    def register(self, rng, name, feature_class, depth, fx, room_classes):
        C = self.text.shape[0]
        z = rng.normal(0, self.params.view_noise, C)
        blob = None
        if rng.random() < self.params.blob_probability:
            Hf, Wf = self.feature_hw
            seen = np.argwhere(_resize_nearest(feature_class, self.feature_hw) >= 0)
            if len(seen):
                r, c = seen[int(rng.integers(len(seen)))]
                d = float(depth[int(r * depth.shape[0] / Hf), int(c * depth.shape[1] / Wf)]) or 2.0
                radius_px = rng.uniform(*self.params.blob_radius) * fx * (Wf / depth.shape[1]) / d
                blob = (r, c, radius_px, int(rng.choice(room_classes)))
        iso_seed = int(rng.integers(2 ** 31))
        self.frames[name] = dict(feature_class=feature_class, z=z - z.mean(), blob=blob, iso_seed=iso_seed)

    def coefficients(self, name):
        """[C, H', W'] weights of the class embeddings in the frame's feature map (0 where nothing is hit)."""
        f = self.frames[name]
        C = self.text.shape[0]
        p = self.params
        fc = torch.as_tensor(_resize_nearest(f['feature_class'], self.feature_hw))
        hit = fc >= 0
        onehot = F.one_hot(fc.clamp(min=0), C).permute(2, 0, 1).float() * hit
        # boundary blur: the 2D model's receptive field mixes neighbouring classes
        blurred = F.avg_pool2d(onehot[None], BLUR_PIXELS, stride=1, padding=BLUR_PIXELS // 2,
                               count_include_pad=False)[0]
        coef = (1 - p.boundary_weight) * onehot + p.boundary_weight * blurred
        coef = coef * p.true_weight
        # systematic confusion toward the confusable class (t_conf of docs/synthetic_data.md), in every frame alike
        shift = torch.as_tensor(self.strength, dtype=torch.float32)[fc.clamp(min=0)] * p.confusion_scale * \
            p.true_weight * hit
        conf_idx = torch.as_tensor(self.conf)[fc.clamp(min=0)]
        coef.scatter_add_(0, conf_idx[None], shift[None])
        coef += torch.as_tensor(f['z'], dtype=torch.float32)[:, None, None] * hit
        if f['blob'] is not None:
            r, c, radius, k = f['blob']
            Hf, Wf = self.feature_hw
            rr, cc = torch.meshgrid(torch.arange(Hf), torch.arange(Wf), indexing='ij')
            w = (1 - torch.sqrt((rr - r) ** 2 + (cc - c) ** 2) / radius).clamp(min=0) * hit
            coef[k] += p.blob_strength * w
        return coef

    def __call__(self, frame: FrameData):
        f = self.frames[frame.name]
        coef = self.coefficients(frame.name)
        C, Hf, Wf = coef.shape
        feat = self.text.T @ coef.reshape(C, -1)                                  # [D, H'W']
        gen = torch.Generator().manual_seed(f['iso_seed'])
        feat += torch.randn(feat.shape, generator=gen) * (self.params.isotropic_noise / np.sqrt(self.feat_dim))
        return feat.reshape(-1, Hf, Wf)


def _resize_nearest(image, hw):
    H, W = image.shape
    Hf, Wf = hw
    rows = ((2 * np.arange(Hf) + 1) * H) // (2 * Hf)
    cols = ((2 * np.arange(Wf) + 1) * W) // (2 * Wf)
    return image[rows][:, cols]


def render_frames(room: Room, views: Optional[Sequence[int]] = None, image_hw=IMAGE_HW):
    """FrameData for the room's fusion cameras (or the given pose indices) plus the raw renderings."""
    views = room.fusion_views if views is None else views
    K = scannet_intrinsic(image_hw)
    frames, renders = [], []
    for v in views:
        r = render_frame(room, room.camera_poses[v], K, image_hw)
        frames.append(FrameData(color=r['color'], depth=r['depth'], intrinsic=K, pose=room.camera_poses[v],
                                name=f'{room.name}/{v}'))
        renders.append(r)
    return frames, renders


def rendered_fused_features(rng, room: Room, points, text_embeddings, params: FeatureParams = RENDERED_FEATURE_PARAMS,
                            image_hw=IMAGE_HW, feature_hw=FEATURE_HW, device='cpu'):
    """Render the fusion cameras, simulate the 2D model per frame and fuse with ``prep.fusion``.

    points [N,3]: the scene's (noisy) point coordinates, as fusion reads them from the .pth.
    Returns (feat float32 [M,D], mask_full bool [N], seconds dict(render, fuse)).
    """
    start = time.time()
    frames, renders = render_frames(room, image_hw=image_hw)
    source = SimulatedFeatureSource(text_embeddings, params, room.dataset, feature_hw)
    room_classes = np.unique(np.array([p.feature_class for p in room.primitives]))
    for frame, r in zip(frames, renders):
        source.register(rng, frame.name, r['feature_class'], r['depth'], frame.intrinsic[0, 0], room_classes)
    t_render = time.time() - start
    feat, mask = fuse_features(np.asarray(points, np.float64), frames, source, device=device)
    return feat.numpy(), mask.numpy(), dict(render=t_render, fuse=time.time() - start - t_render)
