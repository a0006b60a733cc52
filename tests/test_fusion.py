"""Multi-view fusion and 2D feature sources: exact projections, visibility, means, file output."""
import os

import numpy as np
import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from dataset import formats  # noqa: E402
from prep.feature_sources import OpenClipDenseFeatureSource, PrecomputedFeatureSource  # noqa: E402
from prep.frames import FrameData, project_points, scannet_intrinsic  # noqa: E402
from prep.fusion import compute_mapping, fuse_features, save_scene_features  # noqa: E402
from prep.fusion import main as fusion_main

H, W = 40, 60
K = np.array([[50.0, 0, 30.0], [0, 50.0, 20.0], [0, 0, 1]])


def rot_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def camera_pose(deg=30.0, t=(1.0, -2.0, 0.5)):
    pose = np.eye(4)
    pose[:3, :3] = rot_z(deg) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])  # some camera-to-world rotation
    pose[:3, 3] = t
    return pose


def to_world(pose, cam_points):
    return cam_points @ pose[:3, :3].T + pose[:3, 3]


def pixel_point(pose, row, col, z):
    """World point that the camera (K, pose) sees at pixel (row, col) with depth z."""
    x = (col - K[0, 2]) * z / K[0, 0]
    y = (row - K[1, 2]) * z / K[1, 1]
    return to_world(pose, np.array([[x, y, z]]))[0]


class PixelCoordinates:
    """Feature source whose feature at (row, col) of frame i is (row, col, 100 i): reveals where each point read."""
    feat_dim = 3

    def __init__(self, scale=1):
        self.scale, self.calls = scale, []

    def __call__(self, frame):
        self.calls.append(frame.name)
        h, w = frame.depth.shape[0] // self.scale, frame.depth.shape[1] // self.scale
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
        fid = float(frame.name.split('/')[-1])
        return torch.stack([rows.float(), cols.float(), torch.full((h, w), 100.0 * fid)])


def frame(pose, depth, fid=0):
    return FrameData(color=np.zeros((H, W, 3), np.uint8), depth=depth, intrinsic=K, pose=pose, name=f'scene/{fid}')


def test_known_camera_projects_known_points_to_known_pixels():
    pose = camera_pose()
    pixels = [(15, 20, 2.0), (33, 11, 1.25), (20, 30, 4.0), (12, 47, 3.5)]
    points = np.stack([pixel_point(pose, r, c, z) for r, c, z in pixels])
    u, v, z = project_points(torch.from_numpy(points), K, pose)
    np.testing.assert_allclose(v.numpy(), [p[0] for p in pixels], atol=1e-9)
    np.testing.assert_allclose(u.numpy(), [p[1] for p in pixels], atol=1e-9)
    np.testing.assert_allclose(z.numpy(), [p[2] for p in pixels], atol=1e-9)
    depth = torch.zeros(H, W)
    for r, c, d in pixels:
        depth[r, c] = d
    idx, row, col = compute_mapping(torch.from_numpy(points), depth, K, pose, cut_bound=10)
    # (33, 11) lies within 10 px of the bottom border (H - 10 = 30): cut, as OpenScene's cut_bound
    assert idx.tolist() == [0, 2, 3]
    assert row.tolist() == [15, 20, 12] and col.tolist() == [20, 30, 47]


def test_visible_point_gets_its_pixel_feature_and_occluded_point_does_not():
    pose = camera_pose()
    depth = np.full((H, W), 2.0, np.float32)  # a wall 2 m in front of the camera
    depth[25, 40] = 0.0  # no measurement
    points = np.stack([
        pixel_point(pose, 15, 20, 2.0),    # on the wall: visible
        pixel_point(pose, 18, 22, 3.0),    # 1 m behind the wall: occluded (|2 - 3| > 0.25 * 2)
        pixel_point(pose, 16, 35, 2.49),   # 0.49 m off: inside the relative threshold 0.5 m -> visible
        pixel_point(pose, 17, 36, 2.51),   # 0.51 m off: outside -> not visible
        pixel_point(pose, 25, 40, 2.0),    # lands on a pixel without depth
        pixel_point(pose, 5, 30, 2.0),     # inside the 10 px border
        to_world(pose, np.array([[0.1, 0.1, -2.0]]))[0],  # behind the camera
    ])
    source = PixelCoordinates()
    feat, mask = fuse_features(points, [frame(pose, depth, 3)], source)
    assert mask.tolist() == [True, False, True, False, False, False, False]
    np.testing.assert_array_equal(feat.numpy(), [[15, 20, 300], [16, 35, 300]])


