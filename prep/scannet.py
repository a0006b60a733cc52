"""ScanNet v2 preprocessing: raw scans -> OpenScene's 3D ``.pth`` files and exported RGB-D frames.

3D (as OpenScene's ``preprocess_3d_scannet.py``): for each scan folder ``<scans>/<scene>/`` read
``<scene>_vh_clean_2.ply`` (vertices x y z red green blue) and ``<scene>_vh_clean_2.labels.ply`` (vertex
property ``label`` = NYU40 id, as ScanNet documents it), map NYU40 ids to the 20 benchmark classes of
``dataset/label_constants.py`` (all other ids, and 0 = unannotated, -> 255) and write
``<out>/<scene>_vh_clean_2.pth`` = (coords float32 [N,3], colors float32 [N,3] = rgb / 127.5 - 1, labels).
The NYU40 -> benchmark table is built from the ``nyu40id`` / ``nyu40class`` columns of
``scannetv2-labels.combined.tsv`` when the user gives it (``--label_map_file``), else from ScanNet's benchmark
id list (1-12, 14, 16, 24, 28, 33, 34, 36, 39), which the tsv reproduces. A malformed PLY, or a vertex with NaN /
Inf coordinates or a colour outside 0..255, is refused naming the file before anything is written.

``--labelset scannet200`` writes ScanNet200's 200 classes instead (label i = the i-th ScanNet200 class of
``label_constants.SCANNET200_LABELS``, others 255). The labels PLY holds NYU40 ids only, so these come, as in
ScanNet200's own preprocessing, from the instance annotation: ``<scene>.aggregation.json`` (``segGroups``, each a
raw category ``label`` and its ``segments``) over ``<scene>_vh_clean_2.0.010000.segs.json`` (``segIndices``, the
segment of each vertex), the raw category mapped through the tsv's ``id`` column (the ScanNet200 id space:
``raw_category`` -> ``id``), so ``--label_map_file`` is required. A vertex in no group is 255; where groups
overlap the later one wins (as ScanNet200's script).

2D (as OpenScene's ``preprocess_2d_scannet.py``): read ``<scene>.sens`` (ScanNet's SensorData format, version 4)
and export every ``frame_skip``-th frame (20) resized to 320x240 (nearest, as upstream):
``<out>/<scene>/color/<i>.jpg``, ``depth/<i>.png`` (uint16 millimetres), ``pose/<i>.txt`` (4x4 camera-to-world),
``intrinsic/intrinsic_depth.txt`` (the .sens depth intrinsics rescaled to the export size; fusion uses
OpenScene's fixed constants unless told otherwise) and ``<out>/intrinsics.txt`` (those constants, as upstream).

CLI::

    python -m prep.scannet 3d --scans_dir /data/scannet/scans --scene_list scannetv2_train.txt \\
        --out_dir data/scannet_3d/train --label_map_file /data/scannet/scannetv2-labels.combined.tsv
    python -m prep.scannet 3d --labelset scannet200 --scans_dir /data/scannet/scans --scene_list scannetv2_val.txt \\
        --out_dir data/scannet200_3d/val --label_map_file /data/scannet/scannetv2-labels.combined.tsv
    python -m prep.scannet frames --scans_dir /data/scannet/scans --out_dir data/scannet_2d
"""
import argparse
import csv
import glob
import io
import json
import os
import struct
import zlib
from typing import Dict, Iterator, List, Optional

import numpy as np

from dataset.label_constants import IGNORE_LABEL, SCANNET200_IDS, SCANNET200_LABELS, SCANNET_LABELS_20
from prep.frames import (
    SCANNET_IMAGE_SIZE,
    FrameData,
    read_image,
    read_intrinsic,
    read_pose,
    resize_intrinsic,
    resize_nearest,
    scannet_intrinsic,
)
from util.cli import run_cli

SCANNET_SUFFIX = '_vh_clean_2'
SEGMENTS_SUFFIX = SCANNET_SUFFIX + '.0.010000.segs.json'  # ScanNet200's labels: segments of the mesh ...
AGGREGATION_SUFFIX = '.aggregation.json'                   # ... and the raw category of each group of segments
# ScanNet benchmark: the NYU40 ids of the 20 evaluated classes, in label order
BENCHMARK_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
# NYU40 spells one class differently from the benchmark label list
_NYU40_NAME_ALIASES = {'refridgerator': 'refrigerator'}


