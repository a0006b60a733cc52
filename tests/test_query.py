"""query.py on a network trained here (a few seconds on the tiny rooms of tests/test_esg.py): class queries
find their class, ``labels`` = the class names reproduces evaluate.py, the score is what pipeline/query.py says it
is, free text goes through open_clip, own scans (PLY, mesh PLY, .pth) and large ones (tiles) go through."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import EVAL_CONFIG, make_tiny_dataset, train_argv
from plyfile import PlyData, PlyElement

from dataset.formats import list_scenes, load_fused_features, load_scene_3d, save_scene_3d, scene_name
from dataset.label_constants import dataset_info
from util.config import load_config

pytestmark = pytest.mark.slow

NAMES = dataset_info('scannet').labels


def argv(root, data, out, **overrides):
    opts = dict(model_path=os.path.join(root, 'esg', 'last.pth'), save_folder=os.path.join(root, out),
                test_repeats=2, workers=0)
    opts.update(overrides)
    args = ['--config', EVAL_CONFIG] + list(data)
    for k, v in opts.items():
        args += [k, str(v)]
    return args


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """ESG trained for 8 epochs on 4 tiny rooms (floor, wall, one box each) towards noisy class embeddings."""
    import train_esg
    root = str(tmp_path_factory.mktemp('query'))
    data = make_tiny_dataset(root, n_train=4, n_val=2)
    train_esg.main(train_argv(root, data, epochs=8, evaluate=False, base_lr=3e-4, batch_size=1))
    return root, data


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_class_queries_rank_their_class_first(trained):
    """The Done-when test: for each class present, the top 10 % points of its query are more often that class
    than the class's share of the scene."""
    import query
    root, data = trained
    query.main(argv(root, data, 'q_classes', queries='wall;floor;cabinet;bed'))
    checked = 0
    for path in list_scenes(os.path.join(root, '3d'), 'val'):
        name = scene_name(path)
        stats = read_json(os.path.join(root, 'q_classes', f'{name}_queries.json'))['queries']
        for q, s in stats.items():
            if s['class_frequency'] == 0:
                assert 'top_precision' not in s  # the class is not in this room
                continue
            assert s['top_precision'] > s['class_frequency'], (name, q, s['top_precision'], s['class_frequency'])
            checked += 1
        # the PLY holds every point with its score, the heat map and the scan's colours
        vertex = PlyData.read(os.path.join(root, 'q_classes', f'{name}_floor.ply'))['vertex']
        n = load_scene_3d(path).coords.shape[0]
        assert vertex.count == n and vertex['score'].dtype == np.float32
        assert {'scan_red', 'scan_green', 'scan_blue', 'red'} <= {p.name for p in vertex.properties}
        assert stats['floor']['max'] == pytest.approx(float(vertex['score'].max()), abs=1e-6)
        assert os.path.getsize(os.path.join(root, 'q_classes', f'{name}_floor.png')) > 0
    assert checked == 2 * 3  # wall, floor and the room's box class (cabinet or bed) in both rooms


def test_one_colour_scale_for_the_queries_of_a_scene(trained):
    """Two queries of a scene are drawn on one scale (the 1st-99th percentiles of all their scores), so their
    pictures compare; it is written beside each query's statistics."""
    import query
    root, data = trained
    query.main(argv(root, data, 'q_scale', queries='wall;floor;bed', scenes='scene0101_00'))
    stats = read_json(os.path.join(root, 'q_scale', 'scene0101_00_queries.json'))['queries']
    scales = {tuple(s['color_scale']) for s in stats.values()}
    assert len(scales) == 1
    lo, hi = scales.pop()
    ply = PlyData.read(os.path.join(root, 'q_scale', 'scene0101_00_wall.ply'))['vertex']
    scores = np.stack([PlyData.read(os.path.join(root, 'q_scale', f'scene0101_00_{q}.ply'))['vertex']['score']
                       for q in ('wall', 'floor', 'bed')], 1)
    assert len(ply['score']) == len(scores)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(scores.astype(np.float64), [1, 99])), rel=1e-5)


