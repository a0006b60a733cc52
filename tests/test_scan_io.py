"""dataset/scan_io.py: one's own scans as scanner apps and mesh tools write them, and every bad file named."""
import os

import numpy as np
import pytest
from numpy.lib.recfunctions import repack_fields
from plyfile import PlyData, PlyElement

from dataset.formats import FormatError, save_scene_3d
from dataset.scan_io import ScanLoader, list_scans, read_scan


def scanner_vertices(n=500, seed=0):
    """What a phone / LiDAR scanner app exports: float xyz, float normals, uchar rgb, a float confidence."""
    rng = np.random.default_rng(seed)
    v = np.empty(n, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('nx', '<f4'), ('ny', '<f4'), ('nz', '<f4'),
                           ('red', 'u1'), ('green', 'u1'), ('blue', 'u1'), ('confidence', '<f4')])
    xyz = rng.uniform(0, 3, (n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    for i, a in enumerate('xyz'):
        v[a] = xyz[:, i]
    v['nx'], v['ny'], v['nz'] = 0, 0, 1
    v['red'], v['green'], v['blue'] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v['confidence'] = rng.random(n)
    return v, xyz, rgb


def write(path, elements, text=False, byte_order='<'):
    PlyData(elements, text=text, byte_order=byte_order).write(str(path))
    return str(path)


def test_scanner_app_ply_binary_with_extra_properties(tmp_path):
    v, xyz, rgb = scanner_vertices()
    path = write(tmp_path / 'scan.ply', [PlyElement.describe(v, 'vertex')])
    scene = read_scan(path)
    np.testing.assert_array_equal(scene.coords, xyz)
    # 0-255 -> [-1, 1], the loaders' convention (rgb / 127.5 - 1)
    np.testing.assert_allclose(scene.colors, rgb / 127.5 - 1.0, atol=1e-6)
    assert not scene.has_labels and (scene.labels == 255).all()
    # big-endian and ASCII files hold the same
    for name, kw in (('be.ply', dict(byte_order='>')), ('ascii.ply', dict(text=True))):
        other = read_scan(write(tmp_path / name, [PlyElement.describe(v, 'vertex')], **kw))
        np.testing.assert_allclose(other.coords, xyz, atol=1e-6)
        np.testing.assert_allclose(other.colors, scene.colors, atol=1e-6)


def test_mesh_ply_uses_its_vertices(tmp_path):
    v, xyz, rgb = scanner_vertices(n=30)
    faces = np.array([([0, 1, 2],), ([2, 3, 4],), ([5, 6, 7],)], dtype=[('vertex_indices', 'i4', (3,))])
    path = write(tmp_path / 'mesh.ply', [PlyElement.describe(v, 'vertex'), PlyElement.describe(faces, 'face')])
    scene = read_scan(path)
    assert scene.coords.shape == (30, 3)
    np.testing.assert_array_equal(scene.coords, xyz)


def test_colour_ranges_are_detected(tmp_path):
    n = 50
    rng = np.random.default_rng(1)
    rgb01 = rng.random((n, 3))
    for kind, values, expect in (('f4', rgb01, rgb01), ('f4', rgb01 * 255, rgb01), ('u2', (rgb01 * 65535).round(),
                                                                                    (rgb01 * 65535).round() / 65535)):
        v = np.empty(n, dtype=[('x', 'f8'), ('y', 'f8'), ('z', 'f8'), ('r', kind), ('g', kind), ('b', kind)])
        v['x'], v['y'], v['z'] = rng.random((3, n))
        v['r'], v['g'], v['b'] = values.T
        scene = read_scan(write(tmp_path / f'{kind}.ply', [PlyElement.describe(v, 'vertex')]))
        np.testing.assert_allclose(scene.colors, expect * 2 - 1, atol=1e-5)


def bad_file(tmp_path, case):
    v, _, _ = scanner_vertices(n=20)
    path = tmp_path / f'{case}.ply'
    if case == 'empty':
        return write(path, [PlyElement.describe(v[:0], 'vertex')])
    if case == 'nan':
        v['y'][3] = np.nan
        return write(path, [PlyElement.describe(v, 'vertex')])
    if case == 'no_colour':
        return write(path, [PlyElement.describe(repack_fields(v[['x', 'y', 'z', 'nx', 'ny', 'nz']]), 'vertex')])
    if case == 'no_z':
        return write(path, [PlyElement.describe(repack_fields(v[['x', 'y', 'red', 'green', 'blue']]), 'vertex')])
    if case == 'no_vertex':
        faces = np.array([([0, 1, 2],)], dtype=[('vertex_indices', 'i4', (3,))])
        return write(path, [PlyElement.describe(faces, 'face')])
    if case == 'garbage':
        path.write_bytes(b'this is not a ply file\n\x00\x01')
        return str(path)
    if case == 'truncated':
        write(path, [PlyElement.describe(v, 'vertex')])
        data = path.read_bytes()
        path.write_bytes(data[:-50])
        return str(path)
    if case == 'colour_range':
        w = np.empty(5, dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('red', 'f4'), ('green', 'f4'), ('blue', 'f4')])
        w['x'] = w['y'] = w['z'] = 0
        w['red'], w['green'], w['blue'] = 300, 10, 10
        return write(path, [PlyElement.describe(w, 'vertex')])
    raise AssertionError(case)


@pytest.mark.parametrize('case, message', [
    ('empty', 'empty'), ('nan', 'NaN or inf coordinates'), ('no_colour', 'expected vertex colours'),
    ('no_z', r"missing \['z'\]"), ('no_vertex', "expected a 'vertex' element"), ('garbage', 'cannot read it as a PLY'),
    ('truncated', 'cannot read it as a PLY'), ('colour_range', 'go up to 300')])
def test_bad_files_are_named_errors(tmp_path, case, message):
    path = bad_file(tmp_path, case)
    with pytest.raises(FormatError, match=message) as err:
        read_scan(path)
    assert path in str(err.value)  # the error names the file


def test_folder_pth_and_names(tmp_path):
    v, xyz, rgb = scanner_vertices(n=40)
    folder = tmp_path / 'scans'
    folder.mkdir()
    write(folder / 'b_room.ply', [PlyElement.describe(v, 'vertex')])
    save_scene_3d(str(folder / 'a_room.pth'), xyz, rgb / 127.5 - 1, np.zeros(40, np.int64))
    (folder / 'notes.txt').write_text('not a scan')
    files = list_scans(str(folder))
    assert [os.path.basename(f) for f in files] == ['a_room.pth', 'b_room.ply']
    pth = read_scan(files[0])
    assert pth.has_labels and (pth.labels == 0).all()  # a .pth scene keeps its labels (the project's format)
    save_scene_3d(str(folder / 'b_room.pth'), xyz, rgb / 127.5 - 1, np.zeros(40, np.int64))
    with pytest.raises(FormatError, match='share the name'):
        list_scans(str(folder))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        list_scans(str(tmp_path / 'nowhere.ply'))
    with pytest.raises(FormatError, match='extension'):
        list_scans(str(folder / 'notes.txt'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='no .ply or .pth'):
        list_scans(str(empty))


def test_y_up_scan_is_turned_z_up_and_scaled(tmp_path):
    v, xyz, _ = scanner_vertices(n=10)
    path = write(tmp_path / 'yup.ply', [PlyElement.describe(v, 'vertex')])
    scene = read_scan(path, up_axis='y', scale=0.5)
    # a proper rotation (det +1): y (up) -> z, z -> -y
    np.testing.assert_allclose(scene.coords, 0.5 * np.stack([xyz[:, 0], -xyz[:, 2], xyz[:, 1]], 1), atol=1e-6)
    with pytest.raises(ValueError, match='input_up_axis'):
        read_scan(path, up_axis='x')


def test_scan_loader_predicts_every_point(tmp_path):
    """The loader voxelises a scan like the evaluation loader: an inverse map covering every point."""
    v, xyz, _ = scanner_vertices(n=800)
    path = write(tmp_path / 'scan.ply', [PlyElement.describe(v, 'vertex')])
    loader = ScanLoader([path], voxel_size=0.1, seed=3)
    coords, feats, labels, inverse = loader[0]
    assert labels.shape == (800,) and inverse.shape == (800,)
    assert int(inverse.max()) == coords.shape[0] - 1 and feats.shape == (coords.shape[0], 3)
    assert feats.abs().max() <= 1.0
    again = ScanLoader([path], voxel_size=0.1, seed=3)[0]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(loader[0], again))  # seeded
