"""Multi-view 2D-to-3D feature fusion (OpenScene §3.1; docs/method.md, "Inputs"): the per-point "fused 2D embeddings".

For every scene, every point is projected into every RGB-D frame; a frame *sees* a point when the point
projects inside the image (minus a ``cut_bound`` border) and its camera depth agrees with the depth map
(``|depth_map - z| <= depth_threshold * depth_map``, the relative test of OpenScene's
``PointCloudToImageMapper``). The fused feature of a point is the plain mean of the 2D features of the
pixels it lands on over all frames that see it; points no frame sees get no feature (``mask_full`` False).

Conventions (as OpenScene's ``fusion_util.py``):
- ``pose`` is camera-to-world; points go to the camera with its inverse; ``intrinsic`` (3x3 or 4x4, only
  fx, fy, cx, cy are used) is given at the *depth* resolution; pixel = round(x fx / z + cx), rounding half to
  even like ``np.round``; column u indexes the width, row v the height.
- A point is also required to lie in front of the camera (z > 0) on a valid depth pixel (depth > 0). OpenScene
  does not test these explicitly; its relative test rejects them anyway except for the degenerate z == 0.
- The 2D feature map may have another resolution than the depth map (OpenSeg's map, a ViT patch grid):
  depth pixel (v, u) reads feature pixel (floor((v + 0.5) H'/H), floor((u + 0.5) W'/W)), i.e. nearest
  neighbour by pixel centres; equal sizes give the identity. OpenScene instead resizes OpenSeg's map to the
  depth size first (nearest, align_corners=True), which differs by at most one feature pixel.

Writing: ``<out>/<scene>_0.pt`` = ``{'feat': float16 [M, D], 'mask_full': bool [N]}`` (docs/formats.md), one full
file per scene as 3DSS-VLG's fusion does; ``--num_files K --points_per_file P`` reproduces OpenScene's
released training features (K files, each a random subset of P points kept where covered).
A rerun keeps finished scenes whose settings and inputs are unchanged (``fusion_manifest.jsonl``, util/provenance.py);
the inputs include a fingerprint of every frame file (colour, depth, pose, intrinsics, 2D feature maps), so a
changed frame recomputes its scene, and the log names the frame file. A scene with an unreadable or invalid frame
file is skipped and listed at the end with the file's name.

CLI::

    python -m prep.fusion --dataset scannet --data_root_3d data/scannet_3d --split train \\
        --data_root_2d data/scannet_2d --output_dir data/scannet_multiview_clip \\
        --feature_source openclip --model ViT-B-16 --pretrained openai --device cuda
"""
import argparse
import os
import zlib
from typing import Callable, Iterable, Optional, Tuple

import numpy as np
import torch

from prep.frames import FrameData, check_intrinsic, check_pose, project_points, read_intrinsic
from prep.s3dis import Stanford2D3DSFrames
from prep.scannet import ScanNetFrames
from util.cli import run_cli
from util.progress import progress as progress_of

DEPTH_THRESHOLD = 0.25
CUT_BOUND = 10


def compute_mapping(points, depth, intrinsic, pose, *, depth_threshold=DEPTH_THRESHOLD, cut_bound=CUT_BOUND):
    """Which points a frame sees, and where.

    points: float tensor [N, 3] (any device); depth: tensor [H, W] metres on the same device.
    Returns (point_index long [K], row long [K], col long [K]) at the depth resolution.
    """
    H, W = depth.shape
    u, v, z = project_points(points, intrinsic, pose)
    finite = torch.isfinite(u) & torch.isfinite(v) & (z > 0)
    # round half to even, as np.round in OpenScene; non-finite values are masked out before use
    col = torch.where(finite, torch.round(u), torch.zeros_like(u)).long()
    row = torch.where(finite, torch.round(v), torch.zeros_like(v)).long()
    inside = finite & (col >= cut_bound) & (row >= cut_bound) & (col < W - cut_bound) & (row < H - cut_bound)
    idx = torch.nonzero(inside, as_tuple=False).squeeze(1)
    row, col, z = row[idx], col[idx], z[idx]
    d = depth[row, col].to(torch.float64)
    # OpenScene's occlusion test, relative to the measured depth
    visible = (d > 0) & ((d - z).abs() <= depth_threshold * d)
    return idx[visible], row[visible], col[visible]


