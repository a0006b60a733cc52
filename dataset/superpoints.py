"""Superpoints: an over-segmentation of a scan into small pieces of one surface (docs/method.md, "PLG refinement").

A superpoint is a set of points that almost surely belong to one object: a patch of a wall, a table top, a chair
leg. PLG's refinement (``pipeline.pseudo_labels.refine_with_superpoints``) pools the pseudo-label scores of each
one. Two sources, both functions of the scan's own geometry:

- **ScanNet's released over-segmentation**, ``<scene>_vh_clean_2.0.010000.segs.json`` (``{"segIndices": [one
  segment id per mesh vertex], ...}``; the ``.pth`` points are the mesh's vertices in order), read when present:
  next to the 3D scene (``<data_root>/<split>/``), in ``superpoint_root``, or in ``<superpoint_root>/<scene>/``
  (the layout of ScanNet's ``scans/`` folder, so ``superpoint_root`` may be that folder);
- **a graph-based segmentation of the points** (``graph_segmentation``), Felzenszwalb & Huttenlocher's (2004) rule
  on a k-nearest-neighbour graph: edge weight ``w = (1 - |n_i . n_j|) + colour_weight ||rgb_i - rgb_j||`` (normals
  from a local PCA, colours in [0, 1]); two components merge along an edge when ``w <= min(Int(A) + k / |A|,
  Int(B) + k / |B|)`` (``Int``: the largest weight inside a component), then components under ``min_size`` points
  join their cheapest neighbour. Felzenszwalb-Huttenlocher take the edges one at a time in increasing weight; here
  they come in ``WEIGHT_BATCHES`` batches of increasing weight, each merged in vectorised Boruvka rounds (every
  component takes its cheapest edge of the batch at once), which changes which merges happen among edges of one
  batch but keeps the rule; ~2.3 s for a 150k-point scene on one core (``bench/superpoints.py``).

Computed segmentations are cached in ``superpoint_root`` as ``<scene>_superpoints.npy`` (int64 [N], ids 0..S-1)
with a provenance record (``superpoints_manifest.jsonl``, ``util/provenance.py``): reused while the 3D scene and
the parameters are unchanged, recomputed otherwise. ``python -m prep.superpoints`` fills a cache ahead of PLG.
"""
import json
import os
import time

import numpy as np

from util.io import atomic_np_save, safe_np_load
from util.provenance import OutputManifest

SEGS_SUFFIX = '_vh_clean_2.0.010000.segs.json'
CACHE_SUFFIX = '_superpoints.npy'
SOURCES = ('auto', 'scannet', 'graph')

# bump when a change of graph_segmentation changes the segments it returns: cached ones are then recomputed
GRAPH_VERSION = 1
WEIGHT_BATCHES = 64  # edge batches of increasing weight (graph_segmentation)
# the graph segmentation's parameters (chosen on the synthetic rooms; docs/method.md, "PLG refinement")
GRAPH_PARAMS = {'knn': 10, 'normal_knn': 16, 'k_thresh': 0.1, 'colour_weight': 0.5, 'min_size': 20}


# ----------------------------------------------------------------------------- ScanNet's segs.json
def segs_json_name(scene):
    """ScanNet's over-segmentation file of a scene: 'scene0000_00' -> 'scene0000_00_vh_clean_2.0.010000.segs.json'."""
    return scene + SEGS_SUFFIX


def compact_ids(segment_ids):
    """Any integer ids -> int64 ids 0..S-1 (in the order of the sorted original ids)."""
    _, inverse = np.unique(np.asarray(segment_ids).ravel(), return_inverse=True)
    return inverse.astype(np.int64)