def test_two_views_give_the_plain_mean_and_the_mask_is_the_set_of_seen_points():
    pose_a, pose_b = camera_pose(30.0), camera_pose(38.0, t=(1.2, -2.1, 0.45))
    rng = np.random.default_rng(0)
    # points seen by A at known pixels; the depth maps are made from the points themselves (a z-buffer)
    cam = np.stack([rng.uniform(-0.5, 0.5, 60), rng.uniform(-0.3, 0.3, 60), rng.uniform(1.5, 2.5, 60)], 1)
    points = to_world(pose_a, cam)

    def zbuffer(pose):
        u, v, z = (t.numpy() for t in project_points(torch.from_numpy(points), K, pose))
        depth = np.zeros((H, W), np.float32)
        r, c = np.round(v).astype(int), np.round(u).astype(int)
        ok = (r >= 0) & (r < H) & (c >= 0) & (c < W) & (z > 0)
        for i in np.argsort(-z):  # nearest point wins
            if ok[i]:
                depth[r[i], c[i]] = z[i]
        return depth, r, c, ok

    da, ra, ca, _ = zbuffer(pose_a)
    db, rb, cb, _ = zbuffer(pose_b)
    fa, fb = frame(pose_a, da, 1), frame(pose_b, db, 2)
    feat, mask = fuse_features(points, [fa, fb], PixelCoordinates())
    seen_a = compute_mapping(torch.from_numpy(points), torch.from_numpy(da), K, pose_a)[0].numpy()
    seen_b = compute_mapping(torch.from_numpy(points), torch.from_numpy(db), K, pose_b)[0].numpy()
    assert len(seen_a) > 10 and len(seen_b) > 10 and len(np.intersect1d(seen_a, seen_b)) > 5
    expected_mask = np.zeros(len(points), bool)
    expected_mask[np.union1d(seen_a, seen_b)] = True
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
    expected = np.zeros((len(points), 3))
    count = np.zeros(len(points))
    for seen, r, c, fid in ((seen_a, ra, ca, 1), (seen_b, rb, cb, 2)):
        expected[seen] += np.stack([r[seen], c[seen], np.full(len(seen), 100.0 * fid)], 1)
        count[seen] += 1
    expected = expected[expected_mask] / count[expected_mask, None]
    np.testing.assert_allclose(feat.numpy(), expected, rtol=1e-6)
    # chunking over points changes nothing
    feat2, mask2 = fuse_features(points, [fa, fb], PixelCoordinates(), chunk_size=7)
    assert torch.equal(mask, mask2) and torch.equal(feat, feat2)
    # nor does accumulating block by block (frames read once per block)
    feat3, mask3 = fuse_features(points, [fa, fb], PixelCoordinates(), chunk_size=5, point_block_size=13)
    assert torch.equal(mask, mask3) and torch.equal(feat, feat3)
    with pytest.raises(ValueError, match='re-iterable'):
        fuse_features(points, iter([fa, fb]), PixelCoordinates(), point_block_size=13)


def openscene_mapping(points, depth, K, pose, vis_thres=0.25, cut_bound=10):
    """Oracle: OpenScene's PointCloudToImageMapper.compute_mapping, restated in numpy (image_dim = (W, H))."""
    coords = np.concatenate([points, np.ones((len(points), 1))], 1).T
    p = np.linalg.inv(pose) @ coords
    p[0] = p[0] * K[0, 0] / p[2] + K[0, 2]
    p[1] = p[1] * K[1, 1] / p[2] + K[1, 2]
    pi = np.round(p).astype(int)
    h, w = depth.shape
    inside = (pi[0] >= cut_bound) & (pi[1] >= cut_bound) & (pi[0] < w - cut_bound) & (pi[1] < h - cut_bound)
    d = depth[pi[1][inside], pi[0][inside]]
    inside[inside] = np.abs(d - p[2][inside]) <= vis_thres * d
    return np.nonzero(inside)[0], pi[1][inside], pi[0][inside]