def test_labels_equal_to_class_names_reproduce_evaluate(trained):
    import evaluate
    import query
    root, data = trained
    result = evaluate.main(argv(root, data, 'q_eval', save_ply=False, save_png=False))
    summary = query.main(argv(root, data, 'q_labels', labels=';'.join(NAMES)))
    assert summary['miou'] == result['miou']
    subset = query.main(argv(root, data, 'q_one', labels=';'.join(NAMES), scenes='scene0101_00'))
    assert list(subset['scenes']) == ['scene0101_00']
    for path in list_scenes(os.path.join(root, '3d'), 'val'):
        name = scene_name(path)
        expected = np.load(os.path.join(root, 'q_eval', f'{name}_pred.npy'))
        assert np.array_equal(np.load(os.path.join(root, 'q_labels', f'{name}_pred.npy')), expected)
        if name == 'scene0101_00':  # answered alone, the scene keeps its voxelisations
            assert np.array_equal(np.load(os.path.join(root, 'q_one', f'{name}_pred.npy')), expected)
    # another label set: indices into it, its own palette and legend
    query.main(argv(root, data, 'q_other', labels='floor;wall;table', scenes='scene0100_00'))
    pred = np.load(os.path.join(root, 'q_other', 'scene0100_00_pred.npy'))
    assert set(np.unique(pred)) <= {0, 1, 2}
    labels = read_json(os.path.join(root, 'q_other', 'labels.json'))
    assert labels['labels'] == ['floor', 'wall', 'table'] and len(labels['colors']) == 3
    assert os.path.getsize(os.path.join(root, 'q_other', 'legend.png')) > 0
    # a name of the data set keeps its class colour in any label set
    palette = [list(c) for c in dataset_info('scannet').palette]
    assert labels['colors'] == [palette[1], palette[0], palette[6]]


def test_another_label_set_is_scored_only_where_its_names_are_classes(trained):
    """On a split with GT, a custom label set is scored against GT through the class names it shares with the
    data set: GT points of other classes are not scored (earlier: a crash, or another class's points counted as
    the label at the same index), and the summary says which classes were scored."""
    import query
    from pipeline.metric import confusion_matrix, evaluate_confusion
    root, data = trained
    labels = ['wall', 'floor', 'bed', 'sofa']  # sofa: a ScanNet class these rooms do not have
    summary = query.main(argv(root, data, 'q_custom', labels=';'.join(labels)))
    index = {'wall': 0, 'floor': 1, 'bed': 2}
    conf = 0
    for path in list_scenes(os.path.join(root, '3d'), 'val'):
        gt = load_scene_3d(path)[2]
        mapped = np.array([index.get(NAMES[c], 255) if c != 255 else 255 for c in gt])
        conf = conf + confusion_matrix(np.load(os.path.join(root, 'q_custom', f'{scene_name(path)}_pred.npy')),
                                       mapped, len(labels))
    expected = evaluate_confusion(conf, labels)
    assert summary['scored_classes'] == ['wall', 'floor', 'bed']  # present in GT and classes of ScanNet
    assert summary['miou'] == pytest.approx(expected['miou_present'])
    assert set(summary['iou']) == {'wall', 'floor', 'bed'}


def test_score_is_the_mean_cosine_over_voxelisations(trained):
    """Oracle: the network run by hand on the evaluation's voxelisations (item repeat_item(i, r, scenes)), cosine
    similarity to the class's text embedding, averaged over the repeats."""
    import query
    from dataset.point_loader import repeat_item
    from pipeline.inference import forward_voxels
    from pipeline.networks import build_model
    from pipeline.stage import eval_split, network_values
    root, data = trained
    query.main(argv(root, data, 'q_oracle', queries='floor', scenes='scene0100_00', test_repeats=3))
    cfg = load_config(argv(root, data, 'unused', test_repeats=3), query.SCHEMA)
    model, _ = build_model(cfg.model_path, network_values(cfg), torch.device('cpu'), print)
    model.eval()
    dataset = eval_split(cfg, 'val')
    text = torch.from_numpy(np.load(os.path.join(root, 'text.npy'))[1])
    text = text / text.norm()
    scores = 0
    with torch.no_grad():
        for r in range(3):
            coords, feats, _, inverse = dataset[repeat_item(0, r, len(dataset.data_paths))]
            coords[:, 0] = 0
            f = forward_voxels(model, coords, feats, torch.device('cpu'))
            scores = scores + torch.nn.functional.cosine_similarity(f, text[None], dim=1)[inverse]
    written = PlyData.read(os.path.join(root, 'q_oracle', 'scene0100_00_floor.ply'))['vertex']['score']
    np.testing.assert_allclose(written, (scores / 3).numpy(), atol=2e-6)


