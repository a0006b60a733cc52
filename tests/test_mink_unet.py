"""MinkUNet / DisNet: upstream checkpoint layout, forward/backward, autocast, engines."""
import math

import pytest
import torch

import models.sparse as ME
from models.disnet import DisNet
from models.mink_unet import mink_unet
from pipeline.networks import build_disnet


def _bn(prefix, c):
    return {f'{prefix}.bn.weight': (c,), f'{prefix}.bn.bias': (c,), f'{prefix}.bn.running_mean': (c,),
            f'{prefix}.bn.running_var': (c,), f'{prefix}.bn.num_batches_tracked': ()}


def upstream_minkunet18a_keys(prefix='net3d.', out_dim=768):
    """Key -> shape of upstream DisNet(MinkUNet18A), written from the architecture description
    (docs/sparse_engine.md): ME kernels are [K, C_in, C_out], or [C_in, C_out] for 1x1; BasicBlock x2 per stage;
    a 1x1 conv + BN projection (``downsample.0/.1``) on a block whose input width differs."""
    planes = (32, 64, 128, 256, 128, 128, 96, 96)
    t = {}

    def block_stage(name, inp, p):
        for j in range(2):
            c_in = inp if j == 0 else p
            t[f'{name}.{j}.conv1.kernel'] = (27, c_in, p)
            t.update(_bn(f'{name}.{j}.norm1', p))
            t[f'{name}.{j}.conv2.kernel'] = (27, p, p)
            t.update(_bn(f'{name}.{j}.norm2', p))
            if j == 0 and c_in != p:
                t[f'{name}.0.downsample.0.kernel'] = (c_in, p)
                t.update(_bn(f'{name}.0.downsample.1', p))
        return p

    t['conv0p1s1.kernel'] = (125, 3, 32)
    t.update(_bn('bn0', 32))
    width = 32
    for i, name in enumerate(['conv1p1s2', 'conv2p2s2', 'conv3p4s2', 'conv4p8s2']):
        t[f'{name}.kernel'] = (8, width, width)
        t.update(_bn(f'bn{i + 1}', width))
        width = block_stage(f'block{i + 1}', width, planes[i])
    skips = (planes[2], planes[1], planes[0], 32)  # channels of out_b3p8, out_b2p4, out_b1p2, out_p1
    for i, name in enumerate(['convtr4p16s2', 'convtr5p8s2', 'convtr6p4s2', 'convtr7p2s2']):
        p = planes[4 + i]
        t[f'{name}.kernel'] = (8, width, p)
        t.update(_bn(f'bntr{4 + i}', p))
        width = block_stage(f'block{5 + i}', p + skips[i], p)
    t['final.kernel'] = (96, out_dim)
    return {prefix + k: v for k, v in t.items()}


def small_scene(n=1500, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Two room-like scenes: a floor plane and a wall, plus random clutter, in a 40^3 voxel box.
    pts = []
    for b in range(batch):
        u = torch.randint(0, 40, (n, 2), generator=g)
        floor = torch.cat([u, torch.zeros(n, 1, dtype=torch.long)], 1)
        wall = torch.cat([torch.zeros(n // 2, 1, dtype=torch.long), u[: n // 2]], 1)
        clutter = torch.randint(0, 40, (n // 3, 3), generator=g)
        xyz = torch.cat([floor, wall, clutter])
        pts.append(torch.cat([torch.full((len(xyz), 1), b), xyz], 1))
    coords = torch.unique(torch.cat(pts), dim=0).int()
    feats = torch.rand(len(coords), 3, generator=g)
    return coords, feats


def test_state_dict_matches_upstream_layout_and_loads_strict():
    torch.manual_seed(0)
    model = DisNet('MinkUNet18A', 768)
    expected = upstream_minkunet18a_keys()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    # An upstream-style checkpoint (DataParallel 'module.' prefix) loads strictly.
    ckpt = {'module.' + k: (torch.randn(s) if s else torch.tensor(5)) for k, s in expected.items()}
    from util.checkpoint import _strip_module_prefix  # what load_checkpoint applies
    model.load_state_dict(_strip_module_prefix(ckpt), strict=True)
    assert torch.equal(model.net3d.final.kernel, ckpt['module.net3d.final.kernel'])
    assert DisNet('MinkUNet14A', 512).net3d.final.kernel.shape == (96, 512)


def test_upstream_weight_initialisation():
    torch.manual_seed(0)
    net = mink_unet(3, 768, arch='MinkUNet18A')
    # Non-transposed convs: ME kaiming_normal_(fan_out, relu): std = sqrt(2 / (C_out * K)).
    k = net.block1[0].conv1.kernel
    assert abs(k.std().item() - math.sqrt(2 / (32 * 27))) < 0.1 * math.sqrt(2 / (32 * 27))
    # Transposed convs keep ME's default U(-1/sqrt(C_out*K), +): not touched by ResNetBase's init.
    t = net.convtr4p16s2.kernel
    bound = 1 / math.sqrt(128 * 8)
    assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound
    assert torch.all(net.bn0.bn.weight == 1) and torch.all(net.bn0.bn.bias == 0)


def test_minkunet18a_forward_backward_cpu(kernel_map_builds):
    torch.manual_seed(0)
    coords, feats = small_scene()
    net = mink_unet(3, 16, arch='MinkUNet18A')
    x = ME.SparseTensor(feats, coords)
    out = net(x)
    assert out.shape == (len(coords), 16) and torch.isfinite(out).all()
    # Eight stride levels -> maps at strides 1, 2, 4, 8, 16; each built once.
    kernel_map_builds.clear()
    target = torch.randn_like(out)
    (1 - torch.cosine_similarity(out, target)).mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.conv0p1s1.kernel.grad.abs().sum() > 0
    assert not kernel_map_builds  # the backward pass reuses the forward's kernel maps
    # Batch items do not interact: scene 0's output is the same with scene 1 removed (eval-mode BN).
    net.eval()
    with torch.no_grad():
        full = net(ME.SparseTensor(feats, coords))
        only0 = coords[:, 0] == 0
        alone = net(ME.SparseTensor(feats[only0], coords[only0]))
    torch.testing.assert_close(full[only0], alone, rtol=1e-4, atol=1e-4)


def test_autocast_bf16_cpu_runs():
    torch.manual_seed(0)
    coords, feats = small_scene(n=600, batch=1)
    net = mink_unet(3, 8, arch='MinkUNet14A')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = net(ME.SparseTensor(feats, coords))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().square().mean().backward()
    assert torch.isfinite(net.conv0p1s1.kernel.grad).all()


def test_unknown_arch_and_minkowski_engine_errors():
    with pytest.raises(ValueError, match='MinkUNet18A'):
        mink_unet(3, 8, arch='MinkUNet99')
    try:
        import MinkowskiEngine  # noqa: F401
        pytest.skip('MinkowskiEngine is installed here')
    except ImportError:
        pass
    with pytest.raises(ImportError, match='sparse_engine: builtin'):
        build_disnet('MinkUNet18A', 'openseg', 'minkowski')
    with pytest.raises(ValueError, match='unknown sparse engine'):
        ME.get_engine('spconv')
