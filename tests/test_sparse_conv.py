"""The sparse engine against dense oracles (torch conv3d / conv_transpose3d on a scattered grid).

Layout conversion, written out independently of the engine: our kernel [K, C_in, C_out] has kernel
index k = ix + ks*iy + ks^2*iz (x fastest); conv3d's weight is [C_out, C_in, kx, ky, kz] on a dense
grid laid out [B, C, X, Y, Z], and conv3d is a cross-correlation, out[x] = sum_i in[x + i - pad] W[i],
which is exactly the sparse rule ``output q reads input q + offset_i``.
"""
import pytest
import torch
import torch.nn.functional as Fn
from helpers import B, G, random_sparse

import models.sparse as ME
from models.sparse import kmap
from models.sparse.kmap import kernel_offsets


def to_dense(coords, feats, side, stride=1):
    c = coords.long()
    dense = torch.zeros(B, side, side, side, feats.shape[1], dtype=feats.dtype)
    dense = dense.index_put((c[:, 0], c[:, 1] // stride, c[:, 2] // stride, c[:, 3] // stride), feats)
    return dense.permute(0, 4, 1, 2, 3)


def read_dense(dense, coords, stride=1):
    c = coords.long()
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1] // stride, c[:, 2] // stride, c[:, 3] // stride]


def conv3d_weight(kernel, ks):
    """[K, C_in, C_out] (x fastest) -> conv3d [C_out, C_in, kx, ky, kz]."""
    k3 = kernel if kernel.dim() == 3 else kernel[None]
    return k3.reshape(ks, ks, ks, k3.shape[1], k3.shape[2]).permute(4, 3, 2, 1, 0)


def conv_transpose3d_weight(kernel, ks):
    """[K, C_in, C_out] (x fastest) -> conv_transpose3d [C_in, C_out, kx, ky, kz]."""
    return kernel.reshape(ks, ks, ks, kernel.shape[1], kernel.shape[2]).permute(3, 4, 2, 1, 0)


def grads(out, inputs, seed=1):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * w).sum(), inputs)


