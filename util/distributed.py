"""Multi-GPU (or multi-process CPU) training with PyTorch's own DistributedDataParallel.

    torchrun --nproc_per_node=4 train_esg.py --config config/scannet/openseg_train.yaml
    python train_esg.py --config ...            # one process, no process group: works as before

``init_distributed`` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and starts NCCL on CUDA devices, gloo on CPU. Upstream (3DSS-VLG / OpenScene) used
``mp.spawn`` with a hard-coded tcp address; torchrun replaces that.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def init_distributed(device_name='auto', backend='', log=None):
    """Join the process group torchrun describes -> (DistInfo, torch.device).

    Without torchrun variables this is a single process (rank 0 of 1) on ``device_name``. Under
    torchrun every process takes the CUDA device ``LOCAL_RANK`` when CUDA is used, else the CPU.
    ``backend`` '' picks NCCL for CUDA and gloo for CPU.
    """
    from util.misc import get_device
    if not launched_by_torchrun() or int(os.environ['WORLD_SIZE']) == 1:
        return DistInfo(), get_device(device_name, log)
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    device = get_device(device_name, log)
    if device.type == 'cuda':
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(f'process with LOCAL_RANK {local_rank} needs a CUDA device, but only '
                               f'{torch.cuda.device_count()} are visible; lower --nproc_per_node')
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    backend = backend or ('nccl' if device.type == 'cuda' else 'gloo')
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank), device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier():
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor):
    """Sum ``tensor`` over all processes in place (a no-op in one process); returns it."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag, device='cpu'):
    """True if ``flag`` is true on any process (one process: the flag itself); every rank gets the answer."""
    if not is_initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_mean(value, device='cpu'):
    """Mean of a python float over processes (e.g. the epoch loss); the value itself in one process."""
    if not is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / get_world_size()


def all_reduce_array(array, device='cpu'):
    """Sum an integer numpy array (a confusion matrix) over processes; returns a new numpy array."""
    if not is_initialized():
        return np.asarray(array)
    t = torch.as_tensor(np.asarray(array, dtype=np.int64), device=device).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def broadcast_object(obj, src=0):
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def broadcast_buffers(module, src=0):
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts rank 0's buffers at the start of each forward, but every rank then updates its own
    running statistics, so after the last step they differ; validation (which scores a different shard
    of scenes on every rank) must use the statistics rank 0 writes into the checkpoint.
    """
    if is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf.data, src=src)


def wrap_ddp(model, device, sync_bn=False):
    """DistributedDataParallel around ``model`` (already on ``device``); optional SyncBatchNorm.

    Our sparse BatchNorm keeps a ``torch.nn.BatchNorm1d`` as ``.bn`` (MinkowskiEngine's layout), and
    ``convert_sync_batchnorm`` walks submodules, so it replaces those inner modules in place and the
    state-dict keys do not change.
    """
    if sync_bn:
        if device.type != 'cuda':
            raise ValueError(f'sync_bn True needs CUDA (PyTorch\'s SyncBatchNorm runs on GPUs only), the device is '
                             f'{device}; set sync_bn False')
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == 'cuda':
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return torch.nn.parallel.DistributedDataParallel(model)


def cleanup():
    if is_initialized():
        dist.destroy_process_group()
