"""CLIP text embeddings of the class names (paper §3.2: the text side of the PLG formula).

Either read from an ``.npy`` file ([C, D], rows normalised on load) or computed with open_clip:
ViT-L-14-336 gives the 768-d space of OpenSeg features, ViT-B-32 the 512-d space of LSeg/CLIP.
Upstream (util/util.py extract_text_feature) encodes the bare class names with ScanNet's
'otherfurniture' spelled 'other'; callers pass ``dataset_info(...).text_labels`` for that.

Results may be cached on disk; the cache file name carries a hash of everything that changes the
result (model, weights, class names, template), so a stale cache can never be returned.
"""
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from dataset import formats
from util.io import atomic_np_save, refused_torch_file

_CACHE_VERSION = 1


# named prompt templates; any other value must be a template with '{}' where the class name goes
PROMPT_TEMPLATES = {
    'none': '',                     # the bare class names: upstream's PLG (its prompt_eng False)
    'upstream': 'a {} in a scene',  # upstream's prompt engineering (prompt_eng True in its evaluation config,
                                    # behind the reference ScanNet numbers), the last class as 'other'
}


def apply_template(class_names, template='', last_as_other=False):
    """One prompt per class: ``template`` is 'none' / '' (the bare names), 'upstream' ('a {} in a scene') or a
    custom template with '{}'.

    ``last_as_other``: with a template, the last class is prompted as the bare word 'other', as upstream's
    ``extract_text_feature`` does for ScanNet ('otherfurniture') and S3DIS ('clutter').
    """
    template = PROMPT_TEMPLATES.get(template, template)
    if not template:
        return list(class_names)
    if '{}' not in template:
        raise ValueError(f"prompt_template '{template}' must be 'upstream', 'none' or a template with '{{}}' where "
                         f"the class name goes (e.g. 'a {{}} in a scene')")
    prompts = [template.format(name) for name in class_names]
    if last_as_other and prompts:
        prompts[-1] = 'other'
    return prompts


def _normalise(emb, where='computed text embeddings'):
    """Row L2 normalisation done exactly as formats.load_text_embeddings does it, so that a freshly
    computed result and its cached copy are bit-identical (the cache stores the raw output); NaN / Inf /
    zero rows are errors."""
    return torch.from_numpy(formats.normalise_text_embeddings(emb, where))


@torch.no_grad()
def _encode_raw(model, tokenizer, class_names, template='', device='cpu', last_as_other=False):
    prompts = apply_template(class_names, template, last_as_other)
    tokens = tokenizer(prompts).to(device)
    model = model.to(device).eval()
    return model.encode_text(tokens).float().cpu().numpy()


def encode_class_names(model, tokenizer, class_names, template='', device='cpu', last_as_other=False):
    """Encode class names with an already-built open_clip model -> float32 [C, D], rows L2-normalised."""
    return _normalise(_encode_raw(model, tokenizer, class_names, template, device, last_as_other))


def _resolve_model_name(model_name):
    """A model name known to open_clip, or a path to a model-config JSON (registered under its stem)."""
    import open_clip
    if model_name.endswith('.json'):
        if not os.path.isfile(model_name):
            raise FileNotFoundError(f"open_clip model config '{model_name}' does not exist (clip_model)")
        open_clip.add_model_config(model_name)
        return os.path.splitext(os.path.basename(model_name))[0]
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model '{model_name}' (clip_model): use e.g. 'ViT-L-14-336' "
                         f"(768-d, OpenSeg space), 'ViT-B-32' (512-d, LSeg space) or a model-config .json path")
    return model_name


def _weights_key(pretrained):
    """Identity of the weights for the cache key: a tag, or a local file's path, size and mtime."""
    if os.path.isfile(pretrained):
        st = os.stat(pretrained)
        return f'file:{os.path.abspath(pretrained)}:{st.st_size}:{st.st_mtime_ns}'
    return f'tag:{pretrained}'


def cache_file(cache_dir, class_names, model_name, pretrained, template, last_as_other=False):
    """Cache path of one (model, weights, class names, template) combination."""
    if model_name.endswith('.json') and os.path.isfile(model_name):
        with open(model_name, 'rb') as f:  # a config file's content defines the model, not its name
            model_id = 'json:' + hashlib.sha1(f.read()).hexdigest()
    else:
        model_id = model_name
    key = json.dumps({'v': _CACHE_VERSION, 'model': model_id, 'weights': _weights_key(pretrained),
                      'labels': list(class_names), 'template': template,
                      'prompts': apply_template(class_names, template, last_as_other)}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    safe = os.path.basename(model_name).replace('/', '_').replace('.json', '')
    return os.path.join(cache_dir, f'text_emb_{safe}_{len(class_names)}c_{digest}.npy')


def needs_quick_gelu(model_name, pretrained):
    """True when an open_clip pretrained tag was trained with QuickGELU (the OpenAI weights) but the model
    config does not say so: open_clip then only warns and builds GELU, which degrades every feature. A
    local checkpoint carries no tag: pick the '-quickgelu' model name for OpenAI weights yourself."""
    import open_clip
    if not pretrained or os.path.isfile(str(pretrained)):
        return False
    return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get('quick_gelu', False))


class WeightsUnavailable(FileNotFoundError):
    """The CLIP weights of an open_clip tag are neither on this machine nor reachable."""


_HUB_HOST = 'huggingface.co'


