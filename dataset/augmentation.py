"""Point-cloud augmentation as OpenScene's training loaders use it (after BPNet / Chris Choy's
SpatioTemporalSegmentation).

Geometry transforms move coordinates only; colour transforms change feature columns 0:3 only; no
transform reorders or drops points, so labels stay aligned with their points. Colours are in 0-255
here (the loaders convert from the files' [-1, 1]). Every transform draws from an explicit
``numpy.random.Generator`` passed as ``rng`` (``None`` -> see ``dataset.voxelizer.resolve_rng``),
instead of upstream's global ``random`` / ``np.random`` state, so loaders are reproducible per item.
The probabilities and ranges are upstream's.
"""
import numpy as np
import scipy.interpolate
import scipy.ndimage

from dataset.voxelizer import resolve_rng


# ----------------------------------------------------------------------------- colour transforms
class ChromaticTranslation:
    """With probability 0.95 add one random RGB offset in +-255 * ratio to every point, then clip to 0-255."""

    def __init__(self, trans_range_ratio=1e-1):
        self.trans_range_ratio = trans_range_ratio

    def __call__(self, coords, feats, labels, rng=None):
        rng = resolve_rng(rng)
        if rng.random() < 0.95:
            offset = (rng.random((1, 3)) - 0.5) * 255 * 2 * self.trans_range_ratio
            feats[:, :3] = np.clip(feats[:, :3] + offset, 0, 255)
        return coords, feats, labels


class ChromaticAutoContrast:
    """With probability 0.2 blend the colours with their per-channel min-max stretch to 0-255.

    Deviation from upstream: a channel with max == min is left as it is (upstream divides by zero and
    produces NaN colours, e.g. for scenes stored without colour).
    """

    def __init__(self, randomize_blend_factor=True, blend_factor=0.5):
        self.randomize_blend_factor = randomize_blend_factor
        self.blend_factor = blend_factor

    def __call__(self, coords, feats, labels, rng=None):
        rng = resolve_rng(rng)
        if rng.random() < 0.2:
            lo = feats.min(0, keepdims=True)
            hi = feats.max(0, keepdims=True)
            span = hi - lo
            flat = span == 0
            stretched = np.where(flat, feats, (feats - lo) * (255.0 / np.where(flat, 1.0, span)))
            blend = rng.random() if self.randomize_blend_factor else self.blend_factor
            feats = (1 - blend) * feats + blend * stretched
        return coords, feats, labels


class ChromaticJitter:
    """With probability 0.95 add Gaussian noise (std * 255) to each point's RGB, then clip to 0-255."""

    def __init__(self, std=0.01):
        self.std = std

    def __call__(self, coords, feats, labels, rng=None):
        rng = resolve_rng(rng)
        if rng.random() < 0.95:
            noise = rng.standard_normal((feats.shape[0], 3)) * (self.std * 255)
            feats[:, :3] = np.clip(feats[:, :3] + noise, 0, 255)
        return coords, feats, labels


def rgb_to_hsv(rgb):
    """Vectorised colorsys.rgb_to_hsv for 0-255 input: h, s in [0, 1), v in 0-255."""
    rgb = rgb.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = rgb.max(-1), rgb.min(-1)
    hsv = np.zeros_like(rgb)
    hsv[..., 2] = maxc
    chroma = maxc - minc
    ok = chroma != 0
    safe_chroma = np.where(ok, chroma, 1.0)
    hsv[..., 1] = np.where(ok, chroma / np.where(maxc == 0, 1.0, maxc), 0.0)
    rc, gc, bc = (maxc - r) / safe_chroma, (maxc - g) / safe_chroma, (maxc - b) / safe_chroma
    hue = np.select([r == maxc, g == maxc], [bc - gc, 2.0 + rc - bc], default=4.0 + gc - rc)
    hsv[..., 0] = np.where(ok, (hue / 6.0) % 1.0, 0.0)
    return hsv


