"""2D feature sources for multi-view fusion: callables ``FrameData -> tensor [D, H', W']`` (per-pixel embeddings).

The paper (like OpenScene) fuses OpenSeg pixel embeddings. OpenSeg is a TensorFlow SavedModel that this
project does not run; to use it, export its per-pixel maps (OpenScene's ``extract_openseg_img_feature``:
``ppixel_ave_feat`` cropped to the image) for every frame and read them with ``PrecomputedFeatureSource``.
``OpenClipDenseFeatureSource`` is a built-in alternative that needs only open_clip: MaskCLIP-style dense
CLIP features (Zhou et al., ECCV 2022), which live in the CLIP text space like OpenSeg's but are coarser.
"""
import os
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


class PrecomputedFeatureSource:
    """Per-frame feature maps already on disk.

    Format: ``<root>/<frame.name>.pt`` (a tensor, or a dict with key 'feat') or ``<root>/<frame.name>.npy``;
    frame names are '<scene>/<frame id>' (e.g. ``<root>/scene0000_00/20.pt``, ``<root>/Area_5_office_1/
    camera_<uuid>_office_1_frame_3.npy``). The array is [H', W', D] (layout 'hwd', OpenSeg's export order) or
    [D, H', W'] ('dhw'); 'auto' decides by the aspect ratio of the frame's depth map and fails when it cannot.
    Any H' x W' works: fusion maps depth pixels onto the map proportionally.
    """

    def __init__(self, root, layout='auto'):
        if layout not in ('auto', 'hwd', 'dhw'):
            raise ValueError(f"layout must be 'auto', 'hwd' or 'dhw', found {layout!r}")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"feature folder '{root}' does not exist")
        self.root, self.layout = root, layout
        self.feat_dim: Optional[int] = None

    def path_of(self, name):
        for ext in ('.pt', '.npy'):
            path = os.path.join(self.root, name + ext)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(f"no feature map for frame '{name}': expected '{os.path.join(self.root, name)}.pt' "
                                f"or '.npy' ([H', W', D] or [D, H', W'])")

    def _load(self, path):
        """The map of one file as a tensor. Both formats go through the safe readers of util/io.py: a truncated
        file, a pickle or an object array is explained with the file's name, never loaded as code; a loaded
        array must then hold numbers (an object or string array is not a feature map)."""
        from util.io import safe_np_load, safe_torch_load
        if path.endswith('.npy'):
            data = safe_np_load(path, '2D feature map')
        else:
            data = safe_torch_load(path, '2D feature map')
        if isinstance(data, dict):
            if 'feat' not in data:
                raise ValueError(f"2D feature map '{path}': expected a tensor or a dict with key 'feat', found keys "
                                 f"{sorted(data)}")
            data = data['feat']
        if isinstance(data, np.ndarray):
            if data.dtype.kind not in 'biuf':
                kind = 'Python objects' if data.dtype.kind == 'O' else 'not numbers'
                raise ValueError(f"2D feature map '{path}': expected an array of numbers [H', W', D] or [D, H', W'], "
                                 f"found dtype {data.dtype} ({kind})")
            data = torch.from_numpy(data)
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"2D feature map '{path}': expected a tensor or numpy array, found {type(data).__name__}")
        return data

    def _to_dhw(self, feat, path, depth_hw):
        if feat.ndim != 3:
            raise ValueError(f"2D feature map '{path}': expected 3 dimensions [H', W', D] or [D, H', W'], found "
                             f"shape {list(feat.shape)}")
        layout = self.layout
        if layout == 'auto':
            H, W = depth_hw
            aspect = H / W
            fits_hwd = abs(feat.shape[0] / feat.shape[1] - aspect) < 0.1 * aspect
            fits_dhw = abs(feat.shape[1] / feat.shape[2] - aspect) < 0.1 * aspect
            if self.feat_dim is not None:  # once known, the feature dimension settles the layout
                fits_hwd = fits_hwd and feat.shape[2] == self.feat_dim
                fits_dhw = fits_dhw and feat.shape[0] == self.feat_dim
            if fits_hwd == fits_dhw:
                raise ValueError(f"2D feature map '{path}' of shape {list(feat.shape)}: cannot tell [H', W', D] from "
                                 f"[D, H', W'] for a {H}x{W} frame; pass layout 'hwd' or 'dhw' (--feature_layout)")
            layout = 'hwd' if fits_hwd else 'dhw'
        feat = feat.permute(2, 0, 1) if layout == 'hwd' else feat
        if not feat.is_floating_point():
            raise ValueError(f"2D feature map '{path}': expected floating-point features, found {feat.dtype}")
        if self.feat_dim is None:
            self.feat_dim = feat.shape[0]
        elif feat.shape[0] != self.feat_dim:
            raise ValueError(f"2D feature map '{path}': feature dimension {feat.shape[0]} differs from the "
                             f"{self.feat_dim} of earlier frames")
        if not torch.isfinite(feat).all():
            raise ValueError(f"2D feature map '{path}' holds NaN or infinite values")
        return feat

    def __call__(self, frame):
        path = self.path_of(frame.name)
        return self._to_dhw(self._load(path), path, np.asarray(frame.depth).shape)