def _feature_pixels(row, col, depth_hw, feat_hw):
    """Depth-resolution pixels -> feature-map pixels (nearest by pixel centres; identity for equal sizes)."""
    (H, W), (Hf, Wf) = depth_hw, feat_hw
    if (H, W) == (Hf, Wf):
        return row, col
    frow = torch.div((2 * row + 1) * Hf, 2 * H, rounding_mode='floor').clamp_(0, Hf - 1)
    fcol = torch.div((2 * col + 1) * Wf, 2 * W, rounding_mode='floor').clamp_(0, Wf - 1)
    return frow, fcol


def _check_frame(frame):
    """(depth, K, pose) of a frame, or None for a frame to skip (ScanNet's -inf pose of lost tracking); a NaN,
    singular or non-rigid pose or an impossible intrinsic is refused (the file readers of prep/ name the file,
    this names the frame for frames made in memory)."""
    depth = np.asarray(frame.depth)
    if depth.ndim != 2:
        raise ValueError(f"frame '{frame.name}': expected depth [H, W] in metres, found shape {list(depth.shape)}")
    K = check_intrinsic(frame.intrinsic, f"frame '{frame.name}'")
    pose = np.asarray(frame.pose, dtype=np.float64)
    if not check_pose(pose, f"frame '{frame.name}'"):
        return None
    return depth, K, pose