# ----------------------------------------------------------------------------- labels
def read_label_mapping(tsv_path, label_from='raw_category', label_to='nyu40id') -> Dict:
    """A column-to-column map from ScanNet's ``scannetv2-labels.combined.tsv``.

    Its header is ``id raw_category category count nyu40id eigen13id nyuClass nyu40class eigen13class
    ModelNet40 ModelNet10 ShapeNetCore55 synsetoffset wnsynsetid wnsynsetkey mpcat40 mpcat40index``.
    Integer-looking keys and values are converted to int; rows with an empty cell are skipped.
    """
    if not os.path.isfile(tsv_path):
        raise FileNotFoundError(f"label map '{tsv_path}' does not exist: give ScanNet's scannetv2-labels.combined.tsv")
    mapping = {}
    with open(tsv_path, newline='') as f:
        reader = csv.DictReader(f, delimiter='\t')
        missing = [c for c in (label_from, label_to) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"label map '{tsv_path}': expected columns {label_from!r} and {label_to!r} "
                             f"(scannetv2-labels.combined.tsv), found {reader.fieldnames}")
        for row in reader:
            key, value = (row[label_from] or '').strip(), (row[label_to] or '').strip()
            if key and value:
                mapping[_maybe_int(key)] = _maybe_int(value)
    if not mapping:
        raise ValueError(f"label map '{tsv_path}' has no rows with both {label_from!r} and {label_to!r}")
    return mapping


def _maybe_int(s):
    try:
        return int(s)
    except ValueError:
        return s


def nyu40_to_benchmark(tsv_path: Optional[str] = None, max_id=255) -> np.ndarray:
    """Lookup table NYU40 id -> benchmark label (0..19) or 255.

    With the tsv, each benchmark class is found by its NYU40 class name (``nyu40class``), so a tsv that
    disagrees with ``label_constants.SCANNET_LABELS_20`` is an error rather than a silent relabelling.
    """
    table = np.full(max_id + 1, IGNORE_LABEL, dtype=np.int64)
    if tsv_path is None:
        ids = BENCHMARK_NYU40_IDS
    else:
        names = read_label_mapping(tsv_path, 'nyu40class', 'nyu40id')
        names = {_NYU40_NAME_ALIASES.get(str(k), str(k)): v for k, v in names.items()}
        missing = [c for c in SCANNET_LABELS_20 if c not in names]
        if missing:
            raise ValueError(f"label map '{tsv_path}': the benchmark classes {missing} have no nyu40class row")
        ids = [names[c] for c in SCANNET_LABELS_20]
    for label, nyu_id in enumerate(ids):
        table[nyu_id] = label
    return table


def raw_category_to_scannet200(tsv_path) -> Dict[str, int]:
    """{raw category: ScanNet200 label 0..199} for the raw categories of the tsv whose ``id`` is a ScanNet200 class
    (every other raw category is ignored, 255). A tsv without a row for one of the 200 ids is not ScanNet's
    (the classes would silently never occur) and is an error naming them."""
    if tsv_path is None:
        raise ValueError("--labelset scannet200 maps raw categories through ScanNet's "
                         "scannetv2-labels.combined.tsv: give it as --label_map_file")
    ids = read_label_mapping(tsv_path, 'raw_category', 'id')
    label_of = {class_id: label for label, class_id in enumerate(SCANNET200_IDS)}
    found = set(ids.values())
    missing = [f'{name} ({class_id})' for name, class_id in zip(SCANNET200_LABELS, SCANNET200_IDS)
               if class_id not in found]
    if missing:
        raise ValueError(f"label map '{tsv_path}': no raw category has the ScanNet200 id of {len(missing)} classes, "
                         f"e.g. {missing[:5]}: give ScanNet's scannetv2-labels.combined.tsv (column 'id')")
    return {str(raw): label_of[class_id] for raw, class_id in ids.items() if class_id in label_of}