def read_segs_json(path, num_points=None):
    """ScanNet's ``segIndices`` of a ``.segs.json`` file as compact int64 ids [N] (0..S-1); ``num_points``: the
    scene's point count, which must match (one id per mesh vertex)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"superpoints '{path}' is not valid JSON: {err}") from err
    if not isinstance(data, dict) or 'segIndices' not in data:
        raise ValueError(f"superpoints '{path}': expected a JSON object with the key 'segIndices' (ScanNet's "
                         f"over-segmentation), found {type(data).__name__}"
                         + (f" with keys {sorted(data)[:5]}" if isinstance(data, dict) else ''))
    ids = data['segIndices']
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"superpoints '{path}': 'segIndices' must be a list of integers (one per mesh vertex)")
    if not ids:
        raise ValueError(f"superpoints '{path}': 'segIndices' is empty")
    if num_points is not None and len(ids) != num_points:
        raise ValueError(f"superpoints '{path}' have {len(ids)} segment ids but the 3D scene has {num_points} points: "
                         f"the file belongs to another mesh (ScanNet's ids are per vertex of <scene>_vh_clean_2.ply, "
                         f"in the order of the .pth points)")
    return compact_ids(np.asarray(ids, dtype=np.int64))


def write_segs_json(path, segment_ids, scene, params=None):
    """Write segment ids in ScanNet's ``.segs.json`` layout (``sceneId``, ``segIndices``, ``params``), atomically."""
    from util.io import atomic_write_text
    body = {'params': params or {}, 'sceneId': scene, 'segIndices': [int(i) for i in np.asarray(segment_ids).ravel()]}
    atomic_write_text(path, json.dumps(body))


# ----------------------------------------------------------------------------- the graph segmentation
def estimate_normals(coords, k=16, neighbours=None):
    """Unit normals [N, 3] from a PCA of each point's k nearest neighbours (the eigenvector of the smallest
    eigenvalue; its sign is arbitrary). ``neighbours``: int [N, >= k] indices from a k-d tree query, if known."""
    coords = np.asarray(coords, np.float64)
    if neighbours is None:
        from scipy.spatial import cKDTree
        _, neighbours = cKDTree(coords).query(coords, k=min(k, len(coords)))
        neighbours = neighbours.reshape(len(coords), -1)
    nb = coords[neighbours[:, :k]]                       # [N, k, 3]
    nb = nb - nb.mean(axis=1, keepdims=True)
    cov = np.matmul(nb.transpose(0, 2, 1), nb)         # [N, 3, 3] scatter matrices
    _, vectors = np.linalg.eigh(cov)                     # ascending eigenvalues
    return vectors[:, :, 0]


def _knn_graph(coords, colors, knn, normal_knn, colour_weight):
    """Undirected k-NN edges (u, v, w) sorted by weight (ties by (u, v)), and the normals."""
    from scipy.spatial import cKDTree
    n = len(coords)
    k = min(max(knn, normal_knn) + 1, n)
    _, idx = cKDTree(coords).query(coords, k=k)
    idx = idx.reshape(n, -1)
    normals = estimate_normals(coords, normal_knn, idx)
    u = np.repeat(np.arange(n, dtype=np.int64), min(knn, k - 1))
    v = idx[:, 1:knn + 1].ravel().astype(np.int64)
    a, b = np.minimum(u, v), np.maximum(u, v)
    keep = a != b                                        # duplicate points can list another point as 'self'
    key = np.unique(a[keep] * n + b[keep])
    a, b = key // n, key % n
    w = 1.0 - np.abs(np.einsum('ij,ij->i', normals[a], normals[b]))
    if colors is not None and colour_weight:
        w = w + colour_weight * np.linalg.norm(colors[a] - colors[b], axis=1)
    order = np.argsort(w, kind='stable')                 # key order breaks ties: deterministic
    return a[order], b[order], w[order], normals


