"""The networks a config describes (the stages build them from config values; models/ takes plain values).

    model = build_disnet(cfg)                  # ESG, evaluation, queries: arch_3d, feature_2d_extractor, sparse_engine
    adapter = build_adapter(cfg, text)         # ESS: feature_2d_extractor, adapter_reduction, adapter_alpha
"""
from dataset.label_constants import feature_dim
from models.adapter import EmbeddingAdapter
from models.disnet import DisNet


def build_disnet(cfg):
    """The DisNet a config describes: ``arch_3d``, the width of ``feature_2d_extractor``'s embeddings,
    ``sparse_engine`` (builtin when absent)."""
    out_channels = feature_dim(getattr(cfg, 'feature_2d_extractor', 'openseg'))
    return DisNet(getattr(cfg, 'arch_3d', None), out_channels, getattr(cfg, 'sparse_engine', None) or 'builtin')


def build_adapter(cfg, text_embeddings):
    """The ESS adapter of a config; the feature dimension is that of the extractor, and the text embeddings
    must have it too."""
    return EmbeddingAdapter(text_embeddings, feat_dim=feature_dim(cfg.feature_2d_extractor),
                            reduction=int(cfg.adapter_reduction), alpha=float(cfg.adapter_alpha))