def hsv_to_rgb(hsv):
    """Vectorised colorsys.hsv_to_rgb; truncates to uint8 as upstream does."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = (h * 6.0).astype(np.uint8)
    f = h * 6.0 - sector
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    sector = sector % 6
    cond = [s == 0.0, sector == 1, sector == 2, sector == 3, sector == 4, sector == 5]
    rgb = np.empty_like(hsv)
    rgb[..., 0] = np.select(cond, [v, q, p, p, t, v], default=v)
    rgb[..., 1] = np.select(cond, [v, v, v, q, p, p], default=t)
    rgb[..., 2] = np.select(cond, [v, p, t, v, v, q], default=p)
    return rgb.astype(np.uint8)


class HueSaturationTranslation:
    """Always: shift hue by U(-hue_max, hue_max) (cyclic) and scale saturation by 1 + U(-sat_max, sat_max)."""

    def __init__(self, hue_max, saturation_max):
        self.hue_max = hue_max
        self.saturation_max = saturation_max

    def __call__(self, coords, feats, labels, rng=None):
        rng = resolve_rng(rng)
        hsv = rgb_to_hsv(feats[:, :3])
        hue_shift = (rng.random() - 0.5) * 2 * self.hue_max
        sat_ratio = 1 + (rng.random() - 0.5) * 2 * self.saturation_max
        hsv[:, 0] = np.remainder(hsv[:, 0] + hue_shift + 1, 1)
        hsv[:, 1] = np.clip(hsv[:, 1] * sat_ratio, 0, 1)
        feats[:, :3] = np.clip(hsv_to_rgb(hsv), 0, 255)
        return coords, feats, labels


# ----------------------------------------------------------------------------- geometry transforms
class RandomHorizontalFlip:
    """With probability 0.95, mirror each horizontal axis (not ``upright_axis``) with probability 0.5.

    A mirrored axis maps c -> max(c) - c, so voxel coordinates stay non-negative.
    """

    def __init__(self, upright_axis='z', is_temporal=False):
        self.dims = 4 if is_temporal else 3
        self.upright_axis = {'x': 0, 'y': 1, 'z': 2}[upright_axis.lower()]
        self.horizontal_axes = sorted(set(range(self.dims)) - {self.upright_axis})

    def __call__(self, coords, feats, labels, rng=None):
        rng = resolve_rng(rng)
        if rng.random() < 0.95:
            for axis in self.horizontal_axes:
                if rng.random() < 0.5:
                    coords[:, axis] = coords[:, axis].max() - coords[:, axis]
        return coords, feats, labels


class ElasticDistortion:
    """With probability 0.95, displace points by smoothed noise, once per (granularity, magnitude) pair.

    For each pair: Gaussian noise on a grid of spacing ``granularity`` (metres) covering the scene,
    smoothed twice by a 3-tap box filter along each axis, trilinearly interpolated at the points and
    scaled by ``magnitude``. Input and output: coords [N, 3] only (applied before voxelisation).
    """

    def __init__(self, distortion_params):
        self.distortion_params = distortion_params

    @staticmethod
    def elastic_distortion(coords, granularity, magnitude, rng):
        box = np.ones(3, np.float32) / 3
        coords_min = coords.min(0)
        noise_dim = ((coords - coords_min).max(0) // granularity).astype(int) + 3
        noise = rng.standard_normal((*noise_dim, 3)).astype(np.float32)
        for _ in range(2):
            for axis in range(3):
                noise = scipy.ndimage.convolve1d(noise, box, axis=axis, mode='constant', cval=0)
        axes = [np.linspace(lo, hi, n) for lo, hi, n in
                zip(coords_min - granularity, coords_min + granularity * (noise_dim - 2), noise_dim)]
        interp = scipy.interpolate.RegularGridInterpolator(axes, noise, bounds_error=False, fill_value=0)
        return coords + interp(coords) * magnitude

    def __call__(self, coords, rng=None):
        rng = resolve_rng(rng)
        if self.distortion_params is not None and rng.random() < 0.95:
            for granularity, magnitude in self.distortion_params:
                coords = self.elastic_distortion(coords, granularity, magnitude, rng)
        return coords


class RandomDropout:
    """Drop a random ``dropout_ratio`` of the points with probability ``dropout_application_ratio``.

    Not used by OpenScene's / 3DSS-VLG's loaders (kept for completeness); it changes the point count,
    so use it only before voxelisation and only where no per-point file (features, pseudo labels)
    must stay aligned.
    """

    def __init__(self, dropout_ratio=0.2, dropout_application_ratio=0.5):
        self.dropout_ratio = dropout_ratio
        self.dropout_application_ratio = dropout_application_ratio

    def __call__(self, coords, feats, labels, rng=None):
        rng = resolve_rng(rng)
        if rng.random() < self.dropout_application_ratio:
            n = len(coords)
            keep = np.sort(rng.choice(n, int(n * (1 - self.dropout_ratio)), replace=False))
            return coords[keep], feats[keep], labels[keep]
        return coords, feats, labels


class Compose:
    """Apply transforms in order; every transform gets the same Generator (drawn from in sequence)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, *args, rng=None):
        rng = resolve_rng(rng)
        for transform in self.transforms:
            args = transform(*args, rng=rng)
            if not isinstance(args, tuple):
                args = (args,)
        return args[0] if len(args) == 1 else args
