"""A densely sampled box room, for checks that need real-scan point density (several points per 2 cm voxel).

The demo's synthetic rooms have about one point per 2 cm voxel, which barely exercises rules that act on
the points of a voxel (PLG's voxel representative, the voxeliser's rotation). This room is small (2.4 x
2.0 x 1.6 m, furniture of ScanNet classes) and sampled at ScanNet's point count (150k by default), so an
occupied 2 cm voxel holds several points, of several classes where objects touch. Its fused 2D features
imitate the real ones: the text embedding of the class, pulled toward a confusable class on some objects,
plus noise; points under furniture and a random tenth of the rest have no feature.

    coords, colors, labels, feat, mask, text = dense_room(seed=0, num_points=150_000)
"""
import numpy as np

from dataset.label_constants import SCANNET_LABELS_20

C, D = len(SCANNET_LABELS_20), 768
_ID = {name: i for i, name in enumerate(SCANNET_LABELS_20)}
# (class, box lo, box hi) in metres; the room shell is added separately
_FURNITURE = (
    ('bed', (0.0, 0.0, 0.0), (1.0, 1.9, 0.45)),
    ('table', (1.4, 0.8, 0.70), (2.2, 1.4, 0.75)),
    ('desk', (1.6, 0.0, 0.70), (2.4, 0.5, 0.75)),
    ('chair', (1.6, 1.45, 0.0), (2.0, 1.85, 0.45)),
    ('cabinet', (1.0, 1.6, 0.0), (1.4, 2.0, 0.9)),
    ('bookshelf', (2.1, 1.6, 0.0), (2.4, 2.0, 1.5)),
)
_CONFUSED_WITH = {'desk': 'table', 'table': 'desk', 'cabinet': 'otherfurniture', 'bookshelf': 'cabinet',
                  'bed': 'sofa', 'chair': 'sofa'}
ROOM = (2.4, 2.0, 1.6)
NOISE = 0.5  # norm of the per-point feature noise (the text embeddings have norm 1)


def _box_faces(lo, hi):
    """The six faces of a box as (origin, u, v, normal axis) parallelograms."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    d = hi - lo
    faces = []
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        for side in (lo[axis], hi[axis]):
            origin = lo.copy()
            origin[axis] = side
            u, v = np.zeros(3), np.zeros(3)
            u[a], v[b] = d[a], d[b]
            faces.append((origin, u, v, axis, side == hi[axis]))
    return faces


def text_embeddings(seed=0):
    """CLIP-like class embeddings: unit vectors with pairwise similarities around 0.7."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=D)
    t = 1.2 * common / np.linalg.norm(common) + rng.normal(size=(C, D)) / np.sqrt(D)
    return (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)


def dense_room(seed=0, num_points=150_000):
    """-> coords float32 [N, 3], colors float32 [N, 3] in [-1, 1], labels int64 [N], feat float32 [N, D]
    (the fused feature of every point; use it where ``mask``), mask bool [N], text float32 [C, D]."""
    rng = np.random.default_rng(seed)
    surfaces = []  # (origin, u, v, class, object id, is an underside)
    for face in _box_faces((0, 0, 0), ROOM):
        origin, u, v, axis, upper = face
        if axis == 2 and upper:
            continue  # no ceiling class in ScanNet-20
        surfaces.append((origin, u, v, 'floor' if axis == 2 else 'wall', 0, False))
    for obj, (name, lo, hi) in enumerate(_FURNITURE, start=1):
        for origin, u, v, axis, upper in _box_faces(lo, hi):
            surfaces.append((origin, u, v, name, obj, axis == 2 and not upper))
    areas = np.array([np.linalg.norm(np.cross(u, v)) for _, u, v, *_ in surfaces])
    counts = rng.multinomial(num_points, areas / areas.sum())
    coords, labels, objects, undersides = [], [], [], []
    for (origin, u, v, name, obj, under), n in zip(surfaces, counts):
        st = rng.random((n, 2))
        coords.append(origin + st[:, :1] * u + st[:, 1:] * v)
        labels.append(np.full(n, _ID[name]))
        objects.append(np.full(n, obj))
        undersides.append(np.full(n, under))
    order = rng.permutation(num_points)  # scanned meshes list their points in no particular order
    coords = np.concatenate(coords)[order].astype(np.float32)
    labels = np.concatenate(labels)[order].astype(np.int64)
    objects = np.concatenate(objects)[order]
    undersides = np.concatenate(undersides)[order]

    text = text_embeddings(seed)
    palette = rng.uniform(-0.8, 0.8, (C, 3))
    colors = np.clip(palette[labels] + rng.normal(0, 0.1, (num_points, 3)), -1, 1).astype(np.float32)
    # per object, how strongly the simulated 2D model confuses it with a related class (beyond 1 the related
    # class wins), and a per-object error direction shared by its points (a 2D model errs per region)
    pull = rng.uniform(0.0, 1.6, len(_FURNITURE) + 1)
    confused = np.array([_ID[_CONFUSED_WITH.get(SCANNET_LABELS_20[c], SCANNET_LABELS_20[c])] for c in range(C)])
    region = rng.standard_normal((len(_FURNITURE) + 1, D), dtype=np.float32) * float(NOISE / np.sqrt(D))
    feat = text[labels] + pull[objects, None].astype(np.float32) * text[confused[labels]] + region[objects]
    feat += rng.standard_normal((num_points, D), dtype=np.float32) * float(NOISE / np.sqrt(D))
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    mask = ~undersides & (rng.random(num_points) > 0.1)
    return coords, colors, labels, feat, mask, text


def openscene_subsets(mask, num_files=5, points_per_file=20_000, seed=0):
    """Masks of OpenScene's released train files: file k keeps the covered points among ``points_per_file``
    points drawn at random from all points of the scene (its fusion script's rule)."""
    rng = np.random.default_rng(seed)
    n = mask.shape[0]
    subsets = []
    for _ in range(num_files):
        chosen = np.zeros(n, bool)
        chosen[rng.choice(n, min(points_per_file, n), replace=False)] = True
        subsets.append(chosen & mask)
    return subsets
