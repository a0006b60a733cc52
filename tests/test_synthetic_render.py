"""Ray-cast rendering of the synthetic rooms and fusion of the rendered frames (synthetic/render.py)."""
import numpy as np
import pytest

from dataset.label_constants import IGNORE_LABEL, dataset_info
from prep.frames import scannet_intrinsic
from synthetic.features import FeatureParams, make_text_embeddings
from synthetic.geometry import Primitive, Room
from synthetic.render import SimulatedFeatureSource, render_frame, rendered_fused_features
from synthetic.scan import look_at_pose, ray_cast
from synthetic.writer import make_scene


def _box_room():
    """Floor (z <= 0), a 1 m box (class 2) with its front face at x = 3, a wall (class 0) at x = 4."""
    prims = [Primitive('box', np.array([-10., -10., -1.]), np.array([10., 10., 0.]), 1, 0, np.array([.5, .4, .3]),
                       (5,), 1),
             Primitive('box', np.array([3., -0.5, 0.5]), np.array([3.5, 0.5, 1.5]), 2, 1, np.array([.6, .5, .3]),
                       (0, 1, 2, 3, 4, 5), 2),
             Primitive('box', np.array([4., -10., 0.]), np.array([4.2, 10., 3.]), 0, 2, np.array([.8, .8, .8]),
                       (0,), 0)]
    return Room('box_room', 'scannet', 'test', np.array([4., 4., 3.]), prims)


def test_depth_of_a_known_box_is_analytic():
    room = _box_room()
    pose = look_at_pose([0., 0., 1.], [1., 0., 1.])  # looking along +x: camera x = world -y, camera y = world -z
    hw = (48, 64)
    K = scannet_intrinsic(hw)
    out = render_frame(room, pose, K, hw)
    v, u = np.meshgrid(np.arange(hw[0], dtype=float), np.arange(hw[1], dtype=float), indexing='ij')
    a, b = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    # world point at z-depth t: (t, -a t, 1 - b t); the box's front face is hit where it projects
    on_box = (np.abs(a * 3) <= 0.5) & (1 - 3 * b >= 0.5) & (1 - 3 * b <= 1.5)
    floor_t = np.where(b > 0, 1 / np.where(b > 0, b, 1), np.inf)
    expected = np.where(on_box, 3.0, np.minimum(4.0, floor_t))
    assert on_box.sum() > 20 and (floor_t < 4).sum() > 20  # the test image shows all three surfaces
    np.testing.assert_allclose(out['depth'], expected, rtol=1e-5)
    expected_label = np.where(on_box, 2, np.where(floor_t < 4, 1, 0))
    np.testing.assert_array_equal(out['label'], expected_label)
    np.testing.assert_array_equal(out['color'][on_box],
                                  np.full((on_box.sum(), 3), np.round(np.array([.6, .5, .3]) * 255)))
    # beyond the sensor's range there is no measurement (depth 0, no label)
    far = render_frame(room, pose, K, hw, max_depth=3.5)
    assert (far['depth'][~on_box & (floor_t >= 3.5)] == 0).all()
    assert (far['label'][~on_box & (floor_t >= 3.5)] == IGNORE_LABEL).all()


