"""Helpers the test modules share: tiny generated datasets for each stage, their config overrides, and
absolute config paths (so the suite runs from any folder). Imported as ``from helpers import ...`` (pytest puts
this folder on the path)."""
import os
import socket

import numpy as np
import torch

from dataset import formats
from dataset.formats import save_fused_features, save_scene_3d, save_text_embeddings
from dataset.label_constants import dataset_info
from pipeline.pseudo_labels import pseudo_labels_from_features, scene_label_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(path):
    """A config of the repository by its path from the root ('config/demo/openseg_train.yaml')."""
    return os.path.join(ROOT, path)


# ----------------------------------------------------------------------------- ESG / evaluation: tiny rooms
NUM_CLASSES = 20
FEAT_DIM = 512  # 'lseg' -> DisNet output dim 512 (the smallest the config allows)
ESG_TRAIN_CONFIG = config('config/demo/openseg_train.yaml')
EVAL_CONFIG = config('config/demo/openseg_eval.yaml')


def _scene(rng, box_class, floor_class=1, wall_class=0, num_classes=NUM_CLASSES):
    """Floor, wall and a box of ``box_class`` (ScanNet's ids by default); colours follow the class."""
    g = np.arange(0, 0.6, 0.025)
    fx, fy = np.meshgrid(g, g)
    floor = np.stack([fx.ravel(), fy.ravel(), np.zeros(fx.size)], 1)
    wy, wz = np.meshgrid(g, np.arange(0, 0.4, 0.025))
    wall = np.stack([np.zeros(wy.size), wy.ravel(), wz.ravel() + 0.01], 1)
    centre = rng.uniform(0.2, 0.4, 2)
    box = rng.uniform(-0.1, 0.1, (400, 3)) + np.r_[centre, 0.12]
    coords = np.concatenate([floor, wall, box]).astype(np.float32)
    labels = np.concatenate([np.full(len(floor), floor_class), np.full(len(wall), wall_class),
                             np.full(len(box), box_class)])
    base = np.random.default_rng(box_class).uniform(-0.8, 0.8, (num_classes, 3))
    colors = np.clip(base[labels] + rng.normal(0, 0.05, (len(labels), 3)), -1, 1)
    return coords, colors.astype(np.float32), labels.astype(np.int64)


def make_tiny_dataset(root, n_train=4, n_val=2, seed=0):
    """<root>/3d/{train,val}/*.pth, <root>/feat/<scene>_0.pt (noisy text embedding of the GT class,
    85 % of points covered), <root>/text.npy. Returns the config overrides that point at them."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(NUM_CLASSES, FEAT_DIM)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    save_text_embeddings(os.path.join(root, 'text.npy'), text)
    for split, n in (('train', n_train), ('val', n_val)):
        for i in range(n):
            name = f'scene{i + (0 if split == "train" else 100):04d}_00'
            coords, colors, labels = _scene(rng, box_class=2 + (i % 4))
            save_scene_3d(os.path.join(root, '3d', split, f'{name}_vh_clean_2.pth'), coords, colors, labels)
            mask = rng.random(len(labels)) > 0.15
            feat = text[labels[mask]] + 0.05 * rng.normal(size=(int(mask.sum()), FEAT_DIM))
            feat /= np.linalg.norm(feat, axis=1, keepdims=True)
            save_fused_features(os.path.join(root, 'feat', f'{name}_0.pt'), torch.from_numpy(feat),
                                torch.from_numpy(mask))
    return ['data_root', os.path.join(root, '3d'), 'data_root_2d_fused_feature', os.path.join(root, 'feat'),
            'text_embeddings_path', os.path.join(root, 'text.npy'), 'feature_2d_extractor', 'lseg',
            'arch_3d', 'MinkUNet14A', 'device', 'cpu', 'manual_seed', '7',
            # 2.5 cm: the point spacing of these 0.6 m scenes; coarser voxels would leave a single voxel per
            # scene at tensor stride 16, which BatchNorm cannot normalise in training mode
            'voxel_size', '0.025']


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def make_viewer_experiment(root, n_val=2, test_repeats=2):
    """<root>/exp/best.pth (a DisNet of random weights) and <root>/exp/result_eval/eval_config.yaml on tiny rooms:
    an experiment folder laid out as run/esg.sh and run/eval.sh leave it, for the viewer's tests."""
    from pipeline.networks import build_disnet
    from pipeline.schemas import EVALUATION
    from pipeline.stage import network_values
    from util.checkpoint import save_checkpoint
    from util.config import dump_config, load_config
    data = make_tiny_dataset(root, n_train=1, n_val=n_val)
    exp = os.path.join(root, 'exp')
    cfg = load_config(['--config', EVAL_CONFIG] + data + ['test_repeats', str(test_repeats), 'model_path', '',
                                                          'save_folder', os.path.join(exp, 'result_eval')], EVALUATION)
    torch.manual_seed(0)
    save_checkpoint(os.path.join(exp, 'best.pth'), model=build_disnet(**network_values(cfg)), epoch=0, best_metric=0.0)
    os.makedirs(os.path.join(exp, 'result_eval'))
    with open(os.path.join(exp, 'result_eval', 'eval_config.yaml'), 'w') as f:  # as evaluate.py writes it
        f.write(dump_config(cfg, EVALUATION))
    return exp