def _read_json(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        from util.io import UnreadableFileError
        raise UnreadableFileError(f"cannot read {what} '{path}': not valid JSON ({err})") from None


def scannet200_vertex_labels(scan_dir, num_vertices, raw_to_label) -> np.ndarray:
    """ScanNet200 label (0..199, else 255) of each mesh vertex from the scan's aggregation and segments files."""
    scene = os.path.basename(os.path.normpath(scan_dir))
    segs_path = os.path.join(scan_dir, scene + SEGMENTS_SUFFIX)
    agg_path = os.path.join(scan_dir, scene + AGGREGATION_SUFFIX)
    segs = _read_json(segs_path, 'segments file')
    agg = _read_json(agg_path, 'aggregation file')
    if not isinstance(segs, dict) or 'segIndices' not in segs:
        raise ValueError(f"segments file '{segs_path}': no 'segIndices'")
    if not isinstance(agg, dict) or 'segGroups' not in agg:
        raise ValueError(f"aggregation file '{agg_path}': no 'segGroups'")
    seg_indices = np.asarray(segs['segIndices'], dtype=np.int64)
    if seg_indices.shape != (num_vertices,):
        raise ValueError(f"segments file '{segs_path}' has {seg_indices.size} entries but the mesh has {num_vertices} "
                         f"vertices")
    labels = np.full(num_vertices, IGNORE_LABEL, dtype=np.int64)
    for i, group in enumerate(agg['segGroups']):
        if not isinstance(group, dict) or 'label' not in group or 'segments' not in group:
            raise ValueError(f"aggregation file '{agg_path}': segGroups[{i}] lacks 'label' or 'segments'")
        labels[np.isin(seg_indices, np.asarray(group['segments'], dtype=np.int64))] = raw_to_label.get(
            str(group['label']), IGNORE_LABEL)
    return labels


# ----------------------------------------------------------------------------- 3D
def read_ply_vertices(path, what='PLY file'):
    """The vertex table of a PLY file.

    plyfile's parse errors ("line 4: early end-of-file", "element 'vertex': row 3: early end-of-file") name
    neither the file nor the likely cause; they become one ``UnreadableFileError`` that says both."""
    from plyfile import PlyData, PlyElementParseError, PlyHeaderParseError

    from util.io import UnreadableFileError
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise UnreadableFileError(f"cannot read {what} '{path}': it is empty (0 bytes); re-download or re-export it")
    try:
        ply = PlyData.read(path)
    except PlyHeaderParseError as err:
        raise UnreadableFileError(
            f"cannot read {what} '{path}': malformed PLY header ({err}); expected 'ply', 'format <ascii|"
            f"binary_little_endian|binary_big_endian> 1.0', 'element vertex <count>' followed by its "
            f"'property <type> <name>' lines, and 'end_header'") from None
    except PlyElementParseError as err:
        raise UnreadableFileError(
            f"cannot read {what} '{path}': its data do not match its header ({err}): the file is cut short, or the "
            f"header's element counts or property lists are wrong; re-download or re-export it") from None
    except MemoryError:
        raise UnreadableFileError(f"cannot read {what} '{path}': its header announces more data than memory holds "
                                  f"(a damaged element count?)") from None
    except (ValueError, EOFError) as err:  # e.g. a negative count, or binary bytes in the header
        raise UnreadableFileError(f"cannot read {what} '{path}': not a readable PLY file "
                                  f"({type(err).__name__}: {err})") from None
    if 'vertex' not in ply:
        raise ValueError(f"{what} '{path}': no 'vertex' element (found elements "
                         f"{[e.name for e in ply.elements]})")
    return ply['vertex'].data


def _fields(vertices, names, path):
    have = vertices.dtype.names
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"PLY file '{path}': expected vertex properties {names}, missing {missing} (found {have})")
    return np.stack([np.asarray(vertices[n]) for n in names], axis=1)


def check_vertices(coords, rgb, path):
    """Refuse a mesh with no vertices, NaN / Inf coordinates or colours outside 0..255.

    Written into the .pth, such a vertex is only found later, by a reader that blames the .pth (or, worse, by a
    training loss turning NaN); here the mesh is still known, so the error names it, the first bad vertex and
    how many there are."""
    if coords.shape[0] == 0:
        raise ValueError(f"mesh '{path}': no vertices")
    checks = (('non-finite coordinates (NaN or Inf)', coords, np.isfinite(coords).all(1)),
              ('colours outside 0..255 (or NaN)', rgb, ((rgb >= 0) & (rgb <= 255)).all(1)))
    for problem, values, ok in checks:
        bad = np.flatnonzero(~ok)
        if bad.size:
            raise ValueError(f"mesh '{path}': {bad.size} of {len(ok)} vertices have {problem}; the first is vertex "
                             f"{bad[0]} = {values[bad[0]].tolist()}")


