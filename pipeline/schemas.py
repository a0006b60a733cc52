"""Every stage's config keys, in one place: the stage scripts, the experiment driver (run/experiment.py), the
viewer and the benchmarks read them here. ``python <stage script> --help`` prints a stage's keys with their help.

A key is added to a stage by adding it to the stage's schema below (name, type, default, help, section, check);
the stage reads it as an attribute of its config. Sections (DATA, TEXT, TRAIN, ...) only group the keys in the
config files and in ``--help``: a key means the same under any section (``SECTION.key`` on the command line is
accepted for upstream's sake, an unknown section there is an error).
"""
from pipeline.keys import (
                           NON_NEGATIVE,
                           NON_NEGATIVE_INT,
                           POSITIVE,
                           POSITIVE_INT,
                           dataset_keys,
                           fmiou_key,
                           network_keys,
                           one_of,
                           resume_key,
                           run_keys,
                           text_keys,
                           workers_key,
)
from pipeline.losses import LOSS_TYPES
from util.config import Key, Schema

# ----------------------------------------------------------------------------- PLG
PLG = Schema('PLG: pseudo labels from fused 2D features and CLIP text embeddings', [
    *dataset_keys(),
    *text_keys(prompt_template='none'),  # upstream's PLG turns its prompt engineering off
    Key('feat_dim', int, 0, 'feature width (0 = from feature_2d_extractor)', 'PLG', **NON_NEGATIVE_INT),
    Key('split', str, 'train', 'split to label (ESS trains on the train split)', 'PLG'),
    Key('scene_label_file', str, '', "JSON {scene: [class names]} of scene tags ('' = the classes present in GT)",
        'PLG', exists='file'),
    Key('plg_per_point', bool, False, "False: upstream's voxel-representative scoring; True: every covered point",
        'PLG'),
    Key('chunk_size', int, 65536, 'points scored at once (memory: chunk x classes)', 'PLG', **POSITIVE_INT),
    # geometry-aware refinement (not the paper's; docs/method.md, "PLG refinement")
    Key('plg_refine', str, 'none', "none: the paper's labels; superpoints: every superpoint's labelled points get "
        'the class pooled over them', 'PLG', nullable=True, **one_of('none', 'superpoints')),
    Key('plg_refine_pool', str, 'mean', 'superpoints: mean (of the post-mask probabilities) or vote (weighted by '
        'confidence)', 'PLG', **one_of('mean', 'vote')),
    Key('plg_refine_spread', bool, False, 'superpoints: also label the unlabeled points of a superpoint whose labelled '
        'share is >= plg_refine_min_coverage (raises coverage)', 'PLG'),
    Key('plg_refine_min_coverage', float, 0.5, 'plg_refine_spread: the labelled share a superpoint needs', 'PLG',
        check=lambda v: 0 < v <= 1, must='a number in (0, 1]'),
    Key('superpoint_source', str, 'auto', "auto: ScanNet's <scene>_vh_clean_2.0.010000.segs.json where present, else a "
        'graph segmentation of the points; scannet: the segs.json only; graph: always the graph segmentation', 'PLG',
        **one_of('auto', 'scannet', 'graph')),
    Key('superpoint_root', str, '${exp_root}/superpoints', 'cache of computed superpoints (python -m prep.superpoints '
        'fills one ahead; set it in dataset.yaml to share it), also searched for segs.json files', 'PLG'),
    *run_keys('save_folder', '${exp_root}/plg'),
], example='python vlm_ps_generation/generation_vlm.py --config vlm_ps_generation/config/scannet.yaml '
           'scene_label_file tags.json save_folder exp/scannet/plg_tags')


# ----------------------------------------------------------------------------- ESS
ADAPTER_KEYS = [
    Key('adapter_reduction', int, 4, 'bottleneck width = D / adapter_reduction (upstream 4: 768 -> 192)', 'ESS',
        **POSITIVE_INT),
    Key('adapter_alpha', float, 0.05, 'share of the identity in a(x) (upstream 0.05)', 'ESS',
        check=lambda v: 0 <= v <= 1, must='a number in [0, 1]'),
]

MAX_POINTS_PER_SCENE = 10_000_000  # num_points above this is a typo that would allocate gigabytes per step

