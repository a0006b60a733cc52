"""``sparse_conv spconv``: spconv's arithmetic behind our layers equals the reference, op by op and for whole
networks, outputs and both gradients; and the implementation explains itself where spconv cannot serve.

Needs spconv (CI installs its CPU build, ``pip install spconv==2.3.8``); the equality tests skip without it.
The reference is tied to dense conv3d in tests/test_sparse_conv.py, so equality here ties spconv to it too.
"""
import os
import subprocess
import sys

import pytest
import torch
from helpers import random_sparse
from test_mink_unet import small_scene

import models.sparse as ME
from models.disnet import DisNet
from models.sparse import dispatch, settings
from models.sparse import spconv as spconv_impl
from models.sparse.reference import reference_sparse_conv
from pipeline.losses import cosine_distance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_spconv = pytest.mark.skipif(not spconv_impl.is_available(), reason='spconv is not installed '
                                  '(pip install spconv==2.3.8 for the CPU build)')
LAYERS = [(1, 1), (3, 1), (3, 2), (2, 1), (5, 1), 'down', 'transposed'] + [('stride', s) for s in (2, 4, 8, 16)]


def layer_map(kind, x):
    """The kernel map of one layer kind on the stride-1 tensor x."""
    m = x.coordinate_manager
    if kind == 'transposed':
        m.strided_coordinates(1, 2)
        return m.kernel_map(2, 1, 2, 1, True)
    if kind == 'down':
        return m.kernel_map(1, m.strided_coordinates(1, 2), 2, 1, False)
    if kind[0] == 'stride':  # a submanifold 3x3x3 at a coarser tensor stride
        s = 1
        while s < kind[1]:
            s = m.strided_coordinates(s, 2)
        return m.kernel_map(s, s, 3, 1, False)
    ks, dilation = kind
    return m.kernel_map(1, 1, ks, dilation, False)


def run(fn, km, feats, kernel, seed=5):
    f, w = feats.clone().requires_grad_(), kernel.clone().requires_grad_()
    out = fn(f, w, km, km.num_out)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return (out, *torch.autograd.grad((out * weight).sum(), (f, w)))