def process_scene_3d(scan_dir, out_path, label_table: Optional[np.ndarray], require_labels=True,
                     raw_to_scannet200: Optional[Dict[str, int]] = None):
    """One scan folder -> ``out_path`` (.pth, docs/formats.md). Returns the number of points.

    ``raw_to_scannet200`` (``raw_category_to_scannet200``): ScanNet200 labels from the aggregation instead of the
    20 benchmark classes from the labels PLY (``label_table``)."""
    from dataset.formats import save_scene_3d
    scene = os.path.basename(os.path.normpath(scan_dir))
    mesh_path = os.path.join(scan_dir, scene + SCANNET_SUFFIX + '.ply')
    label_path = os.path.join(scan_dir, scene + SCANNET_SUFFIX + '.labels.ply')
    v = read_ply_vertices(mesh_path, 'mesh')
    coords = _fields(v, ('x', 'y', 'z'), mesh_path).astype(np.float32)
    rgb = _fields(v, ('red', 'green', 'blue'), mesh_path).astype(np.float32)
    check_vertices(coords, rgb, mesh_path)
    colors = (rgb / 127.5 - 1.0).astype(np.float32)
    if raw_to_scannet200 is not None:
        annotated = os.path.isfile(os.path.join(scan_dir, scene + AGGREGATION_SUFFIX))
        if annotated or require_labels:
            labels = scannet200_vertex_labels(scan_dir, coords.shape[0], raw_to_scannet200)
        else:
            labels = np.full(coords.shape[0], IGNORE_LABEL, dtype=np.int64)
    elif os.path.isfile(label_path):
        lv = read_ply_vertices(label_path, 'label mesh')
        nyu = np.asarray(lv['label'] if 'label' in lv.dtype.names else _fields(lv, ('label',), label_path)[:, 0])
        if nyu.shape[0] != coords.shape[0]:
            raise ValueError(f"'{label_path}' has {nyu.shape[0]} vertices but '{mesh_path}' has {coords.shape[0]}")
        nyu = nyu.astype(np.int64)
        if nyu.min() < 0 or nyu.max() >= len(label_table):
            raise ValueError(f"'{label_path}': NYU40 ids expected in [0, {len(label_table) - 1}], found "
                             f"[{nyu.min()}, {nyu.max()}]")
        labels = label_table[nyu]
    elif require_labels:
        raise FileNotFoundError(f"label file '{label_path}' does not exist (test scans have none: pass --no_labels)")
    else:
        labels = np.full(coords.shape[0], IGNORE_LABEL, dtype=np.int64)
    save_scene_3d(out_path, coords, colors, labels)
    return coords.shape[0]


# ----------------------------------------------------------------------------- .sens
COLOR_COMPRESSION = {-1: 'unknown', 0: 'raw', 1: 'png', 2: 'jpeg'}
DEPTH_COMPRESSION = {-1: 'unknown', 0: 'raw_ushort', 1: 'zlib_ushort', 2: 'occi_ushort'}
_FRAME_HEADER = struct.Struct('<16f4Q')  # camera_to_world, timestamp colour/depth, colour/depth byte sizes