ESS_TRAINING = Schema('ESS: train the embedding adapter on the PLG pseudo labels', [
    *dataset_keys(),
    *text_keys(),
    Key('pseudo_label_path', str, '${exp_root}/plg', "PLG's output folder", 'DATA', exists='dir',
        hint='run PLG first (vlm_ps_generation/generation_vlm.sh)'),
    Key('cache_scenes', bool, False, 'keep every scene in memory after its first read', 'DATA'),
    *ADAPTER_KEYS,
    Key('num_points', int, 40000, 'covered points drawn per scene per step (upstream 40,000)', 'TRAIN',
        check=lambda v: 0 < v <= MAX_POINTS_PER_SCENE,
        must=f'a positive integer up to {MAX_POINTS_PER_SCENE:,} (a ScanNet scene has ~150,000 points; each one drawn '
             f'costs a row of the batch)'),
    Key('batch_size', int, 24, 'scenes per step (upstream code 24; the paper says 16)', 'TRAIN', **POSITIVE_INT),
    Key('epochs', int, 150, 'epochs (upstream code 150; the paper says 80)', 'TRAIN', **POSITIVE_INT),
    Key('base_lr', float, 0.003, 'Adam learning rate', 'TRAIN', **POSITIVE),
    Key('betas', list, [0.9, 0.999], 'Adam betas', 'TRAIN', item=float,
        check=lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), must='two numbers in [0, 1)'),
    Key('weight_decay', float, 0.0004, 'Adam weight decay', 'TRAIN', **NON_NEGATIVE),
    Key('step_epoch', int, 20, 'StepLR step (stepped at the start of every epoch, as upstream)', 'TRAIN',
        **POSITIVE_INT),
    Key('multiplier', float, 0.7, 'StepLR gamma', 'TRAIN', **POSITIVE),
    Key('eval_freq', int, 1, 'validate every eval_freq epochs (and after the last)', 'TRAIN', **POSITIVE_INT),
    resume_key('TRAIN'),
    Key('tensorboard', bool, True, 'write TensorBoard scalars to <save_path>/tensorboard', 'TRAIN'),
    workers_key(),
    *run_keys('save_path', '${exp_root}/ess', seed=2023),
], example='python train_openseg_pre_train.py --config config/scannet/openseg_pre_train.yaml epochs=80 batch_size=16')

ESS_INFERENCE = Schema("ESS inference: write the adapted embeddings (ESG's targets) and score them", [
    *dataset_keys(),
    *text_keys(),
    Key('splits', list, ['train', 'val'], 'splits to write (ESG trains on train and validates on val)', 'DATA',
        item=str),
    *ADAPTER_KEYS,
    Key('model_path', str, '', "the adapter checkpoint ('' = <save_path>/best.pth)", 'ESS', exists='file'),
    Key('ess_embedding_path', str, '${exp_root}/ess_embeddings', 'output folder of the adapted embeddings', 'ESS'),
    fmiou_key('ESS'),
    workers_key(),
    *run_keys('save_path', '${exp_root}/ess', seed=2023),
], example='python eval_openseg_pre_train.py --config config/scannet/openseg_pre_eval.yaml splits=val')


# ----------------------------------------------------------------------------- ESG
ESG_TRAINING = Schema('ESG: distil the ESS embeddings into a 3D sparse U-Net', [
    *dataset_keys(),
    *text_keys(),
    Key('esg_targets', str, '${exp_root}/ess_embeddings', "the embeddings to distil (ESS inference's output; the "
        "raw fused features give OpenScene's 3D distillation)", 'DATA', exists='dir',
        hint='run ESS inference first (run/ess_eval.sh)'),
    Key('missing_scenes', str, 'error', 'a train scene without an embedding in esg_targets: error (stop, naming it) '
        'or warn (train without it, as upstream; listed in esg_summary.json)', 'DATA', **one_of('error', 'warn')),
    Key('aug', bool, True, 'training augmentation (rotation, scale, flip, colour), as upstream', 'DATA'),
    *network_keys(),
    Key('loss_type', str, 'cosine', 'cosine: mean(1 - cos(f, e_ESS)) | l1 | supervised_ce (not the method: the '
        'fully supervised ceiling, cross-entropy on GT labels)', 'ESG', **one_of(*LOSS_TYPES)),
    Key('batch_size', int, 4, 'scenes per step, summed over processes (upstream 4)', 'ESG', **POSITIVE_INT),
    Key('base_lr', float, 0.0001, 'Adam learning rate', 'ESG', **POSITIVE),
    Key('power', float, 0.9, 'poly decay (1 - step / steps) ** power', 'ESG', **NON_NEGATIVE),
    Key('lr_x10_after_first_step', bool, True, "upstream's quirk: 10 x poly(lr) from the second step on", 'ESG'),
    Key('loop', int, 5, 'each epoch sees every training scene loop times', 'ESG', **POSITIVE_INT),
    Key('epochs', int, 100, 'epochs', 'ESG', **POSITIVE_INT),
    Key('sync_bn', bool, False, 'SyncBatchNorm under torchrun (CUDA only)', 'ESG'),
    Key('print_freq', int, 10, 'log every print_freq steps', 'ESG', **POSITIVE_INT),
    Key('evaluate', bool, True, 'validate during training', 'ESG'),
    Key('eval_freq', int, 1, 'validate every eval_freq epochs (and after the last)', 'ESG', **POSITIVE_INT),
    Key('val_repeats', int, 1, 'random voxelisations summed at validation', 'ESG', **POSITIVE_INT),
    fmiou_key('ESG'),
    resume_key('ESG'),
    Key('tensorboard', bool, True, 'write TensorBoard scalars to <save_path>/tensorboard', 'ESG'),
    workers_key(8),
    *run_keys('save_path', '${exp_root}/esg', seed=1463),
], example='python train_esg.py --config config/scannet/openseg_train.yaml batch_size=8 base_lr 0.0002')