@needs_spconv
@pytest.mark.parametrize('dtype, tol', [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize('kind', LAYERS)
def test_every_op_equals_the_reference(kind, dtype, tol):
    coords, _ = random_sparse(n_per_batch=120, seed=3)
    x = ME.SparseTensor(torch.zeros(len(coords), 1), coords)
    km = layer_map(kind, x)
    g = torch.Generator().manual_seed(4)
    kernel = torch.randn(km.kernel_volume, 20, 24, generator=g, dtype=dtype)
    kernel = kernel[0] if km.kernel_volume == 1 else kernel
    feats = torch.randn(km.num_in, 20, generator=g, dtype=dtype)
    for ours, theirs in zip(run(reference_sparse_conv, km, feats, kernel),
                            run(spconv_impl.spconv_sparse_conv, km, feats, kernel)):
        assert ours.shape == theirs.shape and theirs.dtype == dtype
        torch.testing.assert_close(theirs, ours, rtol=tol, atol=tol)


@needs_spconv
def test_exact_with_two_threads():
    """spconv 2.3's CPU scatter-add gives wrong rows on more than one thread; the implementation runs it on
    one, so its result does not depend on PyTorch's thread count: bit for bit the one-thread result (this fails
    without that guard, by whole rows)."""
    threads = torch.get_num_threads()
    coords, _ = random_sparse(n_per_batch=300, seed=7)
    x = ME.SparseTensor(torch.zeros(len(coords), 1), coords)
    km = layer_map((3, 1), x)
    g = torch.Generator().manual_seed(1)
    kernel, feats = torch.randn(27, 32, 32, generator=g), torch.randn(km.num_in, 32, generator=g)
    try:
        torch.set_num_threads(1)
        one = run(spconv_impl.spconv_sparse_conv, km, feats, kernel)
        torch.set_num_threads(2)
        for _ in range(5):
            for a, b in zip(one, run(spconv_impl.spconv_sparse_conv, km, feats, kernel)):
                assert torch.equal(a, b)
        assert torch.get_num_threads() == 2  # restored after each op
    finally:
        torch.set_num_threads(threads)


def network_step(arch, conv, dtype, coords, feats, steps=1):
    """DisNet outputs and every parameter gradient, then the parameters after ``steps`` Adam steps of the
    distillation loss, with ``sparse_conv conv``."""
    torch.manual_seed(0)
    model = DisNet(arch, 32).to(dtype)
    target = torch.nn.functional.normalize(torch.randn(len(coords), 32, generator=torch.Generator().manual_seed(2),
                                                       dtype=dtype), dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with settings.using(conv=conv):
        for step in range(steps):
            out = model(ME.SparseTensor(feats.to(dtype), coords))
            loss = cosine_distance(out, target)
            opt.zero_grad()
            loss.backward()
            if step == 0:
                first = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()
    return first, {n: p.detach().clone() for n, p in model.named_parameters()}


@needs_spconv
@pytest.mark.parametrize('arch', ['MinkUNet14A', 'MinkUNet18A'])
def test_whole_network_and_a_training_step_equal_the_reference(arch):
    coords, feats = small_scene(n=500, batch=2)
    (out_r, grads_r), params_r = network_step(arch, 'reference', torch.float64, coords, feats)
    (out_s, grads_s), params_s = network_step(arch, 'spconv', torch.float64, coords, feats)
    torch.testing.assert_close(out_s, out_r, rtol=1e-12, atol=1e-12)
    for name in grads_r:
        torch.testing.assert_close(grads_s[name], grads_r[name], rtol=1e-9, atol=1e-12, msg=name)
    for name in params_r:  # one Adam step later
        torch.testing.assert_close(params_s[name], params_r[name], rtol=1e-10, atol=1e-12, msg=name)


@needs_spconv
def test_float32_training_steps_agree_within_float_noise():
    """In float32 spconv's and our sums run in different orders; after three steps both stay as close to each
    other as our own float32 run is to float64."""
    coords, feats = small_scene(n=500, batch=1)
    _, exact = network_step('MinkUNet14A', 'reference', torch.float64, coords, feats, steps=3)
    _, ours = network_step('MinkUNet14A', 'reference', torch.float32, coords, feats, steps=3)
    _, theirs = network_step('MinkUNet14A', 'spconv', torch.float32, coords, feats, steps=3)
    noise = max(float((ours[n].double() - exact[n]).abs().max()) for n in exact)
    gap = max(float((theirs[n] - ours[n]).abs().max()) for n in exact)
    assert gap <= 4 * noise + 1e-7, (gap, noise)


@needs_spconv
def test_an_upstream_checkpoint_gives_the_same_outputs():
    """A checkpoint in upstream's layout (DataParallel 'module.' prefix, MinkowskiEngine kernels) loads
    unchanged and gives the same outputs under both implementations: the layout conversion is internal."""
    from test_mink_unet import upstream_minkunet18a_keys

    from util.checkpoint import _strip_module_prefix
    g = torch.Generator().manual_seed(0)
    ckpt = {'module.' + k: (torch.randn(s, generator=g, dtype=torch.float64) * 0.1 if s else torch.tensor(5))
            for k, s in upstream_minkunet18a_keys().items()}
    for k in ckpt:
        if k.endswith('running_var'):
            ckpt[k] = ckpt[k].abs() + 0.5
    model = DisNet('MinkUNet18A', 768).double().eval()
    model.load_state_dict(_strip_module_prefix(ckpt), strict=True)
    coords, feats = small_scene(n=400, batch=1)
    outs = []
    for conv in ('reference', 'spconv'):
        with settings.using(conv=conv), torch.no_grad():
            outs.append(model(ME.SparseTensor(feats.double(), coords)))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)


@needs_spconv
def test_rulebook_is_built_once_per_map_and_bf16_is_refused():
    coords, feats = small_scene(n=300, batch=1)
    x = ME.SparseTensor(feats, coords)
    conv = ME.Convolution(3, 8, kernel_size=3)
    with settings.using(conv='spconv'):
        conv(x)
        km = x.coordinate_manager.kernel_map(1, 1, 3, 1, False)
        book = km.cache['spconv_rulebook']
        conv(x)
        assert km.cache['spconv_rulebook'] is book and book.subm
        assert book.pairs.shape == (2, 27, max(km.pairs(k)[0].numel() for k in range(27)))
        with torch.autocast('cpu', dtype=torch.bfloat16), pytest.raises(TypeError, match='no bfloat16 path'):
            conv(x)


def test_without_spconv_choosing_it_names_the_wheel():
    """In a process where ``import spconv`` fails: selecting spconv is an error that names the wheels, raised by
    ``dispatch.require`` (what the stages call when they read their config), before any convolution."""
    code = '\n'.join([
        "import sys; sys.modules['spconv'] = None",
        'from models.sparse import dispatch, settings',
        "settings.configure(conv='spconv')",
        'try:',
        '    dispatch.require()',
        'except ImportError as e:',
        "    print('refused:', e)",
    ])
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith('refused: sparse_conv spconv needs the spconv package')
    assert 'spconv-cu126' in run.stdout and 'pip install spconv ' in run.stdout and '12.8' in run.stdout


def test_the_config_key_accepts_spconv_and_the_stages_check_it():
    import evaluate
    import train_esg
    assert 'spconv' in settings.CONVS
    for schema in (train_esg.SCHEMA, evaluate.SCHEMA):
        assert 'spconv' in schema.by_name['sparse_conv'].help
    assert dispatch.implementation('spconv').check is not None


@needs_spconv
@pytest.mark.cuda
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize('kind', LAYERS)
def test_every_op_equals_the_reference_on_cuda(kind, dtype, tol):
    """On CUDA spconv runs its own GPU kernels on the same rulebooks (fp16: under autocast, as training runs)."""
    device = torch.device('cuda')
    coords, _ = random_sparse(n_per_batch=120, seed=3)
    x = ME.SparseTensor(torch.zeros(len(coords), 1, device=device), coords.to(device))
    km = layer_map(kind, x)
    g = torch.Generator().manual_seed(4)
    kernel = torch.randn(km.kernel_volume, 20, 24, generator=g).to(device)
    kernel = kernel[0] if km.kernel_volume == 1 else kernel
    feats = torch.randn(km.num_in, 20, generator=g).to(device)
    results = []
    for fn in (reference_sparse_conv, spconv_impl.spconv_sparse_conv):
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            results.append([r.float() for r in run(fn, km, feats, kernel)])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(theirs, ours, rtol=tol, atol=tol * max(1.0, float(ours.abs().max())))
