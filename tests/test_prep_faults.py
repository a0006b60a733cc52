"""Damaged inputs of the offline preparation (prep/) are refused in words that name the file: a NaN vertex, a cut or
mismatched PLY, a truncated frame image, garbage poses and intrinsics, unsafe or cut 2D feature maps; and fusion
notices a frame that changed after its features were made."""
import io
import json
import os
import re

import numpy as np
import pytest
import torch

from dataset import formats
from prep import s3dis, scannet
from prep.feature_sources import PrecomputedFeatureSource
from prep.frames import FrameData
from prep.fusion import main as fusion_main
from util.cli import run_cli
from util.io import UnreadableFileError

SCENE = 'scene0000_00'


# ----------------------------------------------------------------------------- ScanNet meshes
def _write_scan(scans_dir, xyz, rgb, labels=None, color_type='u1'):
    """<scans_dir>/<SCENE>/<SCENE>_vh_clean_2.ply (binary, with one face, as ScanNet's) and the ASCII .labels.ply."""
    from plyfile import PlyData, PlyElement
    scan_dir = os.path.join(scans_dir, SCENE)
    os.makedirs(scan_dir, exist_ok=True)
    fields = [(k, 'f4') for k in 'xyz'] + [(k, color_type) for k in ('red', 'green', 'blue')]
    v = np.empty(len(xyz), dtype=fields)
    v['x'], v['y'], v['z'] = np.asarray(xyz).T
    v['red'], v['green'], v['blue'] = np.asarray(rgb).T
    face = np.array([([0, 1, 2],)], dtype=[('vertex_indices', 'i4', (3,))])
    mesh = os.path.join(scan_dir, f'{SCENE}_vh_clean_2.ply')
    PlyData([PlyElement.describe(v, 'vertex'), PlyElement.describe(face, 'face')]).write(mesh)
    lv = np.empty(len(xyz), dtype=[(k, 'f4') for k in 'xyz'] + [('label', 'u2')])
    lv['x'], lv['y'], lv['z'] = np.asarray(xyz).T
    lv['label'] = np.ones(len(xyz)) if labels is None else labels
    label = os.path.join(scan_dir, f'{SCENE}_vh_clean_2.labels.ply')
    PlyData([PlyElement.describe(lv, 'vertex'), PlyElement.describe(face, 'face')], text=True).write(label)
    return mesh, label


def _scan(n=9):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 3, (n, 3)).astype(np.float32), rng.integers(0, 256, (n, 3)).astype(np.uint8)


