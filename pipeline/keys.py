"""The config keys the stages share, declared once (``util/config.py`` reads configs against them).

A stage script builds its ``Schema`` from these groups and its own keys. The dataset group is what a
``config/<dataset>/dataset.yaml`` holds: paths, label set, 2D features and text encoder, and ``exp_root``,
the experiment folder every stage's outputs and inputs derive from (``${exp_root}/plg``,
``${exp_root}/ess_embeddings``, ...), so a second experiment in another folder never reads or overwrites
the first one's files.
"""
import os

from util.config import Key


# ----------------------------------------------------------------------------- checks
def positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def non_negative_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float('inf')


def positive(v):
    return finite(v) and v > 0


def non_negative(v):
    return finite(v) and v >= 0


def _labelset(v):
    from dataset.label_constants import dataset_info
    try:
        dataset_info(v)
        return True
    except ValueError:
        return False


def _extractor(v):
    from pipeline.networks import FEATURE_DIMS
    return any(name in v.lower() for name in FEATURE_DIMS)


def _device(v):
    import re
    return re.fullmatch(r'auto|cpu|cuda(:\d+)?', v) is not None


def _template(v):
    return v in ('', 'none', 'upstream') or '{}' in v


def _arch(v):
    from models.mink_unet import ARCHITECTURES
    return v in ARCHITECTURES


def one_of(*choices):
    return dict(check=lambda v: v in choices, must='one of ' + ', '.join(map(str, choices)))


POSITIVE_INT = dict(check=positive_int, must='a positive integer')
NON_NEGATIVE_INT = dict(check=non_negative_int, must='an integer >= 0')
POSITIVE = dict(check=positive, must='a number > 0')
NON_NEGATIVE = dict(check=non_negative, must='a number >= 0')


# ----------------------------------------------------------------------------- groups
def dataset_keys():
    """What config/<dataset>/dataset.yaml sets: every stage accepts these."""
    return [
        Key('labelset', str, 'scannet', 'label set: scannet (20 classes), s3dis (13) or scannet200 (200)', 'DATA',
            check=_labelset, must='a known label set (scannet, s3dis, scannet200)'),
        Key('data_root', str, help='3D scenes: <data_root>/<split>/<scene>.pth', section='DATA', exists='dir',
            hint='preprocess the scans first (README, "Data")'),
        Key('train_split', str, 'train', 'split the networks train on', 'DATA'),
        Key('val_split', str, 'val', 'split they are validated on', 'DATA'),
        Key('data_root_2d_fused_feature', str, help='fused 2D features: <folder>/<scene>.pt or <scene>_<k>.pt',
            section='DATA', exists='dir', hint='fuse them first (python -m prep.fusion) or download OpenScene\'s'),
        Key('data_root_2d_fused_feature_val', str, '', "val split's fused features when kept elsewhere ('' = the "
            'same folder)', 'DATA'),
        Key('feature_2d_extractor', str, 'openseg', 'the 2D features: openseg (768-d), lseg or clip (512-d)', 'DATA',
            check=_extractor, must='a name containing openseg, lseg or clip'),
        Key('voxel_size', float, 0.02, 'voxel side in metres (upstream 2 cm)', 'DATA', **POSITIVE),
        Key('input_color', bool, True, "the 3D network's input: colours (True) or ones", 'DATA'),
        Key('exp_root', str, 'exp/scannet', 'experiment folder; every stage reads and writes under it', 'DATA'),
    ]


def text_keys(prompt_template='upstream'):
    """The CLIP text embeddings of the class names (pipeline/text_embeddings.py)."""
    return [
        Key('text_embeddings_path', str, '', "an .npy [C, D] of text embeddings ('' = compute with open_clip)",
            'TEXT', exists='file'),
        Key('clip_model', str, 'ViT-L-14-336', 'open_clip model (ViT-L-14-336: 768-d OpenSeg space) or a '
            'model-config .json', 'TEXT'),
        Key('clip_pretrained', str, 'openai', 'open_clip pretrained tag or a local checkpoint path', 'TEXT'),
        Key('prompt_template', str, prompt_template, "upstream ('a {} in a scene'), none (bare names) or a "
            "template with '{}'", 'TEXT', check=_template, must="'upstream', 'none' or a template with '{}'"),
        Key('text_cache_dir', str, '', "cache of computed text embeddings ('' = none)", 'TEXT'),
    ]