def _merge(comp, size, internal, ea, eb, chosen, weights):
    """Union the components joined by the edges ``chosen`` (indices into ea/eb) -> the relabelled arrays."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    roots = np.flatnonzero(size > 0)
    m = len(comp)
    ca, cb = comp[ea[chosen]], comp[eb[chosen]]
    graph = coo_matrix((np.ones(len(chosen)), (ca, cb)), shape=(m, m))
    _, label = connected_components(graph, directed=False)
    new_size = np.bincount(label[roots], weights=size[roots], minlength=m)
    new_internal = np.zeros(m)
    np.maximum.at(new_internal, label[roots], internal[roots])
    np.maximum.at(new_internal, label[ca], weights)
    # keep the component ids as indices of [0, m): relabel to the new labels
    return label[comp], new_size, new_internal


def _cheapest_edges(ca, cb, m):
    """For every component, the index of its cheapest outgoing edge (edges sorted by weight), or -1."""
    e = len(ca)
    best = np.full(m, e, np.int64)
    order = np.arange(e, dtype=np.int64)
    np.minimum.at(best, ca, order)
    np.minimum.at(best, cb, order)
    best[best == e] = -1
    return best


def graph_segmentation(coords, colors=None, *, knn=GRAPH_PARAMS['knn'], normal_knn=GRAPH_PARAMS['normal_knn'],
                       k_thresh=GRAPH_PARAMS['k_thresh'], colour_weight=GRAPH_PARAMS['colour_weight'],
                       min_size=GRAPH_PARAMS['min_size'], timings=None):
    """Superpoints of a point cloud (module docstring) -> int64 [N] ids 0..S-1.

    coords [N, 3] metres; colors [N, 3] in [-1, 1] (as the .pth files store them) or None (geometry only).
    ``k_thresh``: Felzenszwalb-Huttenlocher's k (larger = larger segments); ``min_size``: segments under it join
    their cheapest neighbour. ``timings``: a dict that receives the seconds of each step.
    """
    t0 = time.perf_counter()
    coords = np.asarray(coords, np.float64)
    n = len(coords)
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return np.zeros(1, np.int64)
    rgb = None if colors is None else (np.asarray(colors, np.float64) + 1.0) / 2.0
    ea, eb, w, _ = _knn_graph(coords, rgb, knn, normal_knn, colour_weight)
    t1 = time.perf_counter()
    comp = np.arange(n, dtype=np.int64)                  # component of each point (an id in [0, n))
    size = np.ones(n)
    internal = np.zeros(n)                               # Int(C): the largest weight merged into C
    rounds = 0
    # Felzenszwalb-Huttenlocher considers the edges in increasing weight, each once: here in batches of
    # increasing weight, each batch merged in Boruvka rounds (every component takes its cheapest edge of the batch)
    bounds = np.linspace(0, len(w), min(WEIGHT_BATCHES, len(w)) + 1).astype(np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        ba, bb, bw = ea[lo:hi], eb[lo:hi], w[lo:hi]
        while True:
            ca, cb = comp[ba], comp[bb]
            live = ca != cb                              # edges inside a component never matter again
            if not live.any():
                break
            ba, bb, bw, ca, cb = ba[live], bb[live], bw[live], ca[live], cb[live]
            best = _cheapest_edges(ca, cb, n)
            cand = np.unique(best[best >= 0])
            a, b = ca[cand], cb[cand]
            tau = np.minimum(internal[a] + k_thresh / size[a], internal[b] + k_thresh / size[b])
            chosen = cand[bw[cand] <= tau]
            if not len(chosen):
                break
            comp, size, internal = _merge(comp, size, internal, ba, bb, chosen, bw[chosen])
            rounds += 1
    t2 = time.perf_counter()
    # small components join their cheapest neighbour (FH's post-processing), in rounds too
    live = np.ones(len(w), bool)
    while min_size > 1:
        ea, eb, w = ea[live], eb[live], w[live]
        ca, cb = comp[ea], comp[eb]
        if not len(w):
            break
        small = size < min_size
        touching = small[ca] | small[cb]
        if not touching.any():
            break
        sub = np.flatnonzero(touching)
        best = _cheapest_edges(ca[sub], cb[sub], n)
        pick = best[small & (best >= 0)]
        if not len(pick):
            break
        chosen = sub[np.unique(pick)]
        comp, size, internal = _merge(comp, size, internal, ea, eb, chosen, w[chosen])
        live = comp[ea] != comp[eb]
    if timings is not None:
        timings.update(graph=t1 - t0, merge=t2 - t1, small=time.perf_counter() - t2, rounds=rounds)
    return compact_ids(comp)


# ----------------------------------------------------------------------------- finding and caching
def cache_path(root, scene):
    return os.path.join(root, scene + CACHE_SUFFIX)


def find_segs_json(scene, scene_path, superpoint_root=''):
    """The ScanNet ``.segs.json`` of a scene, or None: next to the 3D scene, in ``superpoint_root``, or in
    ``<superpoint_root>/<scene>/`` (ScanNet's scans layout)."""
    name = segs_json_name(scene)
    places = [os.path.join(os.path.dirname(os.fspath(scene_path)), name)]
    if superpoint_root:
        places += [os.path.join(superpoint_root, name), os.path.join(superpoint_root, scene, name)]
    return next((p for p in places if os.path.isfile(p)), None)


class SuperpointSource:
    """Where a scene's superpoints come from, with the cache of computed ones (module docstring).

        with SuperpointSource(root, source='auto') as sp:
            path, kind = sp.locate(scene, scene_path, coords, colors)   # computes and caches when needed
            ids = sp.load(path, num_points)

    ``source``: ``auto`` (ScanNet's segs.json when present, else the graph segmentation), ``scannet`` (the
    segs.json, an error when missing) or ``graph`` (always the graph segmentation). ``params``: the graph
    segmentation's parameters (default ``GRAPH_PARAMS``). ``log``: a function that takes one line. ``lock``: hold
    the cache folder's lock (``util.run_folder.RunFolder``) from its first use on, so two runs never write one
    cache at once (False when the caller already holds that folder).
    """

    def __init__(self, root, source='auto', params=None, log=None, lock=True):
        if source not in SOURCES:
            raise ValueError(f"superpoint source must be one of {', '.join(SOURCES)}, found {source!r}")
        if not root:
            raise ValueError("superpoint_root is empty: give the folder where computed superpoints are cached "
                             "(and ScanNet's segs.json files may lie), e.g. ${exp_root}/superpoints")
        self.root, self.source = root, source
        self.params = dict(GRAPH_PARAMS, **(params or {}))
        self.log = log or (lambda line: None)
        self._manifest = None
        self._lock = None
        self.lock = lock
        self.counts = {'segs.json': 0, 'cached': 0, 'computed': 0}
        self.seconds = 0.0

    def settings(self):
        return {'stage': 'superpoints', 'method': 'graph', 'version': GRAPH_VERSION, **self.params}

    @property
    def manifest(self):
        if self._manifest is None:
            os.makedirs(self.root, exist_ok=True)
            if self.lock:
                from util.run_folder import RunFolder
                self._lock = RunFolder(self.root, 'superpoints')
                self._lock.acquire()
            self._manifest = OutputManifest(self.root, 'superpoints', self.settings())
        return self._manifest

    def locate(self, scene, scene_path, coords=None, colors=None, overwrite=False):
        """-> (path, kind): the file holding the scene's superpoints, ``kind`` 'segs.json', 'cached' or
        'computed'. A graph segmentation is computed (from ``coords`` / ``colors``, else the scene file) and
        cached when the cache has none that is current."""
        if self.source != 'graph':
            found = find_segs_json(scene, scene_path, self.root)
            if found:
                self.counts['segs.json'] += 1
                return found, 'segs.json'
            if self.source == 'scannet':
                raise FileNotFoundError(
                    f"no ScanNet over-segmentation '{segs_json_name(scene)}' for scene '{scene}' next to "
                    f"'{scene_path}' or in superpoint_root '{self.root}' (or its '{scene}/' folder): copy them from "
                    f"ScanNet's scans/<scene>/, or use superpoint_source auto / graph")
        out = cache_path(self.root, scene)
        current, why = self.manifest.check(scene, [scene_path], [out])
        if current and not overwrite:
            self.counts['cached'] += 1
            return out, 'cached'
        if os.path.exists(out) and not overwrite:
            self.log(f"superpoints of '{scene}': recomputing: {why}")
        if coords is None:
            from dataset.formats import load_scene_3d
            pt = load_scene_3d(scene_path)
            coords, colors = pt.coords, pt.colors
        start = time.perf_counter()
        ids = graph_segmentation(coords, colors, **self.params)
        self.seconds += time.perf_counter() - start
        atomic_np_save(out, ids)
        self.manifest.record(scene, [scene_path], [out])
        self.counts['computed'] += 1
        return out, 'computed'

    @staticmethod
    def load(path, num_points=None):
        """Superpoint ids (int64 [N], 0..S-1) from a segs.json or a cached .npy file."""
        if path.endswith('.json'):
            return read_segs_json(path, num_points)
        ids = safe_np_load(path, 'superpoints', 'recompute them (python -m prep.superpoints)')
        if ids.ndim != 1 or (num_points is not None and ids.shape[0] != num_points) or ids.dtype.kind not in 'iu':
            raise ValueError(f"superpoints '{path}': expected integer ids of shape [{num_points or 'N'}], found "
                             f"{ids.dtype} {list(ids.shape)}; delete the file to recompute it")
        return compact_ids(ids)

    def close(self):
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