class OpenClipDenseFeatureSource:
    """Dense open_clip ViT features in the CLIP text space (MaskCLIP's value-path trick).

    For an image: embed patches (positional embedding resized to the patch grid), run all blocks but the
    last; for the last block's input tokens x take its attention's *value path only*,
    ``out_proj(v_proj(ln_1(x)))`` (q/k attention skipped, so each token keeps its own content instead of being
    mixed into a global summary), then ``ln_post`` and the visual projection ``proj``: one text-space vector
    per patch. The map is reshaped to the patch grid, upsampled (bilinear) to the colour image size and
    L2-normalised per pixel. ``keep_residual=True`` adds MaskCLIP's reference variant (residual + MLP of the
    last block on the value output).

    model_name / pretrained: an open_clip architecture and a pretrained tag ('openai', 'laion2b_s34b_b88k')
    or a local checkpoint path; or pass a built ``model`` (any ``open_clip.CLIP`` with a ViT tower).
    input_size: (H, W) fed to the ViT, default the short side at the model's native size, each side rounded
    to a patch multiple. upsample: False returns the patch grid [D, gh, gw] (fusion maps pixels onto it).
    """

    def __init__(self, model_name='ViT-B-16', pretrained='openai', device='cpu', model=None,
                 input_size: Optional[Sequence[int]] = None, upsample=True, keep_residual=False):
        import open_clip
        self.device = torch.device(device)
        if model is None:
            model = _create_open_clip(model_name, pretrained)
        visual = getattr(model, 'visual', model)
        if not hasattr(visual, 'transformer') or not hasattr(visual, 'conv1'):
            raise ValueError(f"OpenClipDenseFeatureSource needs an open_clip ViT image tower; "
                             f"'{model_name}' has {type(visual).__name__}")
        last = visual.transformer.resblocks[-1]
        if not isinstance(getattr(last, 'attn', None), torch.nn.MultiheadAttention):
            raise ValueError(f"open_clip model '{model_name}': the last block's attention is "
                             f"{type(getattr(last, 'attn', None)).__name__}, expected torch.nn.MultiheadAttention")
        if getattr(visual, 'attn_pool', None) is not None:
            raise ValueError(f"open_clip model '{model_name}' pools with an attentional pooler; the value-path "
                             f"trick needs ln_post + proj on tokens (plain CLIP ViTs)")
        self.visual = visual.to(self.device).eval()
        preprocess = getattr(visual, 'preprocess_cfg', None) or {}
        mean = preprocess.get('mean', open_clip.OPENAI_DATASET_MEAN)
        std = preprocess.get('std', open_clip.OPENAI_DATASET_STD)
        self.mean = torch.tensor(mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(3, 1, 1)
        self.patch = visual.patch_size
        self.native = visual.image_size
        self.input_size = tuple(input_size) if input_size else None
        self.upsample, self.keep_residual = upsample, keep_residual
        proj = visual.proj
        self.feat_dim = int(proj.shape[1]) if proj is not None else int(visual.ln_post.normalized_shape[0])

    def _input_hw(self, h, w):
        if self.input_size:
            th, tw = self.input_size
        else:
            s = min(self.native) / min(h, w)
            th, tw = h * s, w * s
        ph, pw = self.patch
        return max(ph, int(round(th / ph)) * ph), max(pw, int(round(tw / pw)) * pw)

    def _positional_embedding(self, grid):
        pos = self.visual.positional_embedding
        gh0, gw0 = self.visual.grid_size
        if tuple(grid) == (gh0, gw0):
            return pos
        cls, patches = pos[:1], pos[1:]
        patches = patches.reshape(1, gh0, gw0, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=tuple(grid), mode='bicubic', align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)], dim=0)

    def last_block_input(self, images):
        """Tokens [B, 1 + gh*gw, C] entering the last transformer block; images [B, 3, H, W] normalised."""
        v = self.visual
        x = v.conv1(images)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(grid).to(x.dtype)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        batch_first = getattr(v.transformer, 'batch_first', True)
        if not batch_first:
            x = x.transpose(0, 1)
        for blk in blocks[:-1]:
            x = blk(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x, tuple(grid)

    def value_path(self, tokens):
        """MaskCLIP dense head on last-block input tokens [B, L, C] -> text-space tokens [B, L, D] (unnormalised)."""
        blk = self.visual.transformer.resblocks[-1]
        attn = blk.attn
        C = tokens.shape[-1]
        w_v = attn.in_proj_weight[2 * C:] if attn.in_proj_weight is not None else attn.v_proj_weight
        b_v = attn.in_proj_bias[2 * C:] if attn.in_proj_bias is not None else None
        y = F.linear(blk.ln_1(tokens), w_v, b_v)
        y = blk.ls_1(attn.out_proj(y))
        if self.keep_residual:
            y = y + tokens
            y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
        y = self.visual.ln_post(y)
        if self.visual.proj is not None:
            y = y @ self.visual.proj
        return y

    @torch.no_grad()
    def dense_features(self, color):
        """color [H, W, 3] uint8 RGB -> [D, H, W] (or [D, gh, gw] without upsampling), unit norm per pixel."""
        color = np.asarray(color)
        if color.ndim != 3 or color.shape[2] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], found shape {list(color.shape)}")
        h, w = color.shape[:2]
        img = torch.as_tensor(color, device=self.device).permute(2, 0, 1).float() / 255.0
        img = F.interpolate(img[None], size=self._input_hw(h, w), mode='bilinear', align_corners=False,
                            antialias=True)[0]
        img = ((img - self.mean) / self.std)[None].to(self.visual.conv1.weight.dtype)
        tokens, grid = self.last_block_input(img)
        feat = self.value_path(tokens)[0, 1:].float()  # drop the class token
        feat = feat.T.reshape(-1, grid[0], grid[1])
        if self.upsample:
            feat = F.interpolate(feat[None], size=(h, w), mode='bilinear', align_corners=False)[0]
        return F.normalize(feat, dim=0)

    def __call__(self, frame):
        return self.dense_features(frame.color)