def hub_reachable(timeout=1.5):
    """False when ``HF_HUB_OFFLINE`` is set or the model hub cannot be reached within ``timeout`` seconds (a TCP
    connection to its host): the check that lets a missing download fail in a second instead of after retries."""
    if os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes', 'on'):
        return False
    import socket
    try:
        socket.create_connection((_HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def weights_on_disk(model_name, pretrained):
    """True when open_clip would find the weights of tag ``pretrained`` without a download (its Hugging Face
    cache, or the file of its download URL in open_clip's cache folder); None when open_clip knows no such tag."""
    import open_clip
    tag = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag:
        return None
    hub = (tag.get('hf_hub') or '').rstrip('/')
    if hub:
        from huggingface_hub import try_to_load_from_cache
        for filename in ('open_clip_model.safetensors', 'open_clip_pytorch_model.bin'):
            if isinstance(try_to_load_from_cache(hub, filename), str):
                return True
    url = tag.get('url') or ''
    if url:
        folder = os.path.expanduser(os.environ.get('OPENCLIP_CACHE_DIR', '~/.cache/clip'))
        if os.path.isfile(os.path.join(folder, os.path.basename(url))):
            return True
    return False


def build_clip_text_model(model_name='ViT-L-14-336', pretrained='openai', device='cpu'):
    """(model, tokenizer) from open_clip; ``pretrained`` is an open_clip tag or a local checkpoint path. A tag
    whose weights are not on this machine while the hub is unreachable fails at once (``WeightsUnavailable``)."""
    import open_clip
    name = _resolve_model_name(model_name)
    if pretrained and not os.path.isfile(pretrained) and (
            os.sep in pretrained or pretrained.endswith(('.pt', '.pth', '.bin', '.safetensors'))):
        raise FileNotFoundError(f"CLIP checkpoint '{pretrained}' (clip_pretrained) does not exist")
    if pretrained and not os.path.isfile(pretrained) and weights_on_disk(name, pretrained) is False \
            and not hub_reachable():
        raise WeightsUnavailable(
            f"the CLIP weights '{pretrained}' of {model_name} are not on this machine and the model hub "
            f"({_HUB_HOST}) cannot be reached (offline, or HF_HUB_OFFLINE set); give the weights yourself: "
            f"clip_pretrained <a local checkpoint of {model_name}>, or skip CLIP: text_embeddings_path <a [C, D] .npy>")
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None, device=device,
                                       force_quick_gelu=needs_quick_gelu(name, pretrained))
    except Exception as err:
        refused = refused_torch_file(err, pretrained, 'CLIP checkpoint') if pretrained else None
        if refused is not None:
            raise refused from None
        raise RuntimeError(
            f"cannot load open_clip model '{model_name}' with weights '{pretrained}': {err}\n"
            f"Without internet access give the weights yourself: set clip_pretrained to a local checkpoint "
            f"path (e.g. the open_clip/OpenAI .pt file of {model_name}), or skip CLIP entirely by setting "
            f"text_embeddings_path to a precomputed [C, D] .npy file of text embeddings") from err
    return model, open_clip.get_tokenizer(name)


def load_or_compute_text_embeddings(class_names, *, embeddings_path='', model_name='ViT-L-14-336',
                                    pretrained='openai', template='', cache_dir='', device='cpu',
                                    model=None, tokenizer=None, last_as_other=False):
    """Text embeddings of ``class_names`` -> torch.FloatTensor [C, D] (rows L2-normalised).

    ``embeddings_path`` (an .npy [C, D]) wins when given. Otherwise the names (with ``template``, see
    ``apply_template`` for ``last_as_other``) are encoded with open_clip: ``model``/``tokenizer`` if given
    (already-built), else built from ``model_name`` (a name or a config .json) and ``pretrained`` (a tag or a local
    checkpoint). With ``cache_dir`` the result is read from / written to a hashed cache file.
    """
    class_names = list(class_names)
    if embeddings_path:
        emb = formats.load_text_embeddings(embeddings_path, num_classes=len(class_names))
        return torch.from_numpy(emb)
    path = ''
    # an already-built model has no stable identity on disk, so its result is never cached
    if cache_dir and model is None:
        path = cache_file(cache_dir, class_names, model_name, pretrained, template, last_as_other)
        if os.path.isfile(path):
            return torch.from_numpy(formats.load_text_embeddings(path, num_classes=len(class_names)))
    if model is None:
        model, tokenizer = build_clip_text_model(model_name, pretrained, device=device)
    elif tokenizer is None:
        raise ValueError('an already-built model needs its tokenizer (open_clip.get_tokenizer(name))')
    raw = _encode_raw(model, tokenizer, class_names, template, device, last_as_other)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        atomic_np_save(path, raw.astype(np.float32))
    return _normalise(raw, f"text embeddings of {model_name} ({pretrained or 'random weights'})")


@dataclass(frozen=True)
class TextSource:
    """Where a stage's text embeddings come from (the TEXT keys every stage shares): a file of them
    (``embeddings_path``), else open_clip's ``model_name`` with weights ``pretrained`` and the prompt ``template``,
    cached in ``cache_dir`` ('' = no cache)."""
    embeddings_path: str
    model_name: str
    pretrained: str
    template: str
    cache_dir: str

    def embeddings(self, names, device='cpu', embeddings_path=None, last_as_other=False):
        """Unit text embeddings [len(names), D]; ``embeddings_path`` overrides the source's file ('' = none)."""
        return load_or_compute_text_embeddings(
            list(names), embeddings_path=self.embeddings_path if embeddings_path is None else embeddings_path,
            model_name=self.model_name, pretrained=self.pretrained, template=self.template,
            cache_dir=self.cache_dir, device=device, last_as_other=last_as_other)

    def class_embeddings(self, info, device='cpu'):
        """The label set's rows [C, D] (ScanNet's and S3DIS's last class, 'other', is encoded as such)."""
        return self.embeddings(info.text_labels, device, last_as_other=info.name in ('scannet', 's3dis'))