def fuse_features(points, frames: Iterable[FrameData], feature_source: Callable, *,
                  depth_threshold=DEPTH_THRESHOLD, cut_bound=CUT_BOUND, device='cpu',
                  chunk_size=500_000, point_block_size: Optional[int] = None,
                  progress=False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Average the 2D features of every frame over the points each frame sees.

    points: [N, 3] world coordinates; frames: iterable of ``FrameData``; feature_source: callable
    ``FrameData -> tensor [D, H', W']`` (see ``prep/feature_sources.py``), called only for frames that see
    at least one point (as OpenScene skips frames without correspondences).
    chunk_size: points projected at once (bounds the projection's memory).
    point_block_size: points whose feature sums are held at once (N x D floats otherwise: 14 GB for a
    4.7M-point S3DIS room at D = 768); with N larger, the frames are read, and the feature source run, once per
    block, so ``frames`` must then be re-iterable (a list, or the frame-reader objects of prep).
    Returns (feat float32 [M, D] on cpu, rows in ascending point order; mask_full bool [N]).
    Frames whose pose is not finite (ScanNet marks lost tracking with -inf) are skipped.
    """
    device = torch.device(device)
    if isinstance(points, torch.Tensor):
        points = points.to(device=device, dtype=torch.float64)
    else:
        points = torch.as_tensor(np.asarray(points, dtype=np.float64), device=device)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"expected points of shape [N, 3], found {list(points.shape)}")
    n = points.shape[0]
    block = n if not point_block_size else max(1, int(point_block_size))
    if block < n and iter(frames) is frames:
        raise ValueError(f'{n} points in blocks of {block} need the frames once per block: pass a re-iterable '
                         f'(a list or a frame reader), not a one-shot iterator')
    feats, masks = [], []
    for start in range(0, n, block):
        feat, mask = _fuse_block(points[start:start + block], frames, feature_source, depth_threshold, cut_bound,
                                 chunk_size, progress)
        feats.append(feat)
        masks.append(mask)
    dims = {f.shape[1] for f in feats if f is not None}
    if not dims:
        dim = getattr(feature_source, 'feat_dim', None)
        if dim is None:
            raise ValueError('no frame sees any point of this scene and the feature source does not state its '
                             'feature dimension; check poses, intrinsics and depth units')
        dims = {int(dim)}
    if len(dims) > 1:
        raise ValueError(f'the feature source gave different feature dimensions {sorted(dims)}')
    dim = dims.pop()
    feats = [f if f is not None else torch.zeros(0, dim) for f in feats]
    return torch.cat(feats), torch.cat(masks)


def _fuse_block(points, frames, feature_source, depth_threshold, cut_bound, chunk_size, progress):
    """Sum / count accumulation over all frames for one block of points -> (mean feat [M, D] or None, mask)."""
    device, n = points.device, points.shape[0]
    counts = torch.zeros(n, dtype=torch.float32, device=device)
    sums = None
    frames_iter = progress_of(frames, 'frames', unit='frame') if progress else frames
    for frame in frames_iter:
        checked = _check_frame(frame)
        if checked is None:
            continue
        depth_np, K, pose = checked
        depth = torch.as_tensor(depth_np.astype(np.float32), device=device)
        # chunked over points: the projection's memory stays O(chunk) whatever the scene size
        hits = []
        for start in range(0, n, chunk_size):
            idx, row, col = compute_mapping(points[start:start + chunk_size], depth, K, pose,
                                            depth_threshold=depth_threshold, cut_bound=cut_bound)
            if idx.numel():
                hits.append((idx + start, row, col))
        if not hits:
            continue
        feat_2d = torch.as_tensor(feature_source(frame))
        if feat_2d.ndim != 3:
            raise ValueError(f"feature source returned shape {list(feat_2d.shape)} for frame '{frame.name}': "
                             f"expected [D, H', W']")
        feat_2d = feat_2d.to(device=device, dtype=torch.float32)
        if sums is None:
            sums = torch.zeros(n, feat_2d.shape[0], dtype=torch.float32, device=device)
        elif feat_2d.shape[0] != sums.shape[1]:
            raise ValueError(f"frame '{frame.name}': feature dimension {feat_2d.shape[0]} differs from the "
                             f"previous frames' {sums.shape[1]}")
        for idx, row, col in hits:
            frow, fcol = _feature_pixels(row, col, depth.shape, feat_2d.shape[1:])
            sums.index_add_(0, idx, feat_2d[:, frow, fcol].T)
            counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
    mask = counts > 0
    if sums is None:
        return None, mask.cpu()
    return (sums[mask] / counts[mask].unsqueeze(1)).cpu(), mask.cpu()


# ----------------------------------------------------------------------------- scenes / CLI
def output_paths(output_dir, scene, num_files=1):
    return [os.path.join(output_dir, f'{scene}_{k}.pt') for k in range(num_files)]


def save_scene_features(output_dir, scene, feat, mask_full, *, num_files=1, points_per_file=None, seed=1457):
    """Write ``<scene>_<k>.pt``. With ``points_per_file``, file k keeps the covered points of a random subset of
    that many points (OpenScene's released training features: 5 files of 20,000); otherwise one full file."""
    from dataset.formats import save_fused_features
    paths = output_paths(output_dir, scene, num_files)
    n = mask_full.shape[0]
    if points_per_file is None:
        if num_files != 1:
            raise ValueError('num_files > 1 needs points_per_file (each file is a random subset)')
        save_fused_features(paths[0], feat, mask_full)
        return paths
    rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])  # per scene, repeatable
    rows_of_point = torch.full((n,), -1, dtype=torch.long)
    rows_of_point[mask_full] = torch.arange(int(mask_full.sum()))
    for path in paths:
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[torch.from_numpy(rng.choice(n, min(points_per_file, n), replace=False))] = True
        keep = chosen & mask_full
        save_fused_features(path, feat[rows_of_point[keep]], keep)
    return paths


def scene_frames(dataset, data_root_2d, scene, args):
    """The frame reader of a dataset."""
    if dataset == 'scannet':
        intrinsic = args.intrinsic_file
        if intrinsic and intrinsic != 'scene':
            intrinsic = read_intrinsic(intrinsic)
        return ScanNetFrames(os.path.join(data_root_2d, scene), scene=scene, intrinsic=intrinsic,
                             depth_scale=args.depth_scale or 1000.0, frame_skip=args.frame_skip)
    if dataset == 's3dis':
        return Stanford2D3DSFrames(data_root_2d, scene, depth_scale=args.depth_scale or 512.0,
                                   image_size=args.image_size, frame_skip=args.frame_skip)
    raise ValueError(f"unknown dataset '{dataset}': expected scannet or s3dis")


def build_feature_source(args):
    from prep import feature_sources
    if args.feature_source == 'precomputed':
        if not args.feature_dir:
            raise SystemExit('--feature_source precomputed needs --feature_dir')
        return feature_sources.PrecomputedFeatureSource(args.feature_dir, layout=args.feature_layout)
    if args.feature_source == 'openclip':
        return feature_sources.OpenClipDenseFeatureSource(args.model, args.pretrained, device=args.device,
                                                          upsample=not args.no_upsample)
    raise SystemExit(f"unknown --feature_source '{args.feature_source}'")


def get_parser():
    p = argparse.ArgumentParser(
        prog='python -m prep.fusion',
        description='Multi-view fusion of 2D features onto 3D points (OpenScene section 3.1). Writes '
                    '<output_dir>/<scene>_0.pt = {feat float16 [M, D], mask_full bool [N]} per scene.')
    p.add_argument('--dataset', choices=['scannet', 's3dis'], required=True)
    p.add_argument('--data_root_3d', required=True, help='folder with <split>/<scene>.pth')
    p.add_argument('--split', default='train')
    p.add_argument('--data_root_2d', required=True,
                   help='scannet: folder of exported frames <scene>/{color,depth,pose} '
                        '(python -m prep.scannet frames); s3dis: the 2D-3D-S root holding area_N/data')
    p.add_argument('--output_dir', required=True)
    p.add_argument('--feature_source', choices=['precomputed', 'openclip'], default='openclip')
    p.add_argument('--feature_dir', help="precomputed: folder of '<scene>/<frame>.pt|.npy' feature maps")
    p.add_argument('--feature_layout', choices=['auto', 'hwd', 'dhw'], default='auto')
    p.add_argument('--model', default='ViT-B-16', help='open_clip model name')
    p.add_argument('--pretrained', default='openai', help='open_clip pretrained tag or a local checkpoint path')
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1'")
    p.add_argument('--no_upsample', action='store_true',
                   help='openclip: keep the ViT patch grid instead of a bilinear map at image size (fusion reads '
                        'the grid proportionally); use it for large frames, e.g. 2D-3D-S at 1080x1080, where a '
                        'full-size 512-d map takes 2.4 GB per frame')
    p.add_argument('--depth_threshold', type=float, default=DEPTH_THRESHOLD)
    p.add_argument('--cut_bound', type=int, default=CUT_BOUND)
    p.add_argument('--chunk_size', type=int, default=500_000, help='points projected at once')
    p.add_argument('--point_block_size', type=int, default=1_000_000,
                   help='points whose feature sums are held in memory at once (N x D x 4 bytes); larger scenes '
                        'are fused block by block, running the 2D feature source once per block')
    p.add_argument('--frame_skip', type=int, default=1,
                   help='use every k-th frame of what the 2D folder holds (ScanNet export already keeps every 20th)')
    p.add_argument('--depth_scale', type=float, default=None,
                   help='depth PNG units per metre (default: 1000 for ScanNet, 512 for 2D-3D-S)')
    p.add_argument('--intrinsic_file', default=None,
                   help="scannet: 4x4 intrinsic txt at the depth resolution, or 'scene' for each scene's exported "
                        "intrinsic/intrinsic_depth.txt (default: OpenScene's fixed constants)")
    p.add_argument('--image_size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                   help='s3dis: resize 2D-3D-S frames (1080x1080) to H W before fusion')
    p.add_argument('--num_files', type=int, default=1)
    p.add_argument('--points_per_file', type=int, default=None)
    p.add_argument('--scenes', nargs='*', default=None, help='only these scene names')
    p.add_argument('--overwrite', action='store_true', help='redo scenes whose output exists')
    p.add_argument('--seed', type=int, default=1457)
    return p


def fusion_settings(args):
    """The options that shape the fused features (recorded beside them, util/provenance.py)."""
    ignored = ('overwrite', 'scenes', 'device', 'chunk_size', 'point_block_size', 'output_dir', 'data_root_3d')
    return {'stage': 'fusion', **{k: v for k, v in vars(args).items() if k not in ignored}}


def frame_input_files(frames, scene, args):
    """Every file a scene's fusion reads besides its 3D scene: the RGB-D frames, the intrinsic file given by
    --intrinsic_file (its path alone is a setting; its numbers shape every scene) and, for precomputed
    features, the feature maps."""
    files = list(frames.files())
    if args.dataset == 'scannet' and args.intrinsic_file and args.intrinsic_file != 'scene':
        files.append(args.intrinsic_file)
    if args.feature_source == 'precomputed' and args.feature_dir:
        scene_dir = os.path.join(args.feature_dir, scene)
        if os.path.isdir(scene_dir):
            files += [os.path.join(scene_dir, n) for n in os.listdir(scene_dir)]
    return files


def changed_frames_reason(entry, settings, files):
    """Why a finished scene's frames differ from those its features were made from, naming a frame file; None
    unless its recorded settings differ from ``settings`` (this run's, with the 'frames' fingerprint) in the
    frames alone (other changes keep the manifest's own message, which lists every changed setting).

    The manifest keeps one fingerprint of all frame files' names, sizes and modification times (a scene has
    thousands), so the file that changed is found as one modified at or after the features were written;
    a frame removed, renamed or replaced by an older copy changes the fingerprint without being newer."""
    old = dict((entry or {}).get('settings') or {})
    if not entry or old.get('frames') in (None, settings.get('frames')):
        return None
    if {k: v for k, v in old.items() if k != 'frames'} != {k: v for k, v in settings.items() if k != 'frames'}:
        return None
    written = [o.get('mtime_ns') for o in (entry.get('outputs') or {}).values() if o.get('mtime_ns')]
    missing = [p for p in files if not os.path.isfile(p)]
    newer = [p for p in files if written and os.path.isfile(p) and os.stat(p).st_mtime_ns >= min(written)]
    changed = missing or newer
    if not changed:
        return (f'its frame files changed since its features were made ({len(files)} files now; a frame was added, '
                f'removed, renamed or replaced by an older copy)')
    more = f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''
    state = 'is gone' if missing else 'changed'
    return f"frame file '{changed[0]}'{more} {state} since its features were made"


def main(argv=None):
    args = get_parser().parse_args(argv)

    from dataset.formats import list_scenes, load_scene_3d, scene_name
    from util.io import UnreadableFileError
    from util.misc import get_device
    from util.provenance import OutputManifest, files_fingerprint
    from util.run_folder import RunFolder
    args.device = str(get_device(args.device))
    paths = list_scenes(args.data_root_3d, args.split)
    if args.scenes:
        wanted = set(args.scenes)
        paths = [p for p in paths if scene_name(p) in wanted]
        missing = wanted - {scene_name(p) for p in paths}
        if missing:
            raise SystemExit(f'scenes not found in {args.data_root_3d}/{args.split}: {sorted(missing)}')
    source = None
    done = skipped = 0
    failed = {}
    with RunFolder(args.output_dir, 'fusion'), OutputManifest(args.output_dir, 'fusion',
                                                              fusion_settings(args)) as manifest:
        for path in progress_of(paths, 'fusion', log=print, unit='scene'):
            scene = scene_name(path)
            outs = output_paths(args.output_dir, scene, args.num_files)
            # a scene that cannot be fused is reported and skipped, so one bad scan does not stop a long run
            try:
                frames = scene_frames(args.dataset, args.data_root_2d, scene, args)
                if len(frames) == 0:
                    raise FileNotFoundError(f"no RGB-D frames under '{args.data_root_2d}' (see the layout in --help)")
                frame_files = frame_input_files(frames, scene, args)
                inputs = {'frames': files_fingerprint(frame_files)}
                current, why = manifest.check(scene, [path], outs, inputs)
                if current and not args.overwrite:
                    skipped += 1  # resumable: finished scenes are kept
                    continue
                if not args.overwrite and all(os.path.isfile(o) for o in outs):
                    why = changed_frames_reason(manifest.entries.get(scene), dict(manifest.settings, **inputs),
                                                frame_files) or why
                    print(f'{scene}: recomputing: {why}')
                if source is None:
                    source = build_feature_source(args)  # built lazily: a finished run never loads the 2D model
                points = load_scene_3d(path).coords
                feat, mask = fuse_features(points, frames, source, depth_threshold=args.depth_threshold,
                                           cut_bound=args.cut_bound, device=args.device, chunk_size=args.chunk_size,
                                           point_block_size=args.point_block_size, progress=True)
            except (FileNotFoundError, ValueError, UnreadableFileError) as err:
                failed[scene] = str(err)
                print(f'{scene}: skipped, {err}')
                continue
            save_scene_features(args.output_dir, scene, feat, mask, num_files=args.num_files,
                                points_per_file=args.points_per_file, seed=args.seed)
            manifest.record(scene, [path], outs, inputs)
            done += 1
            coverage = float(mask.float().mean())
            print(f'{scene}: {int(mask.sum())}/{mask.numel()} points covered ({coverage:.1%})'
                       + ('  <- very low: check poses, intrinsics and depth units' if coverage < 0.05 else ''))
    print(f'fused {done} scenes, skipped {skipped} already finished (use --overwrite to redo) -> {args.output_dir}')
    if failed:
        raise SystemExit(f'{len(failed)} scene(s) could not be fused: ' +
                         '; '.join(f'{scene}: {why}' for scene, why in failed.items()))


if __name__ == '__main__':
    run_cli(main)