def test_free_text_through_open_clip_and_query_embeddings(trained, tmp_path):
    """A query that is not a class name is encoded by open_clip (a tiny random model in the network's 512-d
    space); the same embedding given as query_embeddings gives the same scores."""
    import open_clip

    import query
    from pipeline.text_embeddings import encode_class_names
    root, data = trained
    tiny = {'embed_dim': 512, 'vision_cfg': {'image_size': 32, 'layers': 1, 'width': 64, 'patch_size': 16},
            'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 1}}
    config = tmp_path / 'tiny-clip-512.json'
    config.write_text(json.dumps(tiny))
    torch.manual_seed(0)
    model = open_clip.CLIP(**tiny).eval()
    ckpt = tmp_path / 'tiny.pt'
    torch.save(model.state_dict(), ckpt)
    clip = dict(clip_model=str(config), clip_pretrained=str(ckpt), prompt_template='a {} in a scene',
                scenes='scene0100_00')
    query.main(argv(root, data, 'q_clip', queries='a soft place to sit;floor', **clip))
    sources = read_json(os.path.join(root, 'q_clip', 'labels.json'))['query_sources']
    assert sources[0].startswith('open_clip') and sources[1] == "class 'floor' of scannet"
    emb = encode_class_names(model, open_clip.get_tokenizer('ViT-B-32'), ['a soft place to sit'], 'a {} in a scene')
    np.save(tmp_path / 'q.npy', emb.numpy())
    query.main(argv(root, data, 'q_npy', queries='a soft place to sit', query_embeddings=str(tmp_path / 'q.npy'),
                    scenes='scene0100_00'))
    a = PlyData.read(os.path.join(root, 'q_clip', 'scene0100_00_a_soft_place_to_sit.ply'))['vertex']['score']
    b = PlyData.read(os.path.join(root, 'q_npy', 'scene0100_00_a_soft_place_to_sit.ply'))['vertex']['score']
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match='dimension 64'):  # a 64-d CLIP cannot score 512-d features
        tiny64 = dict(tiny, embed_dim=64)
        config.write_text(json.dumps(tiny64))
        torch.save(open_clip.CLIP(**tiny64).state_dict(), ckpt)
        query.main(argv(root, data, 'q_bad', queries='a lamp', **clip))


def scan_files(root, folder):
    """Val room 0 written as a scanner app would (binary PLY, float xyz + normals + confidence, uchar rgb), as a
    mesh PLY and as a .pth, all with the same 8-bit colours."""
    scene = load_scene_3d(list_scenes(os.path.join(root, '3d'), 'val')[0])
    rgb = np.clip(np.rint((scene.colors + 1) * 127.5), 0, 255).astype(np.uint8)
    n = len(rgb)
    v = np.empty(n, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('nx', '<f4'), ('ny', '<f4'), ('nz', '<f4'),
                           ('red', 'u1'), ('green', 'u1'), ('blue', 'u1'), ('confidence', '<f4')])
    for i, a in enumerate('xyz'):
        v[a] = scene.coords[:, i]
    v['nx'] = v['ny'] = 0
    v['nz'] = 1
    v['red'], v['green'], v['blue'] = rgb.T
    v['confidence'] = 1
    os.makedirs(folder, exist_ok=True)
    PlyData([PlyElement.describe(v, 'vertex')], text=False).write(os.path.join(folder, 'scan.ply'))
    faces = np.array([([i, i + 1, i + 2],) for i in range(0, n - 2, 3)], dtype=[('vertex_indices', 'i4', (3,))])
    PlyData([PlyElement.describe(v, 'vertex'),
             PlyElement.describe(faces, 'face')]).write(os.path.join(folder, 'mesh.ply'))
    save_scene_3d(os.path.join(folder, 'room.pth'), scene.coords, rgb / 127.5 - 1, np.full(n, 255))
    return n


