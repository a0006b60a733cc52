"""Multi-process ESG training (util/distributed.py): 2 gloo processes on CPU, as torchrun would start them.

DDP averages the gradients over the ranks, and both ranks start from rank 0's weights, so after any
number of steps the parameters on both ranks must be identical (BatchNorm running statistics too: the
validation after the last epoch copies rank 0's to every rank); the two ranks must also have seen
different scenes (DistributedSampler), and the checkpoint is written by rank 0 only.
"""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import make_tiny_dataset, train_argv

from util import distributed as du
from util.checkpoint import unwrap_model

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, root, argv):
    # the variables torchrun sets for every process
    os.environ.update({'RANK': str(rank), 'WORLD_SIZE': str(world_size), 'LOCAL_RANK': str(rank),
                       'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)})
    torch.set_num_threads(1)
    import train_esg
    from util.config import load_config
    from util.logger import get_logger
    cfg = load_config(argv, train_esg.SCHEMA)
    info, device = du.init_distributed(cfg.device)
    assert (info.rank, info.world_size) == (rank, world_size) and du.get_world_size() == world_size
    seen = []
    original = train_esg.forward_voxels

    def record(model, coords, feats, device, amp=False):  # which scenes (by point count) this rank trained on
        if model.training:
            seen.append(int(coords.shape[0]))
        return original(model, coords, feats, device, amp)

    train_esg.forward_voxels = record
    try:
        model, summary = train_esg.train(cfg, info, device, get_logger('esg-ddp-test', rank=rank))
        params = {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}
        torch.save({'params': params, 'seen': seen, 'summary': summary}, os.path.join(root, f'rank{rank}.pt'))
    finally:
        du.cleanup()


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    root = str(tmp_path)
    data = make_tiny_dataset(root, n_train=4, n_val=2)
    argv = train_argv(root, data, epochs=2, batch_size=2, eval_freq=2, base_lr=3e-4)
    mp.spawn(_worker, args=(2, _free_port(), root, argv), nprocs=2, join=True)
    r0 = torch.load(os.path.join(root, 'rank0.pt'), weights_only=False)
    r1 = torch.load(os.path.join(root, 'rank1.pt'), weights_only=False)
    assert r0['params'].keys() == r1['params'].keys() and r0['params']
    for key in r0['params']:
        assert torch.equal(r0['params'][key], r1['params'][key]), key
    # each rank took 1 scene per step (batch 2 over 2 processes), 2 steps per epoch, and the two ranks
    # trained on different voxelised scenes
    assert len(r0['seen']) == len(r1['seen']) == 4
    assert r0['seen'] != r1['seen']
    # metrics were all-reduced: both ranks report the same val mIoU and the same mean loss
    assert r0['summary']['val_miou'] == r1['summary']['val_miou']
    assert np.allclose(r0['summary']['train_loss'], r1['summary']['train_loss'])
    # the weights moved away from rank 0's initialisation (identical weights would be trivial otherwise)
    import train_esg
    from pipeline.networks import build_disnet
    from pipeline.stage import network_values
    from util.config import load_config
    from util.misc import set_seed
    cfg = load_config(argv, train_esg.SCHEMA)
    set_seed(cfg.manual_seed)  # what train() does before building the network
    init = dict(build_disnet(**network_values(cfg)).named_parameters())
    assert any(not torch.equal(init[k].detach(), r0['params'][k]) for k in init)
    assert os.path.isfile(os.path.join(root, 'esg', 'last.pth'))


def test_single_process_without_torchrun(monkeypatch):
    for var in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.delenv(var, raising=False)
    info, device = du.init_distributed('cpu')
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)
    assert device.type == 'cpu' and du.is_main_process() and du.get_world_size() == 1
    arr = np.arange(4)
    assert du.all_reduce_array(arr).tolist() == [0, 1, 2, 3] and du.all_reduce_mean(2.5) == 2.5


def test_sync_bn_keeps_the_state_dict_and_refuses_cpu():
    from models.disnet import DisNet
    net = DisNet('MinkUNet14A', 512)
    keys = list(net.state_dict())
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert list(synced.state_dict()) == keys  # the sparse BN's inner .bn is replaced in place
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    with pytest.raises(ValueError, match='sync_bn True needs CUDA'):
        du.wrap_ddp(net, torch.device('cpu'), sync_bn=True)
