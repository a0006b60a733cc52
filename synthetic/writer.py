"""Writes a synthetic dataset in the on-disk formats of the real data (docs/formats.md): 3D scenes, fused
features (simulated, or rendered and fused), the text-embedding file; deterministic for a seed."""
import os
import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from dataset.formats import (
    load_fused_features,
    load_scene_3d,
    load_text_embeddings,
    save_fused_features,
    save_scene_3d,
    save_text_embeddings,
)
from dataset.label_constants import IGNORE_LABEL, DatasetInfo, dataset_info
from dataset.superpoints import segs_json_name, write_segs_json
from pipeline.metric import evaluate
from synthetic.features import (
    RENDERED_FEATURE_PARAMS,
    FeatureParams,
    make_query_embeddings,
    make_text_embeddings,
    plg_pseudo_labels,
    simulate_fused_features,
)
from synthetic.geometry import _seed
from synthetic.rooms import make_room, room_types
from synthetic.scan import OVERSAMPLE, POINT_NOISE_STD, UNSEEN_KEEP, camera_visibility, sample_points
from synthetic.segments import MIN_POINTS, TILE, scan_segments
from util.io import atomic_write_text
from util.progress import progress
from util.provenance import OutputManifest, array_digest

# the 'params' of the segs.json files the synthetic scenes get
SEGS_PARAMS = {'source': 'synthetic/segments.py', 'tile': TILE, 'min_points': MIN_POINTS}


