"""The networks of the method, built from plain values (the stages read them from their configs).

    model = build_disnet('MinkUNet18A', 'openseg')                 # ESG, evaluation, queries
    model, state = build_model(checkpoint, network, device, log)    # a trained DisNet: its checkpoint's own network
    adapter = build_adapter(text, 'openseg', reduction=4, alpha=0.05)  # ESS
"""
from models.adapter import EmbeddingAdapter
from models.disnet import DisNet
from util.checkpoint import load_checkpoint
from util.io import safe_torch_load

# Embedding width of each 2D feature extractor: OpenSeg 768 (CLIP ViT-L/14@336px's text space), LSeg and
# CLIP ViT-B 512. Upstream matches by substring ('lseg' in args.feature_2d_extractor), so 'lseg_xyz' works.
FEATURE_DIMS = {'openseg': 768, 'lseg': 512, 'clip': 512}


def feature_dim(feature_2d_extractor):
    """Feature / text-embedding dimension of a ``feature_2d_extractor`` config value."""
    for name, dim in FEATURE_DIMS.items():
        if name in str(feature_2d_extractor).lower():
            return dim
    raise ValueError(f"unknown feature_2d_extractor '{feature_2d_extractor}': expected a name containing one of "
                     f"{sorted(FEATURE_DIMS)}")


# what a DisNet is built from; a checkpoint trained here records them, so it alone rebuilds its network
NETWORK_KEYS = ('arch_3d', 'feature_2d_extractor', 'sparse_engine')


def build_disnet(arch_3d, feature_2d_extractor='openseg', sparse_engine='builtin'):
    """A DisNet: the ``arch_3d`` U-Net whose output width is that of ``feature_2d_extractor``'s embeddings."""
    return DisNet(arch_3d, feature_dim(feature_2d_extractor), sparse_engine or 'builtin')


def checkpoint_network(model_path, network, log):
    """``network`` ({key of NETWORK_KEYS: value}) with the values the checkpoint was trained with, where it records
    them (upstream's checkpoints do not); each difference is said through ``log``."""
    if not model_path:
        raise ValueError('model_path is empty: give the checkpoint to evaluate, e.g. model_path exp/demo/esg/best.pth')
    trained = (safe_torch_load(model_path, 'checkpoint').get('extra') or {}).get('config') or {}
    network = dict(network)
    for key in NETWORK_KEYS:
        if key in trained and trained[key] != network.get(key):
            log(f"{key}: the checkpoint was trained with {trained[key]!r}, the config says {network.get(key)!r}; "
                f"using the checkpoint's")
            network[key] = trained[key]
    return network


def build_model(model_path, network, device, log):
    """(DisNet with the checkpoint's weights, the checkpoint's state); the network is the checkpoint's own
    (``checkpoint_network``), and loading is strict: a different architecture is an error."""
    model = build_disnet(**checkpoint_network(model_path, network, log)).to(device)
    state = load_checkpoint(model_path, model, map_location=device)
    return model, state


def build_adapter(text_embeddings, feature_2d_extractor, reduction=4, alpha=0.05):
    """The ESS adapter; its feature dimension is the extractor's, and the text embeddings must have it too."""
    return EmbeddingAdapter(text_embeddings, feat_dim=feature_dim(feature_2d_extractor), reduction=int(reduction),
                            alpha=float(alpha))