class SensorData:
    """Reader of ScanNet's ``.sens`` files (SensorData version 4, little-endian).

    Layout: uint32 version | uint64 n + n bytes sensor name | 4 x float32[16] colour intrinsic, colour
    extrinsic, depth intrinsic, depth extrinsic | int32 colour compression | int32 depth compression |
    uint32 colour width, colour height, depth width, depth height | float32 depth shift | uint64 frame count |
    frames: float32[16] camera-to-world, uint64 colour timestamp, depth timestamp, colour bytes, depth bytes,
    then the compressed colour (jpeg) and depth (zlib of uint16 [H, W]) payloads.
    Only the frame headers are read up front; payloads are read on demand, so a multi-GB file costs little.
    """

    VERSION = 4

    def __init__(self, path):
        self.path = path
        with open(path, 'rb') as f:
            def read(fmt):
                s = struct.Struct('<' + fmt)
                data = f.read(s.size)
                if len(data) != s.size:
                    raise ValueError(f"'{path}': truncated .sens header")
                return s.unpack(data)
            version, = read('I')
            if version != self.VERSION:
                raise ValueError(f"'{path}': expected a ScanNet .sens file of version {self.VERSION}, found version "
                                 f"{version}")
            n, = read('Q')
            self.sensor_name = f.read(n).decode('utf-8', 'replace')
            self.intrinsic_color = np.array(read('16f'), np.float32).reshape(4, 4)
            self.extrinsic_color = np.array(read('16f'), np.float32).reshape(4, 4)
            self.intrinsic_depth = np.array(read('16f'), np.float32).reshape(4, 4)
            self.extrinsic_depth = np.array(read('16f'), np.float32).reshape(4, 4)
            c, d = read('ii')
            self.color_compression = COLOR_COMPRESSION.get(c, f'invalid({c})')
            self.depth_compression = DEPTH_COMPRESSION.get(d, f'invalid({d})')
            self.color_width, self.color_height, self.depth_width, self.depth_height = read('4I')
            self.depth_shift, = read('f')
            num_frames, = read('Q')
            size = os.fstat(f.fileno()).st_size
            if num_frames * _FRAME_HEADER.size > size - f.tell():  # a garbage count, before allocating for it
                raise ValueError(f"'{path}': the header announces {num_frames} frames, more than the file's "
                                 f"{size} bytes can hold: truncated or not a .sens file")
            self.poses = np.zeros((num_frames, 4, 4), np.float32)
            self._offsets = []  # (colour offset, colour size, depth size) per frame
            for i in range(num_frames):
                data = f.read(_FRAME_HEADER.size)
                if len(data) != _FRAME_HEADER.size:
                    raise ValueError(f"'{path}': truncated at frame {i} of {num_frames}")
                values = _FRAME_HEADER.unpack(data)
                self.poses[i] = np.array(values[:16], np.float32).reshape(4, 4)
                color_size, depth_size = values[18], values[19]
                self._offsets.append((f.tell(), color_size, depth_size))
                f.seek(color_size + depth_size, os.SEEK_CUR)
            end = f.tell()
            f.seek(0, os.SEEK_END)
            if f.tell() < end:
                raise ValueError(f"'{path}': truncated frame payloads ({f.tell()} bytes, {end} expected)")

    def __len__(self):
        return len(self._offsets)

    def _payload(self, i):
        offset, color_size, depth_size = self._offsets[i]
        with open(self.path, 'rb') as f:
            f.seek(offset)
            return f.read(color_size), f.read(depth_size)

    def color(self, i) -> np.ndarray:
        """Frame i's colour image, [H, W, 3] uint8 RGB."""
        from PIL import Image
        data, _ = self._payload(i)
        if self.color_compression not in ('jpeg', 'png'):
            raise ValueError(f"'{self.path}': colour compression '{self.color_compression}' is not supported "
                             f"(ScanNet uses jpeg)")
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for damaged data
            from util.io import UnreadableFileError
            raise UnreadableFileError(f"cannot read '{self.path}' frame {i}: its {self.color_compression} colour "
                                      f"image is damaged ({err})") from None

    def depth_raw(self, i) -> np.ndarray:
        """Frame i's depth, [H, W] uint16 in 1/depth_shift metres (millimetres for ScanNet)."""
        _, data = self._payload(i)
        if self.depth_compression == 'zlib_ushort':
            try:
                data = zlib.decompress(data)
            except zlib.error as err:
                from util.io import UnreadableFileError
                raise UnreadableFileError(f"cannot read '{self.path}' frame {i}: its zlib depth data are damaged "
                                          f"({err})") from None
        elif self.depth_compression != 'raw_ushort':
            raise ValueError(f"'{self.path}': depth compression '{self.depth_compression}' is not supported "
                             f"(ScanNet uses zlib_ushort)")
        expected = self.depth_width * self.depth_height * 2
        if len(data) != expected:
            raise ValueError(f"'{self.path}' frame {i}: depth holds {len(data)} bytes, expected {expected} "
                             f"({self.depth_height}x{self.depth_width} uint16)")
        return np.frombuffer(data, dtype='<u2').reshape(self.depth_height, self.depth_width).copy()


def _write_png(path, array):
    from PIL import Image

    from util.io import atomic_path
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format='PNG')