def _oracle_coverage(room, points, views, K, hw, depth_threshold=0.25, cut_bound=10):
    """Points some fusion camera sees: projected inside the image minus the border, and the analytic depth
    along the ray of the pixel it lands on (not the depth image) agrees within the relative threshold."""
    H, W = hw
    seen = np.zeros(len(points), bool)
    for v in views:
        pose = room.camera_poses[v]
        cam = (points - pose[:3, 3]) @ pose[:3, :3]
        z = cam[:, 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            col = np.round(cam[:, 0] * K[0, 0] / z + K[0, 2])
            row = np.round(cam[:, 1] * K[1, 1] / z + K[1, 2])
        inside = (z > 0) & (col >= cut_bound) & (row >= cut_bound) & (col < W - cut_bound) & (row < H - cut_bound)
        idx = np.flatnonzero(inside)
        rays = np.stack([(col[idx] - K[0, 2]) / K[0, 0], (row[idx] - K[1, 2]) / K[1, 1], np.ones(len(idx))], 1)
        t, _ = ray_cast(pose[:3, 3], rays @ pose[:3, :3].T, room)
        d = np.where(np.isfinite(t) & (t >= 0.2) & (t <= 4.5), t, 0.0)
        seen[idx[(d > 0) & (np.abs(d - z[idx]) <= depth_threshold * d)]] = True
    return seen


def test_fused_coverage_equals_visible_points():
    info = dataset_info('scannet')
    text = make_text_embeddings(info, 64, 0)
    scene = make_scene(info, text, 'bedroom', 'scene9000_00', 9000, seed=0, num_points=3000)
    room, points = scene['room'], scene['coords'].astype(np.float64)
    hw = (60, 80)
    rng = np.random.default_rng(0)
    feat, mask, _ = rendered_fused_features(rng, room, points, text, image_hw=hw, feature_hw=(30, 40))
    expected = _oracle_coverage(room, points, room.fusion_views, scannet_intrinsic(hw), hw)
    assert 0.3 < expected.mean() < 1.0
    # float32 depth images versus float64 analytic depths may flip a point lying exactly on the threshold
    assert (mask != expected).sum() <= 2, ((mask & ~expected).sum(), (~mask & expected).sum())
    assert feat.shape == (mask.sum(), 64) and np.isfinite(feat).all()


def test_simulated_2d_model_is_deterministic_and_class_aligned():
    """Feature maps do not depend on call order; with no noise, confusion, blob or blur a pixel's feature is
    exactly its class' text embedding."""
    info = dataset_info('scannet')
    text = make_text_embeddings(info, 32, 1)
    room = _box_room()
    pose = look_at_pose([0., 0., 1.], [1., 0., 1.])
    out = render_frame(room, pose, scannet_intrinsic((24, 32)), (24, 32))
    clean = FeatureParams(view_noise=0.0, blob_probability=0.0, boundary_weight=0.0, isotropic_noise=0.0,
                          confusion_scale=0.0)
    src = SimulatedFeatureSource(text, clean, 'scannet', feature_hw=(24, 32))
    src.register(np.random.default_rng(0), 'f', out['feature_class'], out['depth'], 10.0, np.array([0, 1, 2]))

    class Frame:
        name = 'f'
    feat = src(Frame()).numpy()
    expected = text[out['feature_class']].transpose(2, 0, 1)
    np.testing.assert_allclose(feat, expected, atol=1e-6)
    noisy = FeatureParams()
    s1 = SimulatedFeatureSource(text, noisy, 'scannet', feature_hw=(12, 16))
    s2 = SimulatedFeatureSource(text, noisy, 'scannet', feature_hw=(12, 16))
    for s in (s1, s2):
        s.register(np.random.default_rng(5), 'f', out['feature_class'], out['depth'], 10.0, np.array([0, 1, 2]))
    a = s1(Frame()).numpy()
    assert np.array_equal(a, s1(Frame()).numpy()) and np.array_equal(a, s2(Frame()).numpy())
    assert not np.allclose(a, text[_nearest(out['feature_class'], (12, 16))].transpose(2, 0, 1))


def _nearest(img, hw):
    H, W = img.shape
    rows = ((2 * np.arange(hw[0]) + 1) * H) // (2 * hw[0])
    cols = ((2 * np.arange(hw[1]) + 1) * W) // (2 * hw[1])
    return img[rows][:, cols]


def test_make_scene_rejects_unknown_feature_mode():
    info = dataset_info('scannet')
    with pytest.raises(ValueError, match="'simulated' or 'rendered'"):
        make_scene(info, make_text_embeddings(info, 32, 0), 'bedroom', 'x', 0, features='raytraced')
