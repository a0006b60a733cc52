"""Dataset preprocessing: raw ScanNet / S3DIS -> the 3D ``.pth`` format of SPEC §3, and RGB-D frame readers
that feed ``dataset/fusion.py``. One module per dataset (``scannet.py``, ``s3dis.py``), each with a CLI."""
import numpy as np


def resize_nearest(image, hw):
    """Nearest-neighbour resize to (H, W) choosing source pixel floor(i * src / dst), as OpenCV's
    INTER_NEAREST that OpenScene's ScanNet export uses (so depth values are never interpolated)."""
    image = np.asarray(image)
    h, w = hw
    rows = np.minimum((np.arange(h) * image.shape[0]) // h, image.shape[0] - 1)
    cols = np.minimum((np.arange(w) * image.shape[1]) // w, image.shape[1] - 1)
    return image[rows][:, cols]