def _write_jpg(path, array, quality=95):
    from PIL import Image

    from util.io import atomic_path
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format='JPEG', quality=quality)


def _write_matrix(path, matrix):
    from util.io import atomic_write_text
    atomic_write_text(path, '\n'.join(' '.join(f'{x:f}' for x in row) for row in np.asarray(matrix)) + '\n')


def export_frames(sens_path, out_scene_dir, frame_skip=20, image_hw=SCANNET_IMAGE_SIZE) -> List[int]:
    """Export every ``frame_skip``-th frame of a .sens file, resized to ``image_hw`` (nearest, as upstream).

    Writes color/<i>.jpg, depth/<i>.png (uint16 mm), pose/<i>.txt, intrinsic/intrinsic_depth.txt and, last,
    frames.txt listing the exported ids (its presence marks the scene finished).
    """
    sd = SensorData(sens_path)
    for sub in ('color', 'depth', 'pose', 'intrinsic'):
        os.makedirs(os.path.join(out_scene_dir, sub), exist_ok=True)
    ids = list(range(0, len(sd), frame_skip))
    h, w = image_hw
    to_mm = 1000.0 / sd.depth_shift if sd.depth_shift else 1.0
    for i in ids:
        color = resize_nearest(sd.color(i), (h, w))
        depth = resize_nearest(sd.depth_raw(i), (h, w))
        if to_mm != 1.0:  # ScanNet's shift is 1000 (mm); keep the exported PNGs in mm whatever the sensor
            depth = np.clip(np.round(depth * to_mm), 0, 65535).astype(np.uint16)
        _write_jpg(os.path.join(out_scene_dir, 'color', f'{i}.jpg'), color)
        _write_png(os.path.join(out_scene_dir, 'depth', f'{i}.png'), depth)
        _write_matrix(os.path.join(out_scene_dir, 'pose', f'{i}.txt'), sd.poses[i])
    K = resize_intrinsic(sd.intrinsic_depth, (sd.depth_height, sd.depth_width), (h, w))
    _write_matrix(os.path.join(out_scene_dir, 'intrinsic', 'intrinsic_depth.txt'), K)
    from util.io import atomic_write_text
    atomic_write_text(os.path.join(out_scene_dir, 'frames.txt'), '\n'.join(map(str, ids)) + '\n')
    return ids


class ScanNetFrames:
    """Exported ScanNet frames of one scene (``<scene_dir>/{color,depth,pose}/<i>.*``) as ``FrameData``.

    intrinsic: 3x3/4x4 at the depth resolution; default OpenScene's fixed constants, or 'scene' to
    use ``<scene_dir>/intrinsic/intrinsic_depth.txt`` from the export. depth_scale: PNG units per metre.
    """

    def __init__(self, scene_dir, scene=None, intrinsic=None, depth_scale=1000.0, frame_skip=1):
        self.scene_dir = scene_dir
        self.scene = scene or os.path.basename(os.path.normpath(scene_dir))
        color_dir = os.path.join(scene_dir, 'color')
        if not os.path.isdir(color_dir):
            raise FileNotFoundError(f"no exported frames for scene '{self.scene}': '{color_dir}' does not exist "
                                    f"(run python -m prep.scannet frames first)")
        names = [os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(glob.escape(color_dir), '*.jpg'))]
        self.frame_ids = sorted(names, key=lambda s: (int(s) if s.isdigit() else float('inf'), s))[::frame_skip]
        if isinstance(intrinsic, str) and intrinsic == 'scene':
            intrinsic = read_intrinsic(os.path.join(scene_dir, 'intrinsic', 'intrinsic_depth.txt'))
        self.intrinsic = None if intrinsic is None else np.asarray(intrinsic, np.float64)
        self.depth_scale = depth_scale

    def __len__(self):
        return len(self.frame_ids)

    def files(self):
        """Every file the frames are read from (colour, depth, pose, intrinsics), for provenance."""
        paths = [os.path.join(self.scene_dir, sub, fid + ext) for fid in self.frame_ids
                 for sub, ext in (('color', '.jpg'), ('depth', '.png'), ('pose', '.txt'))]
        intrinsic = os.path.join(self.scene_dir, 'intrinsic', 'intrinsic_depth.txt')
        return paths + ([intrinsic] if os.path.isfile(intrinsic) else [])

    def __iter__(self) -> Iterator[FrameData]:
        for fid in self.frame_ids:
            color = read_image(os.path.join(self.scene_dir, 'color', fid + '.jpg'), 'colour image', 'RGB')
            depth_path = os.path.join(self.scene_dir, 'depth', fid + '.png')
            depth_raw = read_image(depth_path, 'depth image')
            if depth_raw.ndim != 2:
                raise ValueError(f"depth image '{depth_path}': expected a single-channel 16-bit PNG, found shape "
                                 f"{list(depth_raw.shape)}")
            depth = depth_raw.astype(np.float32) / self.depth_scale
            pose = read_pose(os.path.join(self.scene_dir, 'pose', fid + '.txt'))
            K = self.intrinsic if self.intrinsic is not None else scannet_intrinsic(depth.shape)
            yield FrameData(color=color, depth=depth, intrinsic=K, pose=pose, name=f'{self.scene}/{fid}')


