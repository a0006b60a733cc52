"""ScanNet / S3DIS preprocessing and frame readers, on tiny files written here in the real layouts."""
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch

from dataset import formats
from dataset.label_constants import S3DIS_LABELS_13, SCANNET_LABELS_20
from prep import s3dis, scannet
from prep.frames import resize_intrinsic, resize_nearest, scannet_intrinsic
from prep.fusion import fuse_features


# ----------------------------------------------------------------------------- ScanNet 3D
def _write_ply_pair(scan_dir, scene, xyz, rgb, nyu):
    from plyfile import PlyData, PlyElement
    os.makedirs(scan_dir, exist_ok=True)
    v = np.empty(len(xyz), dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('red', 'u1'), ('green', 'u1'),
                                  ('blue', 'u1'), ('alpha', 'u1')])
    v['x'], v['y'], v['z'] = xyz.T
    v['red'], v['green'], v['blue'] = rgb.T
    v['alpha'] = 255
    face = np.array([([0, 1, 2],)], dtype=[('vertex_indices', 'i4', (3,))])
    PlyData([PlyElement.describe(v, 'vertex'), PlyElement.describe(face, 'face')]).write(
        os.path.join(scan_dir, f'{scene}_vh_clean_2.ply'))
    lv = np.empty(len(xyz), dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('red', 'u1'), ('green', 'u1'),
                                   ('blue', 'u1'), ('alpha', 'u1'), ('label', 'u2')])
    for k in ('x', 'y', 'z', 'red', 'green', 'blue', 'alpha'):
        lv[k] = v[k]
    lv['label'] = nyu
    PlyData([PlyElement.describe(lv, 'vertex'), PlyElement.describe(face, 'face')], text=True).write(
        os.path.join(scan_dir, f'{scene}_vh_clean_2.labels.ply'))


NYU40 = ['wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf', 'picture',
         'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror', 'floor mat', 'clothes',
         'ceiling', 'books', 'refridgerator', 'television', 'paper', 'towel', 'shower curtain', 'box', 'whiteboard',
         'person', 'night stand', 'toilet', 'sink', 'lamp', 'bathtub', 'bag', 'otherstructure', 'otherfurniture',
         'otherprop']
TSV_HEADER = ('id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\teigen13class\tModelNet40\t'
              'ModelNet10\tShapeNetCore55\tsynsetoffset\twnsynsetid\twnsynsetkey\tmpcat40\tmpcat40index')


def _write_tsv(path, nyu_names=NYU40):
    rows = [TSV_HEADER]
    for i, name in enumerate(nyu_names, start=1):  # raw category = the NYU40 name, as many real rows are
        rows.append(f'{i}\t{name}\t{name}\t10\t{i}\t1\t{name}\t{name}\t\t\t\t\t\t\t\t{name}\t1')
    rows.append('999\tkitchen cabinets\tkitchen cabinet\t5\t3\t1\tcabinet\tcabinet\t\t\t\t\t\t\t\tcabinet\t7')
    with open(path, 'w') as f:
        f.write('\n'.join(rows) + '\n')


