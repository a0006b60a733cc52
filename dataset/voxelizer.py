"""Voxelisation of point clouds: ``sparse_quantize`` and OpenScene's ``Voxelizer``.

OpenScene (after BPNet) voxelises every scene on the CPU before it reaches the sparse 3D network:
points are (optionally) rotated / scaled, divided by the voxel size, floored, shifted so the
smallest voxel coordinate is 0, and one point per occupied voxel is kept. The kept point is the
*first* point (lowest index) falling into the voxel: upstream's ``voxelization_utils.sparse_quantize``
calls ``np.unique(key, return_index=True)``, which returns first occurrences, and ``Voxelizer``
then indexes coords, feats *and labels* with those indices. So a voxel holding points of several
classes gets the label of its first point (no voting, no 'ignore on collision'; MinkowskiEngine's
label-aware ``quantize_label`` path is never reached because upstream passes no labels to the
quantiser). This module reproduces exactly that rule.
"""
import numpy as np

from dataset.label_constants import IGNORE_LABEL


def _voxel_keys(voxel_coords):
    """Pack integer voxel coordinates [N, 3] into one int64 key per point (row-major ravel)."""
    shifted = voxel_coords - voxel_coords.min(0)
    extent = shifted.max(0) + 1
    if float(extent[0]) * float(extent[1]) * float(extent[2]) >= 2 ** 62:
        return None  # cannot be packed into int64: caller uses row-wise unique instead
    return (shifted[:, 0] * extent[1] + shifted[:, 1]) * extent[2] + shifted[:, 2]