# ----------------------------------------------------------------------------- CLI
def _scene_list(args):
    if args.scene_list:
        with open(args.scene_list) as f:
            return [l.strip() for l in f if l.strip()]
    return sorted(d for d in os.listdir(args.scans_dir) if os.path.isdir(os.path.join(args.scans_dir, d)))


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m prep.scannet', description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    p3 = sub.add_parser('3d', help='<scene>_vh_clean_2[.labels].ply -> <out>/<scene>_vh_clean_2.pth')
    p2 = sub.add_parser('frames', help='<scene>.sens -> <out>/<scene>/{color,depth,pose,intrinsic}')
    for q in (p3, p2):
        q.add_argument('--scans_dir', required=True, help="ScanNet's scans/ (or scans_test/) folder")
        q.add_argument('--out_dir', required=True)
        q.add_argument('--scene_list', default=None, help='text file of scene ids (e.g. scannetv2_train.txt); '
                                                          'default: every folder of scans_dir')
        q.add_argument('--overwrite', action='store_true')
    p3.add_argument('--label_map_file', default=None, help='scannetv2-labels.combined.tsv (optional check; required '
                                                           'for scannet200)')
    p3.add_argument('--labelset', default='scannet', choices=('scannet', 'scannet200'),
                    help='scannet: the 20 benchmark classes (labels PLY); scannet200: the 200 classes (aggregation)')
    p3.add_argument('--no_labels', action='store_true', help='scans without labels (test): labels all 255')
    p2.add_argument('--frame_skip', type=int, default=20)
    p2.add_argument('--height', type=int, default=SCANNET_IMAGE_SIZE[0])
    p2.add_argument('--width', type=int, default=SCANNET_IMAGE_SIZE[1])
    args = p.parse_args(argv)
    from tqdm import tqdm
    scenes = _scene_list(args)
    os.makedirs(args.out_dir, exist_ok=True)
    if args.command == '3d':
        if args.labelset == 'scannet200':
            table, raw = None, raw_category_to_scannet200(args.label_map_file)
        else:
            table, raw = nyu40_to_benchmark(args.label_map_file), None
        for scene in tqdm(scenes, desc=f'{args.labelset} 3d', unit='scene'):
            out = os.path.join(args.out_dir, scene + SCANNET_SUFFIX + '.pth')
            if os.path.isfile(out) and not args.overwrite:
                continue
            process_scene_3d(os.path.join(args.scans_dir, scene), out, table, require_labels=not args.no_labels,
                             raw_to_scannet200=raw)
    else:
        hw = (args.height, args.width)
        from util.io import atomic_write_text
        K = scannet_intrinsic(hw)
        atomic_write_text(os.path.join(args.out_dir, 'intrinsics.txt'),
                          '\n'.join(' '.join(f'{x:f}' for x in row) for row in K) + '\n')
        for scene in tqdm(scenes, desc='scannet frames', unit='scene'):
            out = os.path.join(args.out_dir, scene)
            if os.path.isfile(os.path.join(out, 'frames.txt')) and not args.overwrite:
                continue
            sens = os.path.join(args.scans_dir, scene, scene + '.sens')
            if not os.path.isfile(sens):
                raise FileNotFoundError(f"'{sens}' does not exist: download the .sens files "
                                        f"(download-scannet.py --type .sens)")
            export_frames(sens, out, frame_skip=args.frame_skip, image_hw=hw)


if __name__ == '__main__':
    run_cli(main)
