"""CLIP text embeddings: file path, the real open_clip code path on a tiny random model, cache, errors."""
import json
import os

import numpy as np
import open_clip
import pytest
import torch

from dataset import formats
from dataset.label_constants import dataset_info
from pipeline import text_embeddings as te
from pipeline.stage import class_text_embeddings
from util.config import CfgNode

TINY_CFG = {'embed_dim': 64,
            'vision_cfg': {'image_size': 32, 'layers': 1, 'width': 64, 'patch_size': 16},
            'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 1}}
NAMES = ['wall', 'chair', 'other']


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A randomly initialised tiny CLIP saved as (model-config JSON, state_dict checkpoint)."""
    d = tmp_path_factory.mktemp('tinyclip')
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG).eval()
    cfg_path = d / 'tiny-clip-test.json'
    cfg_path.write_text(json.dumps(TINY_CFG))
    ckpt = d / 'tiny.pt'
    torch.save(model.state_dict(), ckpt)
    return model, str(cfg_path), str(ckpt)


def manual(model, prompts):
    tok = open_clip.get_tokenizer('ViT-B-32')  # the bundled BPE tokenizer, context 77
    with torch.no_grad():
        e = model.encode_text(tok(prompts)).float()
    return e / e.norm(dim=1, keepdim=True)


def test_encode_model_object_matches_manual(tiny):
    model, _, _ = tiny
    tok = open_clip.get_tokenizer('ViT-B-32')
    emb = te.encode_class_names(model, tok, NAMES)
    assert emb.shape == (3, 64) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, manual(model, NAMES))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    templ = te.encode_class_names(model, tok, NAMES, template='a {} in a scene')
    torch.testing.assert_close(templ, manual(model, [f'a {n} in a scene' for n in NAMES]))
    assert not torch.allclose(templ, emb)
    # upstream's prompt engineering: the last class ('other' in ScanNet, 'clutter' in S3DIS) stays the bare 'other'
    assert te.apply_template(['wall', 'clutter'], 'a {} in a scene',
                             last_as_other=True) == ['a wall in a scene', 'other']
    upstream = te.encode_class_names(model, tok, NAMES, template='a {} in a scene', last_as_other=True)
    torch.testing.assert_close(upstream, manual(model, ['a wall in a scene', 'a chair in a scene', 'other']))


def test_checkpoint_path_and_cache(tiny, tmp_path, monkeypatch):
    model, cfg_path, ckpt = tiny
    cache = tmp_path / 'cache'
    emb = te.load_or_compute_text_embeddings(NAMES, model_name=cfg_path, pretrained=ckpt,
                                             template='a {} in a scene', cache_dir=str(cache))
    torch.testing.assert_close(emb, manual(model, [f'a {n} in a scene' for n in NAMES]), atol=1e-5, rtol=1e-5)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith('.npy')
    calls = []
    real = te._encode_raw
    monkeypatch.setattr(te, '_encode_raw', lambda *a, **k: calls.append(1) or real(*a, **k))
    again = te.load_or_compute_text_embeddings(NAMES, model_name=cfg_path, pretrained=ckpt,
                                               template='a {} in a scene', cache_dir=str(cache))
    assert calls == [] and torch.equal(again, emb)
    # another template (or label list) is another cache entry, computed by the model
    other = te.load_or_compute_text_embeddings(NAMES, model_name=cfg_path, pretrained=ckpt, cache_dir=str(cache))
    assert calls == [1] and len(os.listdir(cache)) == 2
    torch.testing.assert_close(other, manual(model, NAMES), atol=1e-5, rtol=1e-5)
    # a changed checkpoint (size/mtime) misses the cache
    k1 = te.cache_file(str(cache), NAMES, cfg_path, ckpt, '')
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, ckpt + '.2')
    os.replace(ckpt + '.2', ckpt)
    os.utime(ckpt, ns=(1, 1))
    assert te.cache_file(str(cache), NAMES, cfg_path, ckpt, '') != k1


def test_embeddings_file_and_config(tmp_path):
    info = dataset_info('scannet')
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(info.num_classes, 8)).astype(np.float32) * 3
    path = tmp_path / 'emb.npy'
    np.save(path, raw)
    cfg = CfgNode(text_embeddings_path=str(path), clip_model='ViT-L-14-336', clip_pretrained='openai',
                  prompt_template='', text_cache_dir='')
    emb = class_text_embeddings(cfg, info)
    np.testing.assert_allclose(emb.numpy(), raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    with pytest.raises(formats.FormatError):
        te.load_or_compute_text_embeddings(['a', 'b'], embeddings_path=str(path))
    assert info.text_labels[-1] == 'other'


def test_offline_errors(tmp_path, monkeypatch):
    def no_hub(*args, **kwargs):  # what open_clip raises offline, also on a machine that has the weights cached
        raise RuntimeError('Cannot reach the Hugging Face hub (HF_HUB_OFFLINE=1)')

    monkeypatch.setattr(open_clip, 'create_model', no_hub)
    monkeypatch.setattr(te, 'weights_on_disk', lambda *a: True)  # cached weights: open_clip itself fails
    with pytest.raises(RuntimeError, match='clip_pretrained.*text_embeddings_path'):
        te.load_or_compute_text_embeddings(['chair'], model_name='ViT-B-32', pretrained='openai')
    with pytest.raises(FileNotFoundError, match='clip_pretrained'):
        te.load_or_compute_text_embeddings(['chair'], model_name='ViT-B-32', pretrained=str(tmp_path / 'no.pt'))
    with pytest.raises(ValueError, match='unknown open_clip model'):
        te.load_or_compute_text_embeddings(['chair'], model_name='NoSuchNet', pretrained='')
    with pytest.raises(ValueError, match='{}'):
        te.apply_template(['chair'], 'no placeholder')


def test_a_clip_checkpoint_that_would_run_code_is_refused_in_our_words(tmp_path):
    """open_clip reads a local checkpoint itself; torch's refusal comes back without its weights_only advice."""
    from prep.feature_sources import _create_open_clip
    from util.io import UnreadableFileError

    class Payload:
        def __reduce__(self):
            return (print, ('this must never run',))
    torch.save({'state_dict': Payload()}, tmp_path / 'clip.pt')
    for build in (lambda: te.build_clip_text_model('ViT-B-32', str(tmp_path / 'clip.pt')),
                  lambda: _create_open_clip('ViT-B-32', str(tmp_path / 'clip.pt'))):
        with pytest.raises(UnreadableFileError) as err:
            build()
        assert "CLIP checkpoint '" in str(err.value) and "would call 'print'" in str(err.value)
        assert 'weights_only' not in str(err.value)


def test_missing_weights_offline_fail_at_once(monkeypatch):
    """A tag whose weights are not cached, with the hub unreachable, fails before open_clip tries to download
    (which retries for about a minute), naming both ways out."""
    import time
    calls = []
    monkeypatch.setattr(open_clip, 'create_model', lambda *a, **k: calls.append(a))
    monkeypatch.setattr(te, 'weights_on_disk', lambda *a: False)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    start = time.perf_counter()
    with pytest.raises(te.WeightsUnavailable, match='clip_pretrained <a local checkpoint.*text_embeddings_path'):
        te.build_clip_text_model('ViT-B-32', 'openai')
    assert time.perf_counter() - start < 5 and not calls
    monkeypatch.setattr(te, 'weights_on_disk', lambda *a: True)  # cached: open_clip is asked as before
    te.build_clip_text_model('ViT-B-32', 'openai')
    assert calls


def test_openai_tags_are_built_with_quick_gelu(tmp_path):
    """open_clip's OpenAI weights were trained with QuickGELU, which the plain model configs lack."""
    assert te.needs_quick_gelu('ViT-L-14-336', 'openai') and te.needs_quick_gelu('ViT-B-16', 'openai')
    assert not te.needs_quick_gelu('ViT-B-16', 'laion2b_s34b_b88k')
    assert not te.needs_quick_gelu('ViT-B-16', '')
    ckpt = tmp_path / 'weights.pt'
    ckpt.write_bytes(b'')
    assert not te.needs_quick_gelu('ViT-B-16', str(ckpt))  # a file carries no tag