def sparse_quantize(coords, voxel_size):
    """Voxelise points: one voxel per occupied cell, represented by its first point.

    Args:
        coords: float array [N, 3] (metres, any origin; negative values are fine).
        voxel_size: side length of a voxel (same unit as ``coords``).

    Returns:
        voxel_coords: int32 [V, 3] = ``floor(coords / voxel_size)`` of each occupied voxel.
        kept_index: int64 [V], the lowest point index inside each voxel (as upstream's
            ``np.unique(..., return_index=True)``), so ``voxel_coords == floor(coords[kept_index] / voxel_size)``.
        inverse: int64 [N], point -> row of its voxel; ``voxel_coords[inverse]`` reproduces the
            voxel of every point.
    Voxels are ordered by their packed (x, y, z) key, i.e. lexicographically by voxel coordinate.
    """
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"sparse_quantize: expected coords of shape [N, 3], found {list(coords.shape)}")
    if not voxel_size > 0:
        raise ValueError(f"sparse_quantize: voxel_size must be positive, found {voxel_size}")
    if coords.shape[0] == 0:
        return np.zeros((0, 3), np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not np.isfinite(coords).all():
        raise ValueError("sparse_quantize: coords contain NaN or inf")
    discrete = np.floor(coords / voxel_size).astype(np.int64)
    keys = _voxel_keys(discrete)
    if keys is not None:
        # return_index makes numpy use a stable sort, so the index is the first occurrence
        _, kept_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
    else:
        _, kept_index, inverse = np.unique(discrete, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    return discrete[kept_index].astype(np.int32), kept_index.astype(np.int64), inverse.astype(np.int64)


def resolve_rng(rng=None):
    """The Generator to draw augmentation from.

    ``None`` -> a Generator seeded from numpy's global legacy RNG, so ``util.misc.set_seed`` still makes
    a run reproducible; pass an explicit Generator (the loaders do: one per item) for determinism that
    does not depend on call order or DataLoader workers.
    """
    if rng is None:
        return np.random.default_rng(np.random.randint(0, 2 ** 31 - 1))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, found {type(rng).__name__}")
    return rng


def axis_rotation(axis, theta):
    """Right-handed rotation by ``theta`` about coordinate axis ``axis`` (0=x, 1=y, 2=z).

    Same matrix as upstream's ``expm(cross(I, e_axis * theta))``, written in closed form.
    """
    c, s = np.cos(theta), np.sin(theta)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


class Voxelizer:
    """OpenScene's (BPNet's) voxeliser: random rotation / scale, floor to the voxel grid, one point per voxel.

    Args:
        voxel_size: voxel side length in metres (0.02 in 3DSS-VLG, 0.05 OpenScene's default).
        clip_bound: None, or ((xmin, xmax), (ymin, ymax), (zmin, zmax)) relative to the scene centre;
            points outside are dropped (upstream's loaders pass None).
        use_augmentation: apply the random rotation / scale (and translation when clipping).
            Upstream's loaders set it True in every split, so even evaluation voxelises a randomly
            rotated scene; the loaders here do the same.
        scale_augmentation_bound: e.g. (0.9, 1.1): one isotropic scale factor drawn uniformly.
        rotation_augmentation_bound: one (lo, hi) or None per axis, e.g. +-pi/64 about x and y and a
            full turn about z; the three axis rotations are multiplied in a random order as upstream.
        translation_augmentation_ratio_bound: per axis (lo, hi) ratio of the scene extent that shifts the
            clip centre; only used together with ``clip_bound`` (as upstream).
        ignore_label: label value of unannotated points (kept for upstream's signature, unused: a voxel's
            label is its first point's label, whatever it is).
    """

    def __init__(self, voxel_size=1, clip_bound=None, use_augmentation=False, scale_augmentation_bound=None,
                 rotation_augmentation_bound=None, translation_augmentation_ratio_bound=None,
                 ignore_label=IGNORE_LABEL):
        if not voxel_size > 0:
            raise ValueError(f"Voxelizer: voxel_size must be positive, found {voxel_size}")
        self.voxel_size = voxel_size
        self.clip_bound = clip_bound
        self.use_augmentation = use_augmentation
        self.scale_augmentation_bound = scale_augmentation_bound
        self.rotation_augmentation_bound = rotation_augmentation_bound
        self.translation_augmentation_ratio_bound = translation_augmentation_ratio_bound
        if rotation_augmentation_bound is not None and len(rotation_augmentation_bound) != 3:
            raise ValueError("Voxelizer: rotation_augmentation_bound needs one entry (bound or None) per axis")

    def get_transformation_matrix(self, rng):
        """(voxelisation 4x4 = scale / voxel_size on the diagonal, rotation 4x4)."""
        voxelization_matrix, rotation_matrix = np.eye(4), np.eye(4)
        if self.use_augmentation and self.rotation_augmentation_bound is not None:
            rots = []
            for axis, bound in enumerate(self.rotation_augmentation_bound):
                theta = rng.uniform(*bound) if bound is not None else 0.0
                rots.append(axis_rotation(axis, theta))
            order = rng.permutation(3)  # random axis order, so no axis is always applied last
            rotation_matrix[:3, :3] = rots[order[0]] @ rots[order[1]] @ rots[order[2]]
        scale = 1.0 / self.voxel_size
        if self.use_augmentation and self.scale_augmentation_bound is not None:
            scale *= rng.uniform(*self.scale_augmentation_bound)
        np.fill_diagonal(voxelization_matrix[:3, :3], scale)
        return voxelization_matrix, rotation_matrix

    def clip(self, coords, center=None, trans_aug_ratio=None):
        """Boolean mask of the points inside ``clip_bound`` around the (shifted) scene centre."""
        bound_min = coords.min(0).astype(np.float64)
        bound_size = coords.max(0).astype(np.float64) - bound_min
        center = bound_min + 0.5 * bound_size if center is None else np.array(center, np.float64)
        if trans_aug_ratio is not None:
            center = center + np.multiply(trans_aug_ratio, bound_size)
        lim = self.clip_bound
        inside = np.ones(len(coords), bool)
        for d in range(3):
            inside &= (coords[:, d] >= lim[d][0] + center[d]) & (coords[:, d] < lim[d][1] + center[d])
        return inside

    def voxelize(self, coords, feats, labels, center=None, return_ind=False, rng=None):
        """Voxelise one scene.

        Args:
            coords: float [N, 3]; feats: [N, F]; labels: [N] or None; center: clip centre or None;
            return_ind: also return the kept point indices; rng: numpy Generator (see ``resolve_rng``).
        Returns:
            (voxel_coords int32 [V, 3] (>= 0, min 0 per axis), feats [V, F], labels [V] (the first point's
            label, upstream's rule; None if labels is None), inverse int64 [N'] (point -> voxel row),
            [kept_index int64 [V] if return_ind]). Indices refer to the input points; when clipping
            drops points (clip_bound set) they refer to the clipped point list, as upstream.
        """
        coords = np.asarray(coords)
        if coords.ndim != 2 or coords.shape[1] != 3 or coords.shape[0] == 0:
            raise ValueError(f"voxelize: expected coords of shape [N>0, 3], found {list(coords.shape)}")
        if feats.shape[0] != coords.shape[0] or (labels is not None and len(labels) != coords.shape[0]):
            raise ValueError(f"voxelize: coords ({coords.shape[0]}), feats ({feats.shape[0]}) and labels "
                             f"({None if labels is None else len(labels)}) differ in length")
        rng = resolve_rng(rng)
        if self.clip_bound is not None:
            trans_aug_ratio = np.zeros(3)
            if self.use_augmentation and self.translation_augmentation_ratio_bound is not None:
                for d, bound in enumerate(self.translation_augmentation_ratio_bound):
                    trans_aug_ratio[d] = rng.uniform(*bound)
            inside = self.clip(coords, center, trans_aug_ratio)
            if inside.any():  # upstream keeps the whole scene when the clip would empty it
                coords, feats = coords[inside], feats[inside]
                labels = labels[inside] if labels is not None else None

        voxelization_matrix, rotation_matrix = self.get_transformation_matrix(rng)
        transform = voxelization_matrix
        if self.use_augmentation:
            transform = rotation_matrix @ transform
        # upstream floors the transformed points, shifts them to start at 0 and quantises with size 1
        grid = np.floor(coords.astype(np.float64) @ transform[:3, :3].T + transform[:3, 3])
        grid -= grid.min(0)
        voxel_coords, kept_index, inverse = sparse_quantize(grid, 1.0)
        feats = feats[kept_index]
        if labels is not None:
            labels = labels[kept_index]
        if feats.ndim == 2 and feats.shape[1] > 6:
            # columns 3:6 are normals in upstream's convention: rotate them with the points
            feats = feats.copy()
            feats[:, 3:6] = feats[:, 3:6] @ rotation_matrix[:3, :3].T
        if return_ind:
            return voxel_coords, feats, labels, inverse, kept_index
        return voxel_coords, feats, labels, inverse
