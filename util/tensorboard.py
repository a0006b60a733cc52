"""TensorBoard scalars for the training stages: a writer on rank 0, nothing elsewhere.

    writer = create_writer(save_path, rank)          # None on ranks > 0 or when disabled
    log_scalars(writer, {'train/loss': 0.7, 'lr': 3e-3}, step=epoch)
    close_writer(writer)
"""
import os


def create_writer(save_path, rank=0, enabled=True, subdir='tensorboard'):
    """A tensorboardX SummaryWriter writing to ``<save_path>/<subdir>`` on rank 0; ``None`` otherwise."""
    if not enabled or rank != 0:
        return None
    from tensorboardX import SummaryWriter  # imported here: ranks > 0 and tests never need it
    log_dir = os.path.join(save_path, subdir)
    os.makedirs(log_dir, exist_ok=True)
    return SummaryWriter(log_dir)


def log_scalars(writer, scalars, step):
    """Add every ``name: value`` of ``scalars`` at ``step``; a no-op when ``writer`` is None."""
    if writer is None:
        return
    for name, value in scalars.items():
        writer.add_scalar(name, float(value), step)


def close_writer(writer):
    if writer is not None:
        writer.flush()
        writer.close()