def test_scannet_ply_pair_round_trips_to_pth(tmp_path):
    rng = np.random.default_rng(0)
    n = 9
    xyz = rng.uniform(-2, 5, (n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    # NYU40: unannotated, wall, floor, otherfurniture, refridgerator, blinds, otherprop, desk, bathtub
    nyu = np.array([0, 1, 2, 39, 24, 13, 40, 14, 36], np.uint16)
    _write_ply_pair(str(tmp_path / 'scans' / 'scene0007_00'), 'scene0007_00', xyz, rgb, nyu)
    _write_tsv(str(tmp_path / 'labels.tsv'))
    for extra in ([], ['--label_map_file', str(tmp_path / 'labels.tsv')]):
        out = tmp_path / ('out' + str(len(extra)))
        scannet.main(['3d', '--scans_dir', str(tmp_path / 'scans'), '--out_dir', str(out)] + extra)
        scene = formats.load_scene_3d(str(out / 'scene0007_00_vh_clean_2.pth'))
        np.testing.assert_array_equal(scene.coords, xyz)
        np.testing.assert_allclose(scene.colors, rgb / 127.5 - 1, atol=1e-6)
        L = SCANNET_LABELS_20.index
        assert scene.labels.tolist() == [255, L('wall'), L('floor'), L('otherfurniture'), L('refrigerator'), 255,
                                         255, L('desk'), L('bathtub')]
    assert formats.scene_name(str(out / 'scene0007_00_vh_clean_2.pth')) == 'scene0007_00'


def test_scannet_label_map_reads_the_real_columns_and_checks_them(tmp_path):
    _write_tsv(str(tmp_path / 'labels.tsv'))
    m = scannet.read_label_mapping(str(tmp_path / 'labels.tsv'), 'raw_category', 'nyu40id')
    assert m['kitchen cabinets'] == 3 and m['wall'] == 1
    np.testing.assert_array_equal(scannet.nyu40_to_benchmark(str(tmp_path / 'labels.tsv')),
                                  scannet.nyu40_to_benchmark(None))
    bad = list(NYU40)
    bad[13] = 'writing desk'  # the benchmark class 'desk' no longer has a row
    _write_tsv(str(tmp_path / 'bad.tsv'), bad)
    with pytest.raises(ValueError, match='desk'):
        scannet.nyu40_to_benchmark(str(tmp_path / 'bad.tsv'))
    with pytest.raises(ValueError, match='nyu40class'):
        scannet.read_label_mapping(str(tmp_path / 'labels.tsv'), 'nyu40class_typo', 'nyu40id')


# ----------------------------------------------------------------------------- .sens
def write_sens(path, colors, depths_mm, poses, K_color, K_depth, depth_shift=1000.0):
    """Writer following ScanNet's SensorData v4 layout (see prep/scannet.py)."""
    from PIL import Image
    with open(path, 'wb') as f:
        name = b'StructureSensor'
        f.write(struct.pack('<IQ', 4, len(name)) + name)
        for m in (K_color, np.eye(4), K_depth, np.eye(4)):
            f.write(struct.pack('<16f', *np.asarray(m, np.float32).ravel()))
        f.write(struct.pack('<ii', 2, 1))  # jpeg, zlib_ushort
        (ch, cw), (dh, dw) = colors[0].shape[:2], depths_mm[0].shape
        f.write(struct.pack('<4I', cw, ch, dw, dh))
        f.write(struct.pack('<fQ', depth_shift, len(colors)))
        for i, (c, d, p) in enumerate(zip(colors, depths_mm, poses)):
            buf = io.BytesIO()
            Image.fromarray(c).save(buf, format='JPEG', quality=100)
            cbytes, dbytes = buf.getvalue(), zlib.compress(d.astype('<u2').tobytes())
            f.write(struct.pack('<16f', *np.asarray(p, np.float32).ravel()))
            f.write(struct.pack('<4Q', 1000 * i, 1000 * i + 1, len(cbytes), len(dbytes)))
            f.write(cbytes + dbytes)


def _sens_fixture(tmp_path, n=5):
    rng = np.random.default_rng(0)
    colors = [np.full((12, 16, 3), (10 * i, 100, 200), np.uint8) for i in range(n)]
    depths = [rng.integers(0, 5000, (8, 12)).astype(np.uint16) for _ in range(n)]
    poses = []
    for i in range(n):
        p = np.eye(4)
        p[:3, 3] = (i, 2 * i, 0.5)
        poses.append(p)
    poses[3][0, 0] = -np.inf  # a lost-tracking frame
    K_depth = np.array([[10.0, 0, 5.5, 0], [0, 10.0, 3.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    path = str(tmp_path / 'scene0001_00.sens')
    write_sens(path, colors, depths, poses, np.eye(4) * 2, K_depth)
    return path, colors, depths, poses, K_depth


def test_sens_file_reads_back(tmp_path):
    path, colors, depths, poses, K_depth = _sens_fixture(tmp_path)
    sd = scannet.SensorData(path)
    assert len(sd) == 5 and sd.sensor_name == 'StructureSensor' and sd.depth_shift == 1000.0
    assert (sd.color_width, sd.color_height, sd.depth_width, sd.depth_height) == (16, 12, 12, 8)
    np.testing.assert_array_equal(sd.intrinsic_depth, K_depth.astype(np.float32))
    for i in range(5):
        np.testing.assert_array_equal(sd.poses[i], poses[i].astype(np.float32))
        np.testing.assert_array_equal(sd.depth_raw(i), depths[i])
        assert np.abs(sd.color(i).astype(int) - colors[i]).max() <= 2  # jpeg of a flat image
    with open(path, 'r+b') as f:
        f.write(struct.pack('<I', 3))
    with pytest.raises(ValueError, match='version 4'):
        scannet.SensorData(path)


def test_sens_export_and_scannet_frame_reader(tmp_path):
    path, colors, depths, poses, K_depth = _sens_fixture(tmp_path)
    out = str(tmp_path / 'scannet_2d' / 'scene0001_00')
    ids = scannet.export_frames(path, out, frame_skip=2, image_hw=(4, 6))
    assert ids == [0, 2, 4]
    from PIL import Image
    for i in ids:
        png = np.asarray(Image.open(os.path.join(out, 'depth', f'{i}.png')))
        assert png.dtype == np.uint16
        np.testing.assert_array_equal(png, depths[i][::2, ::2])  # nearest, as OpenCV: source row/col 2k
        np.testing.assert_allclose(np.loadtxt(os.path.join(out, 'pose', f'{i}.txt')), poses[i], atol=1e-6)
    np.testing.assert_allclose(np.loadtxt(os.path.join(out, 'intrinsic', 'intrinsic_depth.txt')),
                               resize_intrinsic(K_depth, (8, 12), (4, 6)), atol=1e-6)
    frames = list(scannet.ScanNetFrames(out))
    assert [f.name for f in frames] == ['scene0001_00/0', 'scene0001_00/2', 'scene0001_00/4']
    np.testing.assert_allclose(frames[1].depth, depths[2][::2, ::2] / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(frames[1].intrinsic, scannet_intrinsic((4, 6)))
    assert frames[1].color.shape == (4, 6, 3) and frames[1].color.dtype == np.uint8
    frames = list(scannet.ScanNetFrames(out, intrinsic='scene'))
    np.testing.assert_allclose(frames[0].intrinsic, resize_intrinsic(K_depth, (8, 12), (4, 6)), atol=1e-6)


def test_resize_nearest_matches_opencv_rule():
    a = np.arange(30).reshape(5, 6)
    np.testing.assert_array_equal(resize_nearest(a, (2, 4)), a[[0, 2]][:, [0, 1, 3, 4]])


# ----------------------------------------------------------------------------- S3DIS
def _write_room(root, area, room, objects):
    ann = os.path.join(root, area, room, 'Annotations')
    os.makedirs(ann, exist_ok=True)
    for name, rows in objects.items():
        np.savetxt(os.path.join(ann, name + '.txt'), rows, fmt='%.3f %.3f %.3f %d %d %d')


def test_s3dis_rooms_round_trip_with_splits_and_clutter(tmp_path):
    rng = np.random.default_rng(0)

    def rows(k):
        return np.hstack([np.round(rng.uniform(0, 5, (k, 3)), 3), rng.integers(0, 256, (k, 3))])

    office = {'chair_1': rows(4), 'wall_2': rows(3), 'stairs_1': rows(2), 'bookcase_1': rows(1)}
    _write_room(str(tmp_path / 's3dis'), 'Area_1', 'office_1', office)
    hall = {'ceiling_1': rows(3)}
    _write_room(str(tmp_path / 's3dis'), 'Area_5', 'hallway_6', hall)
    # the release's defect: a control byte separating two numbers on one line
    with open(tmp_path / 's3dis' / 'Area_5' / 'hallway_6' / 'Annotations' / 'ceiling_1.txt', 'a') as f:
        f.write('1.000 2.000\x103.000 10 20 30\n')
    # and a stray duplicate that must not be read twice
    np.savetxt(tmp_path / 's3dis' / 'Area_1' / 'office_1' / 'Annotations' / 'wall_2 (1).txt', office['wall_2'],
               fmt='%.3f')
    with pytest.warns(UserWarning):
        s3dis.main(['--s3dis_root', str(tmp_path / 's3dis'), '--out_dir', str(tmp_path / 'out')])
    train = formats.load_scene_3d(str(tmp_path / 'out' / 'train' / 'Area_1_office_1.pth'))
    order = ['bookcase_1', 'chair_1', 'stairs_1', 'wall_2']  # sorted file names
    expected = np.vstack([office[k] for k in order])
    np.testing.assert_allclose(train.coords, expected[:, :3], atol=1e-6)
    np.testing.assert_allclose(train.colors, expected[:, 3:] / 127.5 - 1, atol=1e-6)
    L = S3DIS_LABELS_13.index
    assert train.labels.tolist() == [L('bookcase')] + [L('chair')] * 4 + [L('clutter')] * 2 + [L('wall')] * 3
    val = formats.load_scene_3d(str(tmp_path / 'out' / 'val' / 'Area_5_hallway_6.pth'))
    assert len(val.labels) == 4 and set(val.labels.tolist()) == {L('ceiling')}
    np.testing.assert_allclose(val.coords[-1], [1, 2, 3])
    assert formats.list_scenes(str(tmp_path / 'out'), 'val') == [str(tmp_path / 'out' / 'val' / 'Area_5_hallway_6.pth')]


def test_s3dis_bad_annotation_names_the_file(tmp_path):
    _write_room(str(tmp_path), 'Area_2', 'office_1', {})
    with open(tmp_path / 'Area_2' / 'office_1' / 'Annotations' / 'chair_1.txt', 'w') as f:
        f.write('1 2 3 4 5\n')
    with pytest.raises(ValueError, match='chair_1.txt'):
        s3dis.process_room(str(tmp_path / 'Area_2' / 'office_1'))


# ----------------------------------------------------------------------------- frames -> fusion
def _backproject(depth_m, K, pose, pixels):
    pts = []
    for r, c in pixels:
        z = depth_m[r, c]
        cam = np.array([(c - K[0, 2]) * z / K[0, 0], (r - K[1, 2]) * z / K[1, 1], z])
        pts.append(pose[:3, :3] @ cam + pose[:3, 3])
    return np.array(pts)


class PixelFeature:
    feat_dim = 2

    def __call__(self, frame):
        h, w = frame.depth.shape
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
        return torch.stack([r, c]).float()


@pytest.mark.parametrize('area_dir', ['area_5b', 'area_1'])
def test_2d3ds_frames_convert_world_to_camera_and_feed_fusion(tmp_path, area_dir):
    from PIL import Image
    data = tmp_path / area_dir / 'data'
    for sub in ('rgb', 'depth', 'pose'):
        os.makedirs(data / sub)
    scene = 'Area_5_office_1' if area_dir == 'area_5b' else 'Area_1_office_1'
    c2w = np.eye(4)
    a = np.deg2rad(40)
    c2w[:3, :3] = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) @ \
        np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    c2w[:3, 3] = (3.0, -1.0, 1.4)
    w2c = np.linalg.inv(c2w)
    K = np.array([[40.0, 0, 31.5], [0, 40.0, 31.5], [0, 0, 1]])
    raw = np.full((64, 64), 1024, np.uint16)  # 2 m at 1/512 m
    raw[30:34, 20:24] = 65535  # missing
    for uuid, room in (('0a1b', 'office_1'), ('ffee', 'office_10')):
        stem = f'camera_{uuid}_{room}_frame_0'
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data / 'rgb' / f'{stem}_domain_rgb.png')
        Image.fromarray(raw).save(data / 'depth' / f'{stem}_domain_depth.png')
        with open(data / 'pose' / f'{stem}_domain_pose.json', 'w') as f:
            json.dump({'camera_k_matrix': K.tolist(), 'camera_rt_matrix': w2c[:3].tolist(), 'frame_num': 0,
                       'camera_uuid': uuid, 'room': f'{room}_5'}, f)
    frames = list(s3dis.Stanford2D3DSFrames(str(tmp_path), scene))
    assert len(frames) == 1 and frames[0].name == f'{scene}/camera_0a1b_office_1_frame_0'
    f = frames[0]
    if area_dir == 'area_5b':  # moved into Area_5's frame: rotated -90 degrees about z, then shifted
        expected = np.eye(4)
        expected[:3, :3] = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]]) @ c2w[:3, :3]
        expected[:3, 3] = (-1.0 - 4.09703582, -3.0 + 6.22617759, 1.4)
        np.testing.assert_allclose(f.pose, expected, atol=1e-7)
    else:
        np.testing.assert_allclose(f.pose, c2w, atol=1e-9)
    assert f.depth[0, 0] == 2.0 and f.depth[31, 21] == 0.0
    pixels = [(12, 15), (40, 50), (31, 11)]
    points = _backproject(f.depth, K, f.pose, pixels)
    feat, mask = fuse_features(points, frames, PixelFeature())
    assert mask.all()
    np.testing.assert_array_equal(feat.numpy(), pixels)  # each point reads back the pixel it came from
    # resized frames keep the geometry: the same points land on the scaled pixels
    small = list(s3dis.Stanford2D3DSFrames(str(tmp_path), scene, image_size=(32, 32)))[0]
    assert small.depth.shape == (32, 32)
    feat, mask = fuse_features(points, [small], PixelFeature(), cut_bound=2)
    assert mask.all()
    assert np.abs(feat.numpy() - np.array(pixels) / 2).max() <= 1.0


def test_scannet_frames_feed_fusion_consistently(tmp_path):
    path, colors, depths, poses, K_depth = _sens_fixture(tmp_path)
    out = str(tmp_path / 'scene0001_00')
    scannet.export_frames(path, out, frame_skip=1, image_hw=(8, 12))
    frames = list(scannet.ScanNetFrames(out, intrinsic='scene'))
    f = frames[1]
    pixels = [(r, c) for r in range(8) for c in range(12) if f.depth[r, c] > 0][:10]
    points = _backproject(f.depth, f.intrinsic, f.pose, pixels)
    feat, mask = fuse_features(points, [f], PixelFeature(), cut_bound=0)
    assert mask.all()
    np.testing.assert_array_equal(feat.numpy(), pixels)