def test_mapping_matches_openscene_on_random_scenes():
    rng = np.random.default_rng(1)
    for trial in range(5):
        pose = camera_pose(rng.uniform(0, 360), t=rng.uniform(-1, 1, 3))
        points = to_world(pose, np.stack([rng.uniform(-3, 3, 3000), rng.uniform(-2, 2, 3000),
                                          rng.uniform(0.2, 6, 3000)], 1))
        depth = rng.uniform(0.5, 6, (H, W))
        depth[rng.random((H, W)) < 0.1] = 0
        ours = compute_mapping(torch.from_numpy(points), torch.from_numpy(depth), K, pose)
        oracle = openscene_mapping(points, depth, K, pose)
        assert len(oracle[0]) > 100
        for a, b in zip(ours, oracle):
            np.testing.assert_array_equal(a.numpy(), b)


def test_feature_map_at_another_resolution_is_read_proportionally():
    pose = camera_pose()
    depth = np.full((H, W), 2.0, np.float32)
    pixels = [(15, 20), (16, 21), (29, 49)]
    points = np.stack([pixel_point(pose, r, c, 2.0) for r, c in pixels])
    feat, mask = fuse_features(points, [frame(pose, depth, 0)], PixelCoordinates(scale=2))
    assert mask.all()
    np.testing.assert_array_equal(feat[:, :2].numpy(), [[r // 2, c // 2] for r, c in pixels])


def test_frames_without_points_are_not_featurised_and_bad_poses_skipped():
    pose = camera_pose()
    points = np.stack([pixel_point(pose, 15, 20, 2.0)])
    away = camera_pose(210.0)  # looks the other way
    bad = pose.copy()
    bad[0, 0] = -np.inf  # ScanNet's marker of lost tracking
    source = PixelCoordinates()
    depth = np.full((H, W), 2.0, np.float32)
    feat, mask = fuse_features(points, [frame(away, depth, 1), frame(bad, depth, 2), frame(pose, depth, 3)], source)
    assert source.calls == ['scene/3'] and mask.tolist() == [True]
    feat, mask = fuse_features(points, [frame(away, depth, 1)], source)
    assert feat.shape == (0, 3) and not mask.any()


@pytest.mark.cuda
def test_cuda_matches_cpu():
    pose = camera_pose()
    rng = np.random.default_rng(2)
    points = to_world(pose, np.stack([rng.uniform(-1, 1, 500), rng.uniform(-1, 1, 500), rng.uniform(1, 3, 500)], 1))
    depth = rng.uniform(1, 3, (H, W)).astype(np.float32)
    a = fuse_features(points, [frame(pose, depth, 1)], PixelCoordinates(), device='cpu')
    b = fuse_features(points, [frame(pose, depth, 1)], PixelCoordinates(), device='cuda')
    assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0])


def test_scannet_default_intrinsics_are_openscenes():
    np.testing.assert_allclose(scannet_intrinsic((240, 320))[[0, 1, 0, 1], [0, 1, 2, 2]],
                               [288.935303, 288.935303, 159.5, 119.5], atol=1e-6)


def test_written_file_loads_with_the_formats_reader(tmp_path):
    feat = torch.randn(4, 8)
    mask = torch.tensor([True, False, True, True, False, True])
    paths = save_scene_features(str(tmp_path), 'scene0000_00', feat, mask)
    assert paths == [str(tmp_path / 'scene0000_00_0.pt')]
    f2, m2 = formats.load_fused_features(paths[0], num_points=6)
    assert f2.dtype == torch.float16 and torch.equal(m2, mask)
    np.testing.assert_allclose(f2.float().numpy(), feat.half().float().numpy())
    # OpenScene's training layout: k files, each the covered part of a random subset
    paths = save_scene_features(str(tmp_path / 'k'), 's', feat, mask, num_files=3, points_per_file=3)
    rows = {i: feat[r] for r, i in enumerate(torch.nonzero(mask).squeeze(1).tolist())}
    for p in paths:
        f, m = formats.load_fused_features(p, num_points=6)
        assert not (m & ~mask).any()
        for r, i in enumerate(torch.nonzero(m).squeeze(1).tolist()):
            assert torch.equal(f[r], rows[i].half())


# ----------------------------------------------------------------------------- CLI, end to end
def _write_scannet_like(root, pose, depth_m, points):
    from PIL import Image
    formats.save_scene_3d(os.path.join(root, '3d', 'train', 'scene0001_00_vh_clean_2.pth'), points,
                          np.zeros_like(points), np.zeros(len(points), np.int64))
    scene_dir = os.path.join(root, '2d', 'scene0001_00')
    for sub in ('color', 'depth', 'pose'):
        os.makedirs(os.path.join(scene_dir, sub), exist_ok=True)
    for fid in (0, 20):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(os.path.join(scene_dir, 'color', f'{fid}.jpg'))
        Image.fromarray(np.round(depth_m * 1000).astype(np.uint16)).save(os.path.join(scene_dir, 'depth', f'{fid}.png'))
        np.savetxt(os.path.join(scene_dir, 'pose', f'{fid}.txt'), pose)
    np.savetxt(os.path.join(root, 'K.txt'), np.vstack([np.hstack([K, [[0], [0], [0]]]), [0, 0, 0, 1]]))
    feats = os.path.join(root, 'feats', 'scene0001_00')
    os.makedirs(feats)
    rng = np.random.default_rng(0)
    maps = {fid: rng.standard_normal((H, W, 5)).astype(np.float32) for fid in (0, 20)}
    torch.save(torch.from_numpy(maps[0]), os.path.join(feats, '0.pt'))
    np.save(os.path.join(feats, '20.npy'), maps[20])
    return maps


def test_cli_fuses_precomputed_features_and_resumes(tmp_path):
    pose = camera_pose()
    depth = np.full((H, W), 2.0, np.float32)
    pixels = [(15, 20), (22, 40), (5, 5)]
    points = np.stack([pixel_point(pose, r, c, 2.0) for r, c in pixels]).astype(np.float32)
    maps = _write_scannet_like(str(tmp_path), pose, depth, points)
    argv = ['--dataset', 'scannet', '--data_root_3d', str(tmp_path / '3d'), '--split', 'train',
            '--data_root_2d', str(tmp_path / '2d'), '--output_dir', str(tmp_path / 'out'),
            '--feature_source', 'precomputed', '--feature_dir', str(tmp_path / 'feats'),
            '--intrinsic_file', str(tmp_path / 'K.txt'), '--device', 'cpu']
    fusion_main(argv)
    out = tmp_path / 'out' / 'scene0001_00_0.pt'
    feat, mask = formats.load_fused_features(str(out), num_points=3, feat_dim=5)
    assert mask.tolist() == [True, True, False]  # (5, 5) is inside the 10 px border
    expected = [(maps[0][r, c] + maps[20][r, c]) / 2 for r, c in pixels[:2]]
    np.testing.assert_allclose(feat.float().numpy(), expected, atol=2e-3)
    mtime = os.path.getmtime(out)
    fusion_main(argv)  # finished scenes are skipped
    assert os.path.getmtime(out) == mtime
    fusion_main(argv + ['--overwrite'])
    assert os.path.getmtime(out) >= mtime
    # other settings or other frames make the finished scene stale: recomputed without --overwrite
    mtime = os.stat(out).st_mtime_ns
    fusion_main(argv + ['--depth_threshold', '0.1'])
    assert os.stat(out).st_mtime_ns != mtime
    mtime = os.stat(out).st_mtime_ns
    np.save(os.path.join(tmp_path, 'feats', 'scene0001_00', '20.npy'), maps[20] * 2)
    fusion_main(argv + ['--depth_threshold', '0.1'])
    assert os.stat(out).st_mtime_ns != mtime
    # a scene without frames is reported at the end; the others are still fused
    formats.save_scene_3d(str(tmp_path / '3d' / 'train' / 'scene0002_00_vh_clean_2.pth'), points,
                          np.zeros_like(points), np.zeros(3, np.int64))
    os.remove(out)
    with pytest.raises(SystemExit, match=r"1 scene\(s\) could not be fused: scene0002_00: no exported frames"):
        fusion_main(argv)
    assert out.is_file() and not (tmp_path / 'out' / 'scene0002_00_0.pt').exists()


def test_precomputed_source_validates_its_files(tmp_path):
    src = PrecomputedFeatureSource(str(tmp_path))
    f = FrameData(np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.float32), K, np.eye(4), 's/1')
    with pytest.raises(FileNotFoundError, match=r"s/1'?\.pt"):
        src(f)
    os.makedirs(tmp_path / 's')
    np.save(tmp_path / 's' / '1.npy', np.zeros((8, 20, 30), np.float32))  # [D, H', W'] at half size
    assert tuple(src(f).shape) == (8, 20, 30)
    np.save(tmp_path / 's' / '1.npy', np.zeros((20, 30, 8), np.float32))  # [H', W', D]
    assert tuple(src(f).shape) == (8, 20, 30)
    np.save(tmp_path / 's' / '1.npy', np.zeros((20, 30), np.float32))
    with pytest.raises(ValueError, match='3 dimensions'):
        src(f)
    np.save(tmp_path / 's' / '1.npy', np.zeros((30, 30, 30), np.float32))  # both readings fit a square frame
    with pytest.raises(ValueError, match='cannot tell'):
        PrecomputedFeatureSource(str(tmp_path))(FrameData(f.color, np.zeros((30, 30)), K, np.eye(4), 's/1'))


