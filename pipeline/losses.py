"""The ESG distillation losses (paper §3.4; docs/method.md) between 3D features and ESS embeddings.

``cosine_distance(output, target)`` = mean over rows of ``1 - cos(output_i, target_i)``, the value of
upstream's ``(1 - nn.CosineSimilarity()(output, target)).mean()``, written as one autograd function:
the output has 768 channels for every covered voxel (~700k rows in a ScanNet batch), and autograd through
``F.cosine_similarity`` keeps and re-reads several [N, 768] intermediates (a quarter of a CPU training step
in the demo). Here the forward keeps only the inputs and three per-row scalars, and the backward is one
fused expression:

    d/do (1 - o.t / (|o| |t|)) = -t / (|o| |t|) + (o.t) o / (|o|^3 |t|)
"""
import torch

_EPS = 1e-8  # as torch.nn.CosineSimilarity: norms are clamped below at eps


class _CosineDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output, target):
        dot = (output * target).sum(1)
        out_norm = output.norm(dim=1).clamp_min(_EPS)
        target_norm = target.norm(dim=1).clamp_min(_EPS)
        ctx.save_for_backward(output, target, dot, out_norm, target_norm)
        return (1.0 - dot / (out_norm * target_norm)).mean()

    @staticmethod
    def backward(ctx, grad):
        output, target, dot, out_norm, target_norm = ctx.saved_tensors
        scale = grad / output.shape[0]
        grad_output = grad_target = None
        if ctx.needs_input_grad[0]:
            a = (-scale / (out_norm * target_norm)).unsqueeze(1)
            b = (scale * dot / (out_norm ** 3 * target_norm)).unsqueeze(1)
            grad_output = torch.addcmul(target * a, output, b)
        if ctx.needs_input_grad[1]:
            a = (-scale / (out_norm * target_norm)).unsqueeze(1)
            b = (scale * dot / (target_norm ** 3 * out_norm)).unsqueeze(1)
            grad_target = torch.addcmul(output * a, target, b)
        return grad_output, grad_target


def _at_least_float32(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def cosine_distance(output, target):
    """mean_i (1 - cos(output_i, target_i)) for row-aligned [N, D] tensors (half inputs computed in float32)."""
    if output.shape != target.shape:
        raise ValueError(f'cosine distance needs row-aligned tensors, found {list(output.shape)} and '
                         f'{list(target.shape)}')
    if output.shape[0] == 0:
        raise ValueError('cosine distance of zero rows: the batch has no voxel with an ESS embedding')
    return _CosineDistance.apply(_at_least_float32(output), _at_least_float32(target))


DISTILLATION_LOSSES = ('cosine', 'l1')
SUPERVISED_LOSS = 'supervised_ce'   # the fully supervised reference (the ceiling), not part of the method
LOSS_TYPES = DISTILLATION_LOSSES + (SUPERVISED_LOSS,)


def distillation_loss(output, target, loss_type):
    """ESG loss between the 3D network's features and the ESS embeddings of the same voxels."""
    if loss_type == 'cosine':
        return cosine_distance(output, target)
    if loss_type == 'l1':
        return torch.nn.functional.l1_loss(_at_least_float32(output), _at_least_float32(target))
    raise ValueError(f"loss_type must be one of {DISTILLATION_LOSSES} for distillation, found '{loss_type}'")


def supervised_cross_entropy(output, labels, text_embeddings, ignore_index=255):
    """Cross-entropy of ``output @ T^T`` against ground-truth labels: the fully supervised 3D network.

    The logits are exactly the ones evaluation takes the argmax of (pipeline.inference.point_logits), so the
    supervised network is scored by the same code as the distilled one. No temperature: the norm of the
    output is free (the last layer is a plain linear map), so the network learns its own sharpness; the
    text matrix T (rank C) only re-parameterises the usual C-way linear classifier.
    output [V, D], labels int [V] (``ignore_index`` = unannotated), text_embeddings [C, D].
    """
    valid = labels != ignore_index
    if not bool(valid.any()):
        raise ValueError('supervised cross-entropy of zero labelled voxels: the batch has no annotated voxel')
    logits = _at_least_float32(output[valid]) @ text_embeddings.to(output.device, torch.float32).t()
    return torch.nn.functional.cross_entropy(logits, labels[valid].to(output.device))