def _create_open_clip(model_name, pretrained):
    import open_clip
    is_path = pretrained and (os.path.sep in str(pretrained) or os.path.isfile(str(pretrained)))
    if is_path and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"open_clip checkpoint '{pretrained}' does not exist")
    if not pretrained and not str(model_name).startswith(('hf-hub:', 'local-dir:')):
        # randomly initialised CLIP features are meaningless for fusion: refuse rather than run silently
        raise ValueError(f"open_clip model '{model_name}': give pretrained weights (a tag such as 'openai' or a "
                         f"checkpoint path); to use a model built in code, pass model=...")
    try:
        from pipeline.text_embeddings import needs_quick_gelu  # the text side must be built the same way
        return open_clip.create_model(model_name, pretrained=pretrained or None, require_pretrained=True,
                                      force_quick_gelu=needs_quick_gelu(model_name, pretrained))
    except Exception as err:
        from util.io import refused_torch_file
        refused = refused_torch_file(err, pretrained, 'CLIP checkpoint') if pretrained else None
        if refused is not None:
            raise refused from None
        offline = os.environ.get('HF_HUB_OFFLINE') == '1'
        raise RuntimeError(
            f"cannot build open_clip model '{model_name}' with pretrained={pretrained!r}: {type(err).__name__}: {err}. "
            + ("HF_HUB_OFFLINE=1 is set, so weights must already be cached or given as a local file: "
               if offline else "")
            + "download the checkpoint once (e.g. with network access, open_clip.create_model(name, pretrained=tag)) "
              "or pass --pretrained /path/to/open_clip_pytorch_model.bin") from err