# ----------------------------------------------------------------------------- evaluation, queries
EVALUATION = Schema('Evaluate an ESG 3D network: per-point predictions, mIoU / mAcc, pictures', [
    *dataset_keys(),
    *text_keys(),
    Key('split', str, 'val', 'split to evaluate', 'DATA'),
    *network_keys(),
    Key('model_path', str, '${exp_root}/esg/best.pth', 'the checkpoint to evaluate', 'TEST', exists='file',
        hint='train ESG first (run/esg.sh), or give model_path'),
    Key('feature_type', str, 'distill', "distill (the 3D network), fusion (the 2D features) or ensemble (OpenScene's)",
        'TEST', **one_of('distill', 'fusion', 'ensemble')),
    Key('test_repeats', int, 5, 'random voxelisations whose logits are summed (upstream 5)', 'TEST', **POSITIVE_INT),
    Key('mark_no_feature_to_unknown', bool, True, "fusion: points without a 2D feature count as 'unlabeled'",
        'TEST'),
    Key('save_ply', bool, True, 'write coloured PLY files of prediction and GT', 'TEST'),
    Key('save_png', bool, True, 'write a top-down picture per scene', 'TEST'),
    Key('topdown_ceiling_crop', float, -1.0, 'metres cut below the top in the pictures (-1: 0.5 for S3DIS, whose '
        'ceilings hide the room, none for ScanNet)', 'TEST'),
    Key('stage_metrics', str, '${exp_root}/ess/ess_eval_metrics.json', "ESS inference's metrics: PLG and ESS bars "
        "beside the network's in the per-class chart ('' = none)", 'TEST'),
    fmiou_key('TEST'),
    workers_key(1),
    *run_keys('save_folder', '${exp_root}/esg/result_eval', seed=1463),
], example='python evaluate.py --config config/scannet/openseg_eval.yaml model_path exp/scannet/esg/best.pth '
           'test_repeats=1')

QUERY_KEYS = [
    Key('queries', str, '', "free-text queries separated by ';', e.g. 'chair;a soft place to sit'", 'QUERY'),
    Key('labels', str, '', "a label set separated by ';' for the segmentation ('' = the config's classes)",
        'QUERY'),
    Key('query_embeddings', str, '', '.npy [Q, D]: one text embedding per name of queries (else labels), in order',
        'QUERY', exists='file'),
    Key('scenes', str, '', "scenes of split to answer, 'a,b' ('' = all)", 'QUERY'),
    Key('input', str, '', "one's own scan(s): a .ply / .pth file or a folder of them, instead of the data set",
        'QUERY'),
    Key('input_up_axis', str, 'z', 'the up axis of the input scans (y for ARKit and many phone apps)', 'QUERY',
        **one_of('x', 'y', 'z')),
    Key('input_scale', float, 1.0, 'to metres: 0.001 for scans in millimetres', 'QUERY', **POSITIVE),
    Key('input_checks', bool, True, "refuse an own scan whose size is not a room's (0.5-200 m: input_scale?) or "
        'whose largest plane, the floor, is not horizontal (input_up_axis?)', 'QUERY'),
    Key('ess_embedding_path', str, '${exp_root}/ess_embeddings', 'feature_type ess: the ESS inference output',
        'QUERY'),
    Key('score_threshold', float, 0.2, 'cosine similarity; the JSON reports the share of points above it',
        'QUERY'),
    Key('max_voxels', int, 1_000_000, 'larger voxelisations run in tiles (memory); 0 = never tile', 'QUERY',
        **NON_NEGATIVE_INT),
    Key('tile_margin', float, 1.0, 'metres of context around each tile', 'QUERY', **NON_NEGATIVE),
]

# the evaluation's keys (the same prediction) with the query's own; the feature types add 'ess'
QUERY = Schema('Open-vocabulary queries and segmentation with any label set, on the data set or own scans', [
    *(k for k in EVALUATION.keys if k.name not in ('feature_type', 'save_folder')),
    Key('feature_type', str, 'distill', "distill (the 3D network), fusion (the fused 2D features) or ess (the ESS "
        "embeddings)", 'TEST', **one_of('distill', 'fusion', 'ess')),
    Key('save_folder', str, '${exp_root}/query', 'output folder of the answers', 'RUN'),
    *QUERY_KEYS,
], example='python query.py --config config/demo/openseg_eval.yaml queries "chair;a place to sleep" '
           'scenes=scene0016_00')