def test_own_scans_ply_mesh_and_pth(trained):
    import query
    root, data = trained
    folder = os.path.join(root, 'scans')
    n = scan_files(root, folder)
    preds = {}
    for name in ('scan.ply', 'mesh.ply', 'room.pth'):
        out = f'q_{name.replace(".", "_")}'
        summary = query.main(argv(root, data, out, input=os.path.join(folder, name), queries='floor'))
        stem = os.path.splitext(name)[0]
        assert list(summary['scenes']) == [stem] and 'miou' not in summary  # no GT in a scan
        labelled = PlyData.read(os.path.join(root, out, f'{stem}_pred.ply'))['vertex']
        assert labelled.count == n
        preds[name] = np.asarray(labelled['label'])
        assert np.array_equal(preds[name], np.load(os.path.join(root, out, f'{stem}_pred.npy')))
        assert os.path.getsize(os.path.join(root, out, f'{stem}_pred.png')) > 0
    assert np.array_equal(preds['scan.ply'], preds['mesh.ply'])   # the mesh's vertices are the point set
    # the .pth path stores the same 8-bit colours as [-1, 1] floats: the same input up to rounding
    assert (preds['scan.ply'] == preds['room.pth']).mean() > 0.99
    # a folder: every scan, each named after its file
    summary = query.main(argv(root, data, 'q_folder', input=folder))
    assert sorted(summary['scenes']) == ['mesh', 'room', 'scan']


def write_xyz_ply(path, xyz, rgb):
    v = np.empty(len(xyz), dtype=[('x', '<f8'), ('y', '<f8'), ('z', '<f8'), ('red', 'u1'), ('green', 'u1'),
                                  ('blue', 'u1')])
    v['x'], v['y'], v['z'] = xyz.T
    v['red'], v['green'], v['blue'] = rgb.T
    PlyData([PlyElement.describe(v, 'vertex')], text=False).write(path)
    return path


def test_own_scan_frames_outputs_overlay_the_input(trained):
    """A y-up scan without ``input_up_axis y`` is refused (its floor would be read as a wall); with it, and for a
    georeferenced scan (offsets of 10^5-10^6 m, float64), the output PLYs are in the scan's own frame and unit, to
    the millimetre, and the labels are those of the z-up scan; a scan in millimetres without input_scale is refused."""
    import query
    root, data = trained
    scene = load_scene_3d(list_scenes(os.path.join(root, '3d'), 'val')[0])
    rgb = np.clip(np.rint((scene.colors + 1) * 127.5), 0, 255).astype(np.uint8)
    xyz = scene.coords.astype(np.float64)
    folder = os.path.join(root, 'frames')
    os.makedirs(folder, exist_ok=True)
    z_up = write_xyz_ply(os.path.join(folder, 'zup.ply'), xyz, rgb)
    y_up = write_xyz_ply(os.path.join(folder, 'yup.ply'), np.stack([xyz[:, 0], xyz[:, 2], -xyz[:, 1]], 1), rgb)
    geo_xyz = xyz + np.array([512345.678, 4123456.789, 87.5])
    geo = write_xyz_ply(os.path.join(folder, 'geo.ply'), geo_xyz, rgb)
    mm = write_xyz_ply(os.path.join(folder, 'mm.ply'), xyz * 1000, rgb)
    query.main(argv(root, data, 'f_z', input=z_up))
    reference = np.load(os.path.join(root, 'f_z', 'zup_pred.npy'))
    with pytest.raises(ValueError, match=r"largest plane is vertical.*looks y-up: give input_up_axis y"):
        query.main(argv(root, data, 'f_y_bad', input=y_up))
    query.main(argv(root, data, 'f_y', input=y_up, input_up_axis='y'))
    out = PlyData.read(os.path.join(root, 'f_y', 'yup_pred.ply'))['vertex']
    np.testing.assert_allclose(np.stack([out['x'], out['y'], out['z']], 1), PlyData.read(y_up)['vertex'].data[
        ['x', 'y', 'z']].tolist(), atol=1e-6)
    assert (np.load(os.path.join(root, 'f_y', 'yup_pred.npy')) == reference).mean() > 0.99
    query.main(argv(root, data, 'f_geo', input=geo, queries='floor'))
    for name in ('geo_pred.ply', 'geo_floor.ply'):
        out = PlyData.read(os.path.join(root, 'f_geo', name))['vertex']
        assert out['x'].dtype == np.float64
        assert np.abs(np.stack([out['x'], out['y'], out['z']], 1) - geo_xyz).max() < 1e-3  # a millimetre
    with pytest.raises(ValueError, match=r"spans 5..\.00 m after input_scale 1, but an indoor room.*input_scale 0.001"):
        query.main(argv(root, data, 'f_mm', input=mm))
    query.main(argv(root, data, 'f_mm_ok', input=mm, input_scale=0.001))
    assert (np.load(os.path.join(root, 'f_mm_ok', 'mm_pred.npy')) == reference).mean() > 0.99