def make_tiny_s3dis(root, n_train=3, n_val=2, seed=0, feat_dim=768):
    """Tiny rooms with S3DIS labels (floor 1, wall 2, a table / chair / sofa / bookcase), named as S3DIS rooms
    (Area_<n>_<room>.pth, Area 5 in val), 768-d features as OpenSeg's: what config/s3dis/ reads."""
    rng = np.random.default_rng(seed)
    info = dataset_info('s3dis')
    text = rng.normal(size=(info.num_classes, feat_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    save_text_embeddings(os.path.join(root, 'text.npy'), text)
    for split, n, area in (('train', n_train, 1), ('val', n_val, 5)):
        for i in range(n):
            name = f'Area_{area}_office_{i + 1}'
            coords, colors, labels = _scene(rng, box_class=7 + (i % 4), floor_class=1, wall_class=2,
                                            num_classes=info.num_classes)
            save_scene_3d(os.path.join(root, '3d', split, f'{name}.pth'), coords, colors, labels)
            mask = rng.random(len(labels)) > 0.15
            feat = text[labels[mask]] + 0.05 * rng.normal(size=(int(mask.sum()), feat_dim))
            save_fused_features(os.path.join(root, 'feat', f'{name}_0.pt'), torch.from_numpy(feat),
                                torch.from_numpy(mask))
    return text


def train_argv(root, data_overrides, **overrides):
    opts = dict(save_path=os.path.join(root, 'esg'), esg_targets=os.path.join(root, 'feat'), epochs=2, batch_size=2,
                loop=1, eval_freq=1, print_freq=1, tensorboard=False, base_lr=1e-4)
    opts.update(overrides)
    argv = ['--config', ESG_TRAIN_CONFIG] + list(data_overrides)
    for k, v in opts.items():
        argv += [k, str(v)]
    return argv

# ----------------------------------------------------------------------------- ESS: covered points with pseudo labels
ESS_DIM, ESS_POINTS = 768, 300
ESS_CLASSES = (0, 1, 4, 6, 12)  # wall, floor, chair, table, desk
ESS_TRAIN_CONFIG, ESS_EVAL_CONFIG = (config('config/demo/openseg_pre_train.yaml'),
                                     config('config/demo/openseg_pre_eval.yaml'))


def make_ess_data(root, n_train=4, n_val=2, seed=0):
    """Scenes of ESS_POINTS points, 80 % covered; features = text embedding of the class + noise, desk pulled
    toward table (a systematic confusion); pseudo labels by the PLG rule, uncovered -> unlabeled."""
    rng = np.random.default_rng(seed)
    info = dataset_info('scannet')
    text = rng.normal(size=(info.num_classes, ESS_DIM))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    formats.save_text_embeddings(os.path.join(root, 'text.npy'), text)
    index = 0
    for split, count in (('train', n_train), ('val', n_val)):
        for _ in range(count):
            scene = f'scene{index:04d}_00'
            index += 1
            labels = rng.choice(ESS_CLASSES, ESS_POINTS)
            labels[:5] = 255  # a few unannotated points
            formats.save_scene_3d(os.path.join(root, '3d', split, scene + '_vh_clean_2.pth'),
                                  rng.uniform(0, 3, (ESS_POINTS, 3)), rng.uniform(-1, 1, (ESS_POINTS, 3)), labels)
            cls = np.where(labels == 255, 0, labels)
            feat = text[cls] + 0.08 * rng.normal(size=(ESS_POINTS, ESS_DIM))
            feat[cls == 12] = 0.5 * text[12] + 0.5 * text[6] + 0.08 * rng.normal(size=((cls == 12).sum(), ESS_DIM))
            mask = rng.uniform(size=ESS_POINTS) < 0.8
            formats.save_fused_features(os.path.join(root, 'feat', scene + '_0.pt'),
                                        torch.from_numpy(feat[mask]), torch.from_numpy(mask))
            if split == 'train':
                pseudo = np.full(ESS_POINTS, info.unlabeled_index, np.int64)
                conf = np.zeros(ESS_POINTS, np.float32)
                pseudo[mask], conf[mask] = pseudo_labels_from_features(
                    torch.from_numpy(feat[mask]).half(), text, scene_label_mask(labels, info.num_classes))
                formats.save_pseudo_labels(os.path.join(root, 'plg'), scene, pseudo, conf)
    return text


def ess_overrides(root):
    return ['data_root', f'{root}/3d', 'data_root_2d_fused_feature', f'{root}/feat',
            'text_embeddings_path', f'{root}/text.npy', 'device', 'cpu', 'workers', '0']


def train_ess(root, save, epochs, resume=''):
    argv = ['--config', ESS_TRAIN_CONFIG, *ess_overrides(root), 'pseudo_label_path', f'{root}/plg', 'save_path', save,
            'num_points', '200', 'batch_size', '2', 'epochs', str(epochs), 'step_epoch', '2', 'resume', resume,
            'tensorboard', 'False', 'manual_seed', '7', 'eval_freq', '1']
    import train_openseg_pre_train
    return train_openseg_pre_train.main(argv)


# ----------------------------------------------------------------------------- PLG: points in class regions
def make_plg_data(root, n_scenes=3, n=400, d=768, seed=0):
    """Tiny scenes: points of class k lie in their own region and their 2D feature is near text row k."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(dataset_info('scannet').num_classes, d)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    np.save(root / 'text.npy', text)
    os.makedirs(root / 'data_3d' / 'train')
    os.makedirs(root / 'feat')
    for s in range(n_scenes):
        scene = f'scene{s:04d}_00'
        gt = rng.choice([1, 4, 7], size=n)
        coords = rng.uniform(0, 1, size=(n, 3)).astype(np.float32)
        coords[:, 0] += gt * 2.0
        mask = rng.random(n) < 0.9
        feat = text[gt[mask]] * 20 + rng.normal(size=(mask.sum(), d)).astype(np.float32) * 0.01
        formats.save_scene_3d(root / 'data_3d' / 'train' / f'{scene}_vh_clean_2.pth', coords,
                              np.zeros_like(coords), gt)
        # two files, as OpenScene's release splits a scene: random subsets of the covered points that overlap
        full = np.zeros((n, d), np.float32)
        full[mask] = feat
        for k in range(2):
            part = mask & (rng.random(n) < 0.7)
            formats.save_fused_features(root / 'feat' / f'{scene}_{k}.pt', torch.from_numpy(full[part]),
                                        torch.from_numpy(part))
    return text


def plg_args(root, out, *extra):
    return ['--config', config('vlm_ps_generation/config/demo.yaml'),
            'data_root', str(root / 'data_3d'), 'data_root_2d_fused_feature', str(root / 'feat'),
            'text_embeddings_path', str(root / 'text.npy'), 'save_folder', str(out), *extra]

# ----------------------------------------------------------------------------- sparse convolution
G = 10  # dense grid side (stride-1 voxels)
B = 3   # batch items


def random_sparse(n_per_batch=60, channels=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    coords = []
    for b in range(B):
        flat = torch.randperm(G ** 3, generator=g)[:n_per_batch]
        xyz = torch.stack([flat % G, (flat // G) % G, flat // (G * G)], 1)
        coords.append(torch.cat([torch.full((n_per_batch, 1), b), xyz], 1))
    coords = torch.cat(coords).int()
    coords = coords[torch.randperm(len(coords), generator=g)]  # order must not matter
    feats = torch.randn(len(coords), channels, generator=g, dtype=dtype)
    return coords, feats