def resume_key(section):
    """Where a training stage continues from: a checkpoint, or ``auto`` (util/run_folder.py)."""
    return Key('resume', str, '', "a checkpoint to continue from (<save_path>/last.pth), or auto: the output folder's "
               'newest checkpoint, else a fresh run', section,
               check=lambda v: v in ('', 'auto') or os.path.isfile(v), must="'auto' or an existing checkpoint file")


def run_keys(save_key, save_default, seed=None):
    """Where a stage writes, and how it runs (``seed``: the default of manual_seed, None if the stage draws
    nothing at random)."""
    seed_key = [] if seed is None else [Key('manual_seed', int, seed, 'seed of every random draw', 'RUN',
                                            **NON_NEGATIVE_INT)]
    return [
        Key(save_key, str, save_default, 'output folder of this stage', 'RUN'),
        Key('overwrite', bool, False, 'replace the results already in the output folder (else refused or reused '
            'when still valid)', 'RUN'),
        Key('device', str, 'auto', 'auto, cpu, cuda or cuda:<index>', 'RUN', check=_device,
            must='auto, cpu, cuda or cuda:<index>'),
        *seed_key,
        Key('threads', int, 0, 'CPU threads of this process (0 = automatic, see util/threads.py)', 'RUN',
            **NON_NEGATIVE_INT),
    ]


def fmiou_key(section):
    """The classes the f-mIoU beside mIoU leaves out (pipeline/metric.py); the stages that score labels take it."""
    return Key('fmiou_exclude', list, [], "classes f-mIoU leaves out, as 'wall,floor' ([] = the label set's: ScanNet "
               'wall, floor, otherfurniture; S3DIS ceiling, floor, wall; ScanNet200 wall, floor)', section, item=str)


def workers_key(default=4):
    return Key('workers', int, default, 'DataLoader processes', 'RUN', **NON_NEGATIVE_INT)


def network_keys():
    """The 3D network, the sparse engine it runs on and how that engine convolves (ESG training and evaluation;
    the last three: models/sparse/settings.py, docs/sparse_engine.md)."""
    from models.sparse.settings import CONVS, ROW_ORDERS
    return [
        Key('arch_3d', str, 'MinkUNet18A', 'MinkUNet variant (MinkUNet18A as upstream; 14A is the smaller one)',
            'NETWORK', check=_arch, must='a MinkUNet architecture name such as MinkUNet18A'),
        Key('sparse_engine', str, 'builtin', 'builtin (this project) or minkowski (needs MinkowskiEngine)',
            'NETWORK', **one_of('builtin', 'minkowski')),
        Key('sparse_conv', str, 'reference', 'builtin engine: reference (gather, matmul, scatter; CPU and CUDA), '
            'triton (implicit-GEMM kernels, CUDA) or spconv (spconv\'s kernels; needs the spconv wheel of your CUDA)',
            'NETWORK', **one_of(*CONVS)),
        Key('sparse_conv_row_order', str, 'mask', 'triton: output rows tiled by neighbour mask (mask) or in memory '
            'order (memory)', 'NETWORK',
            **one_of(*ROW_ORDERS)),
        Key('sparse_conv_autotune', bool, False, "triton: Triton's autotuner picks the tile shapes (not bitwise "
            'reproducible)', 'NETWORK'),
        Key('amp', str, 'off', 'off, bf16 or fp16 (autocast; fp16 on CUDA only)', 'NETWORK',
            **one_of('off', 'bf16', 'fp16')),
    ]
