"""The ESS adapter (paper §3.3; docs/method.md, "ESS"): a residual bottleneck on the fused 2D embeddings.

    a(x)   = W2(W1 x) * (1 - alpha) + x * alpha        W1: D -> D/4 (no bias), W2: D/4 -> D (bias)
    logits = a(x) @ T^T                                 T: the frozen CLIP text embeddings [C, D]

As in the official code (ESS/openseg_pre_train.py, ``OpenSeg_Adapter``) there is NO activation between
or after the two linear layers (upstream leaves ReLU / GELU commented out), so the adapter is an affine
map of rank <= D/4 plus a small identity share; and no temperature or normalisation is applied to
either side of the dot product. The two layers are kept in an ``nn.Sequential`` named ``fc`` so the
parameter names (``fc.0.weight``, ``fc.1.weight``, ``fc.1.bias``) match upstream checkpoints.

The text embeddings are a non-persistent buffer: they move with ``.to(device)`` but are not part of
the state_dict (upstream keeps them outside the module state too), so an upstream checkpoint loads with
``strict=True`` and the classifier always comes from the config's text embeddings.
"""
import torch
import torch.nn as nn


class EmbeddingAdapter(nn.Module):
    """Adapter + frozen text classifier. ``adapt(x)`` -> adapted embeddings; ``forward(x)`` -> logits."""

    def __init__(self, text_embeddings, feat_dim=None, reduction=4, alpha=0.05):
        super().__init__()
        text_embeddings = torch.as_tensor(text_embeddings, dtype=torch.float32)
        if text_embeddings.dim() != 2:
            raise ValueError(f'text embeddings must be [C, D], found shape {list(text_embeddings.shape)}')
        feat_dim = text_embeddings.shape[1] if feat_dim is None else int(feat_dim)
        if text_embeddings.shape[1] != feat_dim:
            raise ValueError(f'text embeddings have dimension {text_embeddings.shape[1]} but the adapter '
                             f'expects {feat_dim}-d features (feature_2d_extractor / feat_dim in the config)')
        if feat_dim % reduction:
            raise ValueError(f'feature dimension {feat_dim} is not divisible by the reduction {reduction}')
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'adapter alpha must lie in [0, 1], found {alpha}')
        self.feat_dim, self.alpha = feat_dim, float(alpha)
        # W1 without bias, W2 with bias, nothing in between: exactly upstream's OpenSeg_Adapter.fc
        self.fc = nn.Sequential(
            nn.Linear(feat_dim, feat_dim // reduction, bias=False),
            nn.Linear(feat_dim // reduction, feat_dim, bias=True),
        )
        self.register_buffer('text_embeddings', text_embeddings.clone(), persistent=False)

    @property
    def num_classes(self):
        return self.text_embeddings.shape[0]

    def adapt(self, x):
        """a(x) for features of shape [..., D] (any float dtype; computed in float32)."""
        if x.shape[-1] != self.feat_dim:
            raise ValueError(f'adapter expects {self.feat_dim}-d features, found shape {list(x.shape)}')
        x = x.float()
        return self.fc(x) * (1.0 - self.alpha) + x * self.alpha

    def classify(self, adapted):
        """Logits [..., C] of (already adapted) embeddings against the frozen text embeddings."""
        return adapted @ self.text_embeddings.t()

    def forward(self, x):
        return self.classify(self.adapt(x))