@pytest.mark.parametrize('ks,dilation', [(1, 1), (3, 1), (5, 1), (3, 2), (2, 1)])
def test_stride1_conv_matches_dense(ks, dilation):
    coords, feats = random_sparse(seed=ks * 10 + dilation)
    feats.requires_grad_(True)
    conv = ME.MinkowskiConvolution(4, 5, kernel_size=ks, dilation=dilation, dimension=3).double()
    out = conv(ME.SparseTensor(feats, coords))
    assert out.tensor_stride == [1, 1, 1]
    assert torch.equal(out.C, coords)  # odd and even stride-1 kernels keep the input coordinates

    dense_in = to_dense(coords, feats, G)
    weight = conv3d_weight(conv.kernel, ks)
    if ks % 2 == 1:
        dense_out = Fn.conv3d(dense_in, weight, padding=(ks // 2) * dilation, dilation=dilation)
    else:  # even kernels read x + i*dilation, i = 0..ks-1: pad the high side only
        pad = (ks - 1) * dilation
        dense_out = Fn.conv3d(Fn.pad(dense_in, (0, pad) * 3), weight, dilation=dilation)
    expected = read_dense(dense_out, coords)
    torch.testing.assert_close(out.F, expected, rtol=1e-10, atol=1e-10)
    ours = grads(out.F, (feats, conv.kernel))
    oracle = grads(expected, (feats, conv.kernel))
    for a, b in zip(ours, oracle):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_strided_conv_coordinates_and_values():
    coords, feats = random_sparse(seed=3)
    feats.requires_grad_(True)
    conv = ME.MinkowskiConvolution(4, 6, kernel_size=2, stride=2, dimension=3).double()
    out = conv(ME.SparseTensor(feats, coords))
    assert out.tensor_stride == [2, 2, 2]
    # Output coordinates: the input floored to multiples of 2, unique per batch item, exactly.
    floored = torch.cat([coords[:, :1], coords[:, 1:] // 2 * 2], 1)
    assert sorted(map(tuple, out.C.tolist())) == sorted(set(map(tuple, floored.tolist())))
    assert out.C.dtype == torch.int32

    dense_out = Fn.conv3d(to_dense(coords, feats, G), conv3d_weight(conv.kernel, 2), stride=2)
    expected = read_dense(dense_out, out.C, stride=2)
    torch.testing.assert_close(out.F, expected, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads(out.F, (feats, conv.kernel)), grads(expected, (feats, conv.kernel))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_strided_conv_at_tensor_stride_2_floors_to_multiples_of_4():
    coords, feats = random_sparse(seed=4)
    x = ME.SparseTensor(feats, coords)
    down1 = ME.MinkowskiConvolution(4, 4, kernel_size=2, stride=2).double()(x)
    down2 = ME.MinkowskiConvolution(4, 4, kernel_size=2, stride=2).double()(down1)
    assert down2.tensor_stride == [4, 4, 4]
    floored = torch.cat([coords[:, :1], coords[:, 1:] // 4 * 4], 1)
    assert sorted(map(tuple, down2.C.tolist())) == sorted(set(map(tuple, floored.tolist())))


def test_transposed_conv_matches_dense():
    coords, feats = random_sparse(seed=5)
    x = ME.SparseTensor(feats, coords)
    down = ME.MinkowskiConvolution(4, 4, kernel_size=2, stride=2).double()(x)
    coarse_feats = torch.randn(len(down), 3, dtype=torch.float64, requires_grad=True)
    coarse = ME.SparseTensor(coarse_feats, coordinate_map_key=down.coordinate_map_key,
                             coordinate_manager=down.coordinate_manager)
    up = ME.MinkowskiConvolutionTranspose(3, 5, kernel_size=2, stride=2, dimension=3).double()
    out = up(coarse)
    # Back onto the cached stride-1 coordinates, in the input's order.
    assert out.tensor_stride == [1, 1, 1] and torch.equal(out.C, coords)
    assert out.coordinate_manager is x.coordinate_manager

    dense_out = Fn.conv_transpose3d(to_dense(down.C, coarse_feats, G // 2, stride=2),
                                    conv_transpose3d_weight(up.kernel, 2), stride=2)
    expected = read_dense(dense_out, coords)
    torch.testing.assert_close(out.F, expected, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads(out.F, (coarse_feats, up.kernel)), grads(expected, (coarse_feats, up.kernel))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_kernel_offsets_order_and_parameter_layout():
    off = kernel_offsets(3, 1, 2)
    assert off.shape == (27, 3)
    assert off[0].tolist() == [-2, -2, -2] and off[1].tolist() == [0, -2, -2]  # x fastest
    assert off[3].tolist() == [-2, 0, -2] and off[9].tolist() == [-2, -2, 0]
    assert off[13].tolist() == [0, 0, 0]
    assert kernel_offsets(2, 1, 4)[:3].tolist() == [[0, 0, 0], [4, 0, 0], [0, 4, 0]]
    assert ME.Convolution(3, 8, kernel_size=1).kernel.shape == (3, 8)
    assert ME.Convolution(3, 8, kernel_size=5).kernel.shape == (125, 3, 8)
    assert ME.Convolution(3, 8, kernel_size=3, bias=True).bias.shape == (1, 8)
    assert ME.Convolution(3, 8, kernel_size=3).bias is None


def test_kernel_map_cached_once_per_configuration(kernel_map_builds):
    coords, feats = random_sparse(seed=6, dtype=torch.float32)
    x = ME.SparseTensor(feats, coords)
    m = x.coordinate_manager
    km1 = m.kernel_map(1, 1, 3, 1, False)
    km2 = m.kernel_map(1, 1, 3, 1, False)
    assert km1 is km2 and len(kernel_map_builds) == 1
    assert m.kernel_map(1, 1, 3, 2, False) is not km1 and len(kernel_map_builds) == 2
    # Two convs of the same shape on the same stride share the map (no new build).
    a = ME.Convolution(4, 4, kernel_size=3)(x)
    ME.Convolution(4, 4, kernel_size=3)(a)
    assert len(kernel_map_builds) == 2
    # CSR layout: offset_ptr brackets each offset's pairs; the centre offset is the identity.
    assert km1.offset_ptr[0] == 0 and km1.offset_ptr[-1] == km1.in_idx.numel() == km1.out_idx.numel()
    assert km1.identity_offset == 13
    i, o = km1.pairs(13)
    assert torch.equal(i, torch.arange(len(coords))) and torch.equal(o, i)


def test_batchnorm_relu_cat_and_errors():
    coords, feats = random_sparse(seed=7, dtype=torch.float32)
    x = ME.SparseTensor(feats, coords)
    bn = ME.MinkowskiBatchNorm(4)
    ref = torch.nn.BatchNorm1d(4)
    torch.testing.assert_close(bn(x).F, ref(feats))
    assert set(bn.state_dict()) == {'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var',
                                    'bn.num_batches_tracked'}
    assert torch.equal(ME.MinkowskiReLU()(x).F, feats.clamp(min=0))
    y = ME.SparseTensor(feats * 2, coordinate_map_key=x.coordinate_map_key,
                        coordinate_manager=x.coordinate_manager)
    c = ME.cat(x, y)
    assert torch.equal(c.F, torch.cat([feats, feats * 2], 1)) and c.coordinate_manager is x.coordinate_manager
    down = ME.Convolution(4, 4, kernel_size=2, stride=2)(x)
    with pytest.raises(ValueError, match='stride'):
        ME.cat(x, down)
    other = ME.SparseTensor(feats, coords)  # equal coordinates, different manager
    with pytest.raises(ValueError, match='coordinate manager'):
        ME.cat(x, other)
    dup = torch.cat([coords, coords[:1]])
    with pytest.raises(ValueError, match='duplicate'):
        ME.SparseTensor(torch.zeros(len(dup), 1), dup)
    # features_at_points: out.F[inverse_map]
    inv = torch.tensor([3, 0, 3, 5])
    assert torch.equal(ME.features_at_points(x, inv), feats[inv])
    with pytest.raises(ValueError, match='inverse_map'):
        ME.features_at_points(x, torch.tensor([len(coords)]))


def test_autocast_bf16_cpu_close_to_fp32():
    coords, feats = random_sparse(seed=8, dtype=torch.float32)
    conv = ME.Convolution(4, 8, kernel_size=3)
    ref = conv(ME.SparseTensor(feats, coords)).F
    f = feats.clone().requires_grad_(True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(ME.SparseTensor(f, coords)).F
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    out.float().sum().backward()
    assert f.grad.dtype == torch.float32 and conv.kernel.grad.dtype == torch.float32
    assert torch.isfinite(f.grad).all()


@pytest.mark.cuda
def test_cuda_matches_cpu():
    coords, feats = random_sparse(seed=9, dtype=torch.float32)
    conv = ME.Convolution(4, 8, kernel_size=3)
    ref = conv(ME.SparseTensor(feats, coords)).F
    out = conv.to('cuda')(ME.SparseTensor(feats.to('cuda'), coords.to('cuda'))).F
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)


def test_chunked_kernel_map_build_equals_one_query(monkeypatch):
    """Maps that are searched (here a strided 3x3x3 conv) are built in chunks of offsets when large; the pairs
    must not depend on the chunking."""
    coords, feats = random_sparse(seed=11, dtype=torch.float32)

    def strided_map():
        m = ME.SparseTensor(feats, coords).coordinate_manager
        return m.kernel_map(1, m.strided_coordinates(1, 2), 3, 1, False)
    whole = strided_map()
    monkeypatch.setattr(kmap, '_MAP_CHUNK_ELEMENTS', 20)  # fewer than N_out: one offset per chunk
    chunked = strided_map()
    assert whole.bounds == chunked.bounds and whole.identity_offset == chunked.identity_offset == -1
    assert torch.equal(whole.in_idx, chunked.in_idx) and torch.equal(whole.out_idx, chunked.out_idx)
    assert whole.in_idx.dtype == torch.int32


def test_translation_by_the_coarsest_stride_with_negative_coordinates():
    """A U-Net-like chain (stride-2 downs at tensor strides 1 and 2, a 3x3 conv at stride 4, transposed ups)
    commutes with a translation by a multiple of the coarsest stride, negative coordinates included (the
    strided coordinates floor towards -inf, as MinkowskiEngine's)."""
    coords, feats = random_sparse(seed=12, dtype=torch.float64)
    torch.manual_seed(0)
    down1 = ME.Convolution(4, 5, kernel_size=2, stride=2).double()
    down2 = ME.Convolution(5, 6, kernel_size=2, stride=2).double()
    mid = ME.Convolution(6, 6, kernel_size=3).double()
    up2 = ME.ConvolutionTranspose(6, 5, kernel_size=2, stride=2).double()
    up1 = ME.ConvolutionTranspose(5, 3, kernel_size=2, stride=2).double()

    def run(c):
        x = ME.SparseTensor(feats, c)
        a = down1(x)
        b = mid(down2(a))
        assert b.tensor_stride == [4, 4, 4]
        return up1(up2(b)).F, b.C
    shift = torch.tensor([0, -8, -12, -4], dtype=torch.int32)
    out, coarse = run(coords)
    out_shifted, coarse_shifted = run(coords + shift)
    assert (coords + shift)[:, 1:].min() < 0
    torch.testing.assert_close(out_shifted, out)
    assert torch.equal(coarse_shifted, coarse + shift)