def scene_names(info: DatasetInfo, num_train, num_val):
    """[(split, scene, room_type, global index)]: ScanNet 'scene%04d_00'; S3DIS 'Area_<a>_<type>_<i>'
    with area 5 for val and areas 1-4, 6 for train, as the real benchmark splits."""
    types = [t[0] for t in room_types(info.name)]
    out = []
    counters: Dict[Tuple[int, str], int] = {}
    for g in range(num_train + num_val):
        split = 'train' if g < num_train else 'val'
        k = g if split == 'train' else g - num_train
        rtype = types[k % len(types)]
        if info.name == 'scannet':
            out.append((split, f'scene{g:04d}_00', rtype, g))
        else:
            area = (1, 2, 3, 4, 6)[(k // len(types)) % 5] if split == 'train' else 5
            counters[(area, rtype)] = counters.get((area, rtype), 0) + 1
            out.append((split, f'Area_{area}_{rtype}_{counters[(area, rtype)]}', rtype, g))
    return out


def make_scene(info: DatasetInfo, text_embeddings, room_type, name, index, seed=0, num_points=20000,
               params: Optional[FeatureParams] = None, features='simulated'):
    """One scene: dict(room, coords f32 [N,3] (noisy), colors f32 [N,3] in [-1,1], labels int64 [N],
    clean_coords, primitive_index, visibility bool [V,N], feat f32 [M,D], mask_full bool [N], segments int64 [N]:
    ScanNet-like over-segmentation ids, synthetic/segments.py).

    features: 'simulated' (the formula on the analytic visibility, fast) or 'rendered' (depth / feature
    images ray-cast from the fusion cameras and fused by prep/fusion.py; synthetic/render.py).
    """
    if features not in ('simulated', 'rendered'):
        raise ValueError(f"features must be 'simulated' or 'rendered', found {features!r}")
    if params is None:
        params = FeatureParams() if features == 'simulated' else RENDERED_FEATURE_PARAMS
    rng, room, clean, prim_idx, visibility = scan_geometry(info, room_type, name, index, seed, num_points)
    prim_class = np.array([p.class_id for p in room.primitives])
    prim_feature = np.array([p.feature_class for p in room.primitives])
    prim_color = np.stack([p.color for p in room.primitives])
    labels = prim_class[prim_idx].astype(np.int64)
    colors = np.clip(prim_color[prim_idx] + rng.normal(0, 0.04, (num_points, 3)), 0, 1)
    coords = clean + rng.normal(0, POINT_NOISE_STD, clean.shape)
    # a few unannotated points scattered over the scene, on top of the unannotated objects
    labels[rng.random(num_points) < 0.01] = IGNORE_LABEL
    timing = {}
    if features == 'simulated':
        feat, mask = simulate_fused_features(rng, room, clean, prim_feature[prim_idx], visibility, text_embeddings,
                                             params)
    else:
        from synthetic.render import rendered_fused_features  # runs prep/fusion.py
        feat, mask, timing = rendered_fused_features(rng, room, coords, text_embeddings, params)
    return dict(timing=timing, room=room, coords=coords.astype(np.float32), colors=(colors * 2 - 1).astype(np.float32),
                labels=labels, clean_coords=clean, primitive_index=prim_idx, visibility=visibility,
                feat=feat, mask_full=mask, segments=scan_segments(room, clean, prim_idx))


def scan_geometry(info: DatasetInfo, room_type, name, index, seed=0, num_points=20000):
    """The room and the scan's points of one scene, before colours, noise and features: (rng, room, clean xyz
    float64 [N, 3], primitive index [N], fusion-view visibility bool [V, N]); ``rng`` continues the scene's draws."""
    rng = np.random.default_rng(_seed(seed, info.name, index))
    room = make_room(rng, info, room_type, name=name)
    # The mesh comes from every frame of the scan, the fusion from a subset (OpenScene fuses every 20th
    # frame): points no scan camera saw are mostly missing from a real mesh (holes), so keep only a few.
    clean, prim_idx = sample_points(rng, room, int(num_points * OVERSAMPLE))
    vis_scan = camera_visibility(room, clean)
    keep = np.flatnonzero(vis_scan.any(0) | (rng.random(len(clean)) < UNSEEN_KEEP))
    if len(keep) < num_points:
        raise RuntimeError(f'room {name}: only {len(keep)} of {num_points} points survive the scan simulation')
    keep = np.sort(rng.choice(keep, num_points, replace=False))
    clean, prim_idx = clean[keep], prim_idx[keep]
    return rng, room, clean, prim_idx, vis_scan[room.fusion_views][:, keep]


def write_demo_queries(out, name, info, text, seed):
    """``<out>/<name>_queries.txt`` (the phrases, ';'-separated) and ``<name>_query_embeddings.npy`` (their rows):
    query phrases the synthetic text space defines (``make_query_embeddings``), for ``query.py queries``."""
    phrases, rows = make_query_embeddings(info, text, seed)
    query_path = os.path.join(out, f'{name}_query_embeddings.npy')
    phrases_path = os.path.join(out, f'{name}_queries.txt')
    save_text_embeddings(query_path, rows)
    atomic_write_text(phrases_path, ';'.join(phrases) + '\n')
    return query_path, phrases_path


def make_synthetic_dataset(out, name, dataset='scannet', num_train=16, num_val=4, points_per_scene=20000,
                           seed=0, feat_dim=768, overwrite=False, params: Optional[FeatureParams] = None,
                           verbose=False, features='simulated'):
    """Write a synthetic dataset (module docstring) and return its paths and statistics.

    Returns dict(data_root, feature_root, text_embeddings_path, scenes {split: [names]}, stats {split:
    dict(scenes, points, coverage, plg_miou, plg_miou_present)}, seconds, skipped). Existing files are
    kept (and only re-read for the statistics) unless ``overwrite``, but only those that
    ``<name>_manifest.jsonl`` shows were made with these settings and text embeddings: others are remade.
    """
    info = dataset_info(dataset)
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f'need at least one scene, got num_train={num_train} num_val={num_val}')
    data_root = os.path.join(out, f'{name}_3d')
    feature_root = os.path.join(out, f'{name}_multiview')
    text_path = os.path.join(out, f'{name}_text_embeddings.npy')
    start = time.time()
    if overwrite or not os.path.isfile(text_path):
        text = make_text_embeddings(info, feat_dim, seed)
        save_text_embeddings(text_path, text)
    text = load_text_embeddings(text_path, info.num_classes, feat_dim)
    query_path, phrases_path = write_demo_queries(out, name, info, text, seed)
    result = dict(data_root=data_root, feature_root=feature_root, text_embeddings_path=text_path,
                  query_embeddings_path=query_path, query_phrases_path=phrases_path,
                  scenes={'train': [], 'val': []}, stats={}, skipped=0)
    preds = {'train': [], 'val': []}
    gts = {'train': [], 'val': []}
    covered = {'train': [0, 0], 'val': [0, 0]}
    settings = {'stage': 'synthetic', 'dataset': info.name, 'seed': seed, 'points_per_scene': points_per_scene,
                'feat_dim': feat_dim, 'features': features, 'params': repr(params),
                'text_embeddings': array_digest(text)}
    manifest = OutputManifest(out, f'{name}', settings)
    scenes = scene_names(info, num_train, num_val)
    for split, scene, rtype, g in progress(scenes, f'synthetic {info.name} rooms', log=print, unit='room'):
        file_name = scene + ('_vh_clean_2' if info.name == 'scannet' else '') + '.pth'
        scene_path = os.path.join(data_root, split, file_name)
        feat_path = os.path.join(feature_root, f'{scene}_0.pt')
        # ScanNet scenes also get ScanNet's over-segmentation file beside them (S3DIS releases none)
        segs_path = os.path.join(data_root, split, segs_json_name(scene)) if info.name == 'scannet' else None
        outputs = [scene_path, feat_path] + ([segs_path] if segs_path else [])
        current, _ = manifest.check(scene, [], outputs)
        if not current and not overwrite and segs_path and manifest.check(scene, [], outputs[:2])[0]:
            # made before the segments were exported: add them from the scene's geometry, the rest stays as it is
            _, room, clean, prim_idx, _ = scan_geometry(info, rtype, scene, g, seed, points_per_scene)
            write_segs_json(segs_path, scan_segments(room, clean, prim_idx), scene, SEGS_PARAMS)
            manifest.record(scene, [], outputs)
            current = True
        if not overwrite and current:
            s3d = load_scene_3d(scene_path)
            feat, mask = load_fused_features(feat_path, len(s3d.coords), feat_dim)
            labels, feat, mask = s3d.labels, feat.float().numpy(), mask.numpy()
            result['skipped'] += 1
        else:
            scene_data = make_scene(info, text, rtype, scene, g, seed, points_per_scene, params, features)
            labels, feat, mask = scene_data['labels'], scene_data['feat'], scene_data['mask_full']
            save_fused_features(feat_path, torch.from_numpy(feat), torch.from_numpy(mask))
            # the statistics describe the files as written (float16 features), as a re-run that reads them back
            feat = torch.from_numpy(feat).half().float().numpy()
            save_scene_3d(scene_path, scene_data['coords'], scene_data['colors'], labels.astype(np.int64))
            if segs_path:
                write_segs_json(segs_path, scene_data['segments'], scene, SEGS_PARAMS)
            manifest.record(scene, [], outputs)
        result['scenes'][split].append(scene)
        preds[split].append(plg_pseudo_labels(feat, mask, labels, text, info.num_classes))
        gts[split].append(labels)
        covered[split][0] += int(mask.sum())
        covered[split][1] += len(mask)
        if verbose:
            print(f'  {split:5s} {scene}: {len(mask)} points, coverage {mask.mean():.3f}', flush=True)
    for split in ('train', 'val'):
        if not preds[split]:
            continue
        r = evaluate(np.concatenate(preds[split]), np.concatenate(gts[split]), info.labels)
        result['stats'][split] = dict(scenes=len(preds[split]), points=covered[split][1],
                                      coverage=covered[split][0] / max(covered[split][1], 1),
                                      plg_miou=r['miou'], plg_miou_present=r['miou_present'],
                                      plg_iou={info.labels[c]: float(r['iou'][c]) for c in range(info.num_classes)
                                               if r['present'][c]})
    manifest.close()
    result['seconds'] = time.time() - start
    return result