# ----------------------------------------------------------------------------- dense CLIP features
def tiny_clip(seed=0):
    import open_clip
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=64, vision_cfg=dict(layers=2, width=48, head_width=16, patch_size=8,
                                                         image_size=32),
                           text_cfg=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1))
    return model.eval()


def test_dense_extractor_returns_unit_text_space_features_per_pixel():
    model = tiny_clip()
    src = OpenClipDenseFeatureSource(model=model)
    img = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    f = src(FrameData(img, np.zeros((24, 40)), K, np.eye(4), 's/0'))
    assert tuple(f.shape) == (64, 24, 40) and src.feat_dim == 64
    torch.testing.assert_close(f.norm(dim=0), torch.ones(24, 40))


def test_dense_extractor_equals_the_hand_computed_value_path():
    model = tiny_clip(1)
    src = OpenClipDenseFeatureSource(model=model, upsample=False)
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # native size: no resizing
    ours = src.dense_features(img)  # [64, 4, 4]
    v = model.visual
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        # open_clip's own forward up to the last block's input (patch tokens, NCHW)
        tokens = v.forward_intermediates(x, indices=[0], intermediates_only=True)['image_intermediates'][0]
        tok = tokens[0, :, 2, 1]  # patch (row 2, col 1)
        blk = v.transformer.resblocks[-1]
        C = tok.shape[0]
        val = blk.attn.in_proj_weight[2 * C:] @ blk.ln_1(tok) + blk.attn.in_proj_bias[2 * C:]
        out = blk.attn.out_proj.weight @ val + blk.attn.out_proj.bias
        expected = v.ln_post(out) @ v.proj
        expected = expected / expected.norm()
    torch.testing.assert_close(ours[:, 2, 1], expected, rtol=1e-4, atol=1e-5)
    # and it is not the ordinary attention output (q/k attention really skipped)
    with torch.no_grad():
        full = v.ln_post(blk(tokens.flatten(2).transpose(1, 2)))[0, 2 * 4 + 1] @ v.proj
    assert not torch.allclose(full / full.norm(), expected, atol=1e-3)


def test_missing_pretrained_weights_give_a_clear_error(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises((RuntimeError, FileNotFoundError), match='pretrained|checkpoint'):
        OpenClipDenseFeatureSource('ViT-B-16', '/nonexistent/open_clip_model.bin')
    with pytest.raises(RuntimeError, match='HF_HUB_OFFLINE'):
        OpenClipDenseFeatureSource('ViT-B-16', 'not_a_cached_tag_xyz')