def _cli_error(capsys, main, argv):
    """The error a command prints: one line (besides its progress bar), status 2, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('error: ')]
    assert exit_info.value.code == 2 and 'Traceback' not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize('fault', ['nan', 'inf', 'colour'])
def test_scannet_refuses_non_finite_vertices_naming_the_mesh_and_the_vertex(tmp_path, capsys, fault):
    xyz, rgb = _scan()
    rgb = rgb.astype(np.float32)
    if fault == 'colour':  # a PLY with float colours (some exporters write 0..1 or garbage) out of 0..255
        rgb[[3, 7], 1] = [300.0, -1.0]
    else:
        xyz[[3, 7], 1] = np.nan if fault == 'nan' else np.inf
    mesh, _ = _write_scan(str(tmp_path / 'scans'), xyz, rgb, color_type='f4')
    out = tmp_path / 'out'
    err = _cli_error(capsys, scannet.main, ['3d', '--scans_dir', str(tmp_path / 'scans'), '--out_dir', str(out)])
    assert mesh in err and '2 of 9 vertices' in err and 'vertex 3' in err, err
    assert ('colours' if fault == 'colour' else 'non-finite') in err
    assert not os.listdir(out)  # nothing written that a later stage would blame


def _cut_header(raw):
    return raw[:raw.index(b'property float y')]


def _cut_data(raw):
    return raw[:raw.index(b'end_header\n') + len(b'end_header\n') + 40]  # inside the third vertex


@pytest.mark.parametrize('which, damage, expected', [
    ('mesh', _cut_header, 'malformed PLY header'),
    ('mesh', lambda r: r.replace(b'element vertex 9\n', b''), 'malformed PLY header'),  # 'element vertex' missing
    ('mesh', lambda r: r.replace(b'property uchar blue\n', b'property uchar blue\nproperty uchar alpha\n'),
     'do not match its header'),  # one property more than the data hold
    ('mesh', _cut_data, 'do not match its header'),
    ('mesh', lambda r: b'', 'empty'),
    ('label', lambda r: r[:len(r) * 2 // 3], 'do not match its header'),  # cut in the middle of the ASCII rows
    ('label', lambda r: r.replace(b'element vertex 9', b'element vertex 8'), 'do not match its header'),
])
def test_scannet_malformed_ply_is_one_message_naming_the_file(tmp_path, capsys, which, damage, expected):
    mesh, label = _write_scan(str(tmp_path / 'scans'), *_scan())
    path = mesh if which == 'mesh' else label
    with open(path, 'rb') as f:
        raw = f.read()
    with open(path, 'wb') as f:
        f.write(damage(raw))
    err = _cli_error(capsys, scannet.main, ['3d', '--scans_dir', str(tmp_path / 'scans'), '--out_dir',
                                            str(tmp_path / 'out')])
    assert path in err and expected in err, err


def test_scannet_label_mesh_with_another_vertex_count_names_both_files(tmp_path):
    xyz, rgb = _scan()
    mesh, label = _write_scan(str(tmp_path / 'scans'), xyz, rgb)
    _write_scan(str(tmp_path / 'other'), xyz[:7], rgb[:7])
    os.replace(os.path.join(tmp_path, 'other', SCENE, os.path.basename(label)), label)
    with pytest.raises(ValueError) as err:
        scannet.process_scene_3d(os.path.join(tmp_path, 'scans', SCENE), str(tmp_path / 'o.pth'),
                                 scannet.nyu40_to_benchmark())
    assert label in str(err.value) and mesh in str(err.value)


def test_damaged_sens_payload_names_the_file_and_frame(tmp_path):
    import struct
    import zlib

    from PIL import Image
    path = str(tmp_path / f'{SCENE}.sens')
    with open(path, 'wb') as f:  # SensorData v4, one 4x4 frame, its zlib depth cut short
        f.write(struct.pack('<IQ', 4, 2) + b'SS' + struct.pack('<64f', *np.tile(np.eye(4).ravel(), 4)))
        f.write(struct.pack('<ii4IfQ', 2, 1, 4, 4, 4, 4, 1000.0, 1))
        buf = io.BytesIO()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format='JPEG')
        depth = zlib.compress(np.ones((4, 4), '<u2').tobytes())[:-4]
        f.write(struct.pack('<16f4Q', *np.eye(4).ravel(), 0, 0, len(buf.getvalue()), len(depth)))
        f.write(buf.getvalue() + depth)
    with pytest.raises(UnreadableFileError, match=re.escape(f"'{path}' frame 0: its zlib depth data are damaged")):
        scannet.SensorData(path).depth_raw(0)


# ----------------------------------------------------------------------------- S3DIS
def test_s3dis_annotation_with_nan_names_the_file_and_row(tmp_path):
    path = tmp_path / 'chair_1.txt'
    path.write_text('1 2 3 10 20 30\n1 nan 3 10 20 30\n1 2 3 10 999 30\n')
    with pytest.raises(ValueError, match=re.escape(f"'{path}': 2 of 3 rows") + '.* the first is row 2 '):
        s3dis.read_annotation(str(path))


def _pose_json(k=((40, 0, 31.5), (0, 40, 31.5), (0, 0, 1)), rt=((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0))):
    return json.dumps({'camera_k_matrix': k, 'camera_rt_matrix': rt})


@pytest.mark.parametrize('content, expected', [
    (_pose_json()[:40], 'not a complete JSON file'),
    (_pose_json(rt=((1, 0, 0, 0), (0, float('nan'), 0, 0), (0, 0, 1, 0))), 'NaN'),
    (_pose_json(rt=((2, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0))), 'not rigid'),
    (_pose_json(k=((0, 0, 0), (0, 0, 0), (0, 0, 1))), 'positive focal'),
], ids=['cut', 'nan', 'scaled', 'zero focal'])
def test_2d3ds_pose_json_faults_name_the_file(tmp_path, content, expected):
    path = tmp_path / 'camera_0a_office_1_frame_0_domain_pose.json'
    path.write_text(content)
    with pytest.raises((UnreadableFileError, ValueError)) as err:
        s3dis.read_2d3ds_pose(str(path))
    assert f"'{path}'" in str(err.value) and expected in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- fusion: frames and feature maps
H, W = 40, 60
K = np.array([[50.0, 0, 30.0], [0, 50.0, 20.0], [0, 0, 1]])
POSE = np.array([[1.0, 0, 0, 0.5], [0, 0, 1, -2.0], [0, -1, 0, 0.5], [0, 0, 0, 1]])  # camera-to-world, rigid
PIXELS = [(15, 20), (22, 40)]


def _points_at(pixels, z=2.0):
    cam = np.array([[(c - K[0, 2]) * z / K[0, 0], (r - K[1, 2]) * z / K[1, 1], z] for r, c in pixels])
    return (cam @ POSE[:3, :3].T + POSE[:3, 3]).astype(np.float32)


def _write_depth(path, depth_m):
    from PIL import Image
    Image.fromarray(np.round(depth_m * 1000).astype(np.uint16)).save(path)


def _fusion_fixture(root):
    """A ScanNet-layout scene (3D .pth, two exported frames 0 and 20, a 4x4 intrinsic file, precomputed 2D maps)
    and the fusion command line that reads it."""
    from PIL import Image
    formats.save_scene_3d(os.path.join(root, '3d', 'train', f'{SCENE}_vh_clean_2.pth'), _points_at(PIXELS),
                          np.zeros((len(PIXELS), 3)), np.zeros(len(PIXELS), np.int64))
    scene_dir = os.path.join(root, '2d', SCENE)
    for sub in ('color', 'depth', 'pose'):
        os.makedirs(os.path.join(scene_dir, sub), exist_ok=True)
    for fid in (0, 20):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(os.path.join(scene_dir, 'color', f'{fid}.jpg'))
        _write_depth(os.path.join(scene_dir, 'depth', f'{fid}.png'), np.full((H, W), 2.0))
        np.savetxt(os.path.join(scene_dir, 'pose', f'{fid}.txt'), POSE)
    np.savetxt(os.path.join(root, 'K.txt'), np.vstack([np.hstack([K, [[0], [0], [0]]]), [0, 0, 0, 1]]))
    feats = os.path.join(root, 'feats', SCENE)
    os.makedirs(feats)
    rng = np.random.default_rng(0)
    torch.save(torch.from_numpy(rng.standard_normal((H, W, 5)).astype(np.float32)), os.path.join(feats, '0.pt'))
    np.save(os.path.join(feats, '20.npy'), rng.standard_normal((H, W, 5)).astype(np.float32))
    return ['--dataset', 'scannet', '--data_root_3d', os.path.join(root, '3d'), '--split', 'train',
            '--data_root_2d', os.path.join(root, '2d'), '--output_dir', os.path.join(root, 'out'),
            '--feature_source', 'precomputed', '--feature_dir', os.path.join(root, 'feats'),
            '--intrinsic_file', os.path.join(root, 'K.txt'), '--device', 'cpu']


def _overwrite(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def _half(path):
    with open(path, 'rb') as f:
        raw = f.read()
    return raw[:len(raw) // 2]


def _object_npy():
    buf = io.BytesIO()
    np.save(buf, np.array([{'feat': 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _object_pt():
    buf = io.BytesIO()
    torch.save(np.array([{'feat': 1}, None], dtype=object), buf)
    return buf.getvalue()


POSE_FILE = '2d/scene0000_00/pose/20.txt'
DAMAGE = {  # frame file (relative to the fixture's root) -> damaged content, what the message must say
    'depth cut in half': ('2d/scene0000_00/depth/20.png', _half, 'truncated'),
    'colour cut in half': ('2d/scene0000_00/color/0.jpg', _half, 'truncated'),
    'depth not an image': ('2d/scene0000_00/depth/0.png', lambda p: b'<html>not found</html>', 'not an image'),
    'pose not numbers': (POSE_FILE, lambda p: b'hello world\n', "found 'hello'"),
    'pose 3x4': (POSE_FILE, lambda p: b'1 0 0 0\n0 1 0 0\n0 0 1 0\n', 'expected a 4x4'),
    'pose NaN': (POSE_FILE, lambda p: b'nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n', 'NaN'),
    'pose non-rigid': (POSE_FILE, lambda p: b'3 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n', 'not rigid'),
    'pose all zero': (POSE_FILE, lambda p: b'0 0 0 0\n' * 4, 'all zeros'),
    'intrinsic not numbers': ('K.txt', lambda p: b'fx fy cx cy\n', 'expected numbers'),
    'intrinsic zero focal': ('K.txt', lambda p: b'0 0 30\n0 0 20\n0 0 1\n', 'positive focal'),
    'feature map cut (.npy)': ('feats/scene0000_00/20.npy', _half, 'truncated'),
    'feature map cut (.pt)': ('feats/scene0000_00/0.pt', _half, 'truncated'),
    'feature map of objects (.npy)': ('feats/scene0000_00/20.npy', lambda p: _object_npy(), 'bject'),
    'feature map of objects (.pt)': ('feats/scene0000_00/0.pt', lambda p: _object_pt(), 'Python objects'),
}


@pytest.mark.parametrize('case', sorted(DAMAGE))
def test_fusion_names_the_damaged_frame_file(tmp_path, case):
    argv = _fusion_fixture(str(tmp_path))
    rel, damage, expected = DAMAGE[case]
    path = os.path.join(str(tmp_path), rel)
    _overwrite(path, damage(path))
    # the scene is reported and skipped (one bad scan does not stop a long run), its file named in the summary
    with pytest.raises(SystemExit) as err:
        fusion_main(argv)
    text = str(err.value)
    assert f'{SCENE}: ' in text and f"'{path}'" in text and expected in text, text
    assert not (tmp_path / 'out' / f'{SCENE}_0.pt').exists()


def test_fusion_still_skips_scannet_lost_tracking_frames(tmp_path):
    argv = _fusion_fixture(str(tmp_path))
    _overwrite(str(tmp_path / '2d' / SCENE / 'pose' / '20.txt'), b'-inf -inf -inf -inf\n' * 4)
    fusion_main(argv)  # frame 20 skipped, frame 0 fused
    feat, mask = formats.load_fused_features(str(tmp_path / 'out' / f'{SCENE}_0.pt'), num_points=2, feat_dim=5)
    first = torch.load(str(tmp_path / 'feats' / SCENE / '0.pt'))
    assert mask.all()
    np.testing.assert_allclose(feat.float().numpy(), [first[r, c].numpy() for r, c in PIXELS], atol=2e-3)


def test_precomputed_source_names_unsafe_and_cut_feature_maps(tmp_path):
    os.makedirs(tmp_path / 's')
    frame = FrameData(np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.float32), K, POSE, 's/1')
    source = PrecomputedFeatureSource(str(tmp_path))
    for name, data, expected in (('1.npy', _object_npy(), 'bject'), ('1.pt', _object_pt(), 'Python objects')):
        path = str(tmp_path / 's' / name)
        _overwrite(path, data)
        with pytest.raises((UnreadableFileError, ValueError)) as err:
            source(frame)
        assert f"2D feature map '{path}'" in str(err.value) and expected in str(err.value)
        os.remove(path)
    np.save(tmp_path / 's' / '1.npy', np.zeros((H, W, 4), np.float32))
    _overwrite(str(tmp_path / 's' / '1.npy'), _half(str(tmp_path / 's' / '1.npy')))
    with pytest.raises(UnreadableFileError, match=r"2D feature map '.*1\.npy': truncated"):
        source(frame)


# ----------------------------------------------------------------------------- fusion: a changed frame
def test_fusion_recomputes_a_scene_whose_frame_changed_and_names_the_frame(tmp_path, capsys):
    argv = _fusion_fixture(str(tmp_path))
    out = tmp_path / 'out' / f'{SCENE}_0.pt'

    def fused():
        return formats.load_fused_features(str(out), num_points=2, feat_dim=5)[0].float().numpy()

    fusion_main(argv)
    before, mtime = fused(), os.stat(out).st_mtime_ns
    fusion_main(argv)  # nothing changed: reused
    assert os.stat(out).st_mtime_ns == mtime and 'skipped 1 already finished' in capsys.readouterr().out

    # frame 20's depth now puts a wall 1 m in front of the points: only frame 0 sees them
    depth = str(tmp_path / '2d' / SCENE / 'depth' / '20.png')
    _write_depth(depth, np.full((H, W), 1.0))
    fusion_main(argv)
    log = capsys.readouterr().out
    assert f"{SCENE}: recomputing: frame file '{depth}' changed since its features were made" in log, log
    assert not np.allclose(fused(), before)

    # a moved camera (pose) and new numbers in the intrinsic file are changed frames as well
    moved = POSE.copy()
    moved[2, 3] += 0.01
    for path, matrix in ((str(tmp_path / '2d' / SCENE / 'pose' / '0.txt'), moved),
                         (str(tmp_path / 'K.txt'), [[60.0, 0, 30.0], [0, 60.0, 20.0], [0, 0, 1]])):
        mtime = os.stat(out).st_mtime_ns
        np.savetxt(path, matrix)
        fusion_main(argv)
        log = capsys.readouterr().out
        assert f"{SCENE}: recomputing: frame file '{path}' changed" in log, log
        assert os.stat(out).st_mtime_ns != mtime
    fusion_main(argv)
    assert 'fused 0 scenes, skipped 1 already finished' in capsys.readouterr().out