def test_large_scans_run_in_tiles(trained, monkeypatch):
    """max_voxels cuts a voxelisation into tiles with a margin of context; inside the tiles the prediction is
    the whole scene's (the U-Net's receptive field is larger than the margin, so not everywhere)."""
    import pipeline.inference as inference
    import query
    root, data = trained
    calls = []
    original = inference.forward_voxels

    def counting(model, coords, *args, **kwargs):
        calls.append(coords.shape[0])
        return original(model, coords, *args, **kwargs)

    monkeypatch.setattr(inference, 'forward_voxels', counting)
    query.main(argv(root, data, 'q_whole', scenes='scene0100_00', test_repeats=1))
    whole_voxels = calls[0]
    calls.clear()
    query.main(argv(root, data, 'q_tiles', scenes='scene0100_00', test_repeats=1, max_voxels=whole_voxels // 3,
                    tile_margin=0.15))
    assert len(calls) >= 3 and max(calls) < whole_voxels
    a = np.load(os.path.join(root, 'q_whole', 'scene0100_00_pred.npy'))
    b = np.load(os.path.join(root, 'q_tiles', 'scene0100_00_pred.npy'))
    assert (a == b).mean() > 0.8, (a == b).mean()


def test_fusion_and_ess_features(trained):
    """feature_type fusion / ess answer from the fused features: cosine similarity on covered points, 0 where
    no view saw the point (reported as uncovered)."""
    import query
    root, data = trained
    feat_root = os.path.join(root, 'feat')
    query.main(argv(root, data, 'q_fusion', queries='floor', feature_type='fusion', scenes='scene0100_00'))
    query.main(argv(root, data, 'q_ess', queries='floor', feature_type='ess', ess_embedding_path=feat_root,
                    scenes='scene0100_00'))
    n = load_scene_3d(list_scenes(os.path.join(root, '3d'), 'val')[0]).coords.shape[0]
    feat, mask = load_fused_features(os.path.join(feat_root, 'scene0100_00_0.pt'), num_points=n)
    text = np.load(os.path.join(root, 'text.npy'))[1]
    expected = np.zeros(n, np.float32)
    f = feat.float().numpy()
    expected[mask.numpy()] = f @ text / np.linalg.norm(f, axis=1) / np.linalg.norm(text)
    for out in ('q_fusion', 'q_ess'):
        score = PlyData.read(os.path.join(root, out, 'scene0100_00_floor.ply'))['vertex']['score']
        np.testing.assert_allclose(score, expected, atol=1e-5)
        scene = read_json(os.path.join(root, out, 'scene0100_00_queries.json'))
        assert scene['coverage'] == pytest.approx(mask.float().mean().item())
        assert scene['queries']['floor']['num_points'] == int(mask.sum())  # the statistics skip uncovered points


@pytest.mark.parametrize('overrides, error, message', [
    (dict(scenes='scene9999_00'), ValueError, r"scenes \['scene9999_00'\] are not in"),
    (dict(queries='floor;Floor'), ValueError, 'given twice'),
    (dict(feature_type='ess', ess_embedding_path=''), ValueError, 'needs ess_embedding_path'),
    (dict(feature_type='ensemble'), ValueError, "'feature_type' must be one of distill, fusion, ess"),
    (dict(input='scans/scan.ply', feature_type='fusion'), ValueError, 'own scans'),
    (dict(input='scans/scan.ply', scenes='scene0100_00'), ValueError, 'either input'),
    (dict(queries='floor;wall', query_embeddings='text.npy'), ValueError, 'expected 2 rows'),
])
def test_mistakes_are_errors(trained, overrides, error, message):
    import query
    root, data = trained
    scan_files(root, os.path.join(root, 'scans'))
    for key in ('input', 'query_embeddings'):
        if key in overrides:
            overrides[key] = os.path.join(root, overrides[key])
    with pytest.raises(error, match=message):
        query.main(argv(root, data, 'q_error', **overrides))
