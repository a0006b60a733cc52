"""Offline data preparation, run once before training: raw ScanNet / S3DIS to the 3D format (``scannet.py``,
``s3dis.py``), RGB-D frame readers and cameras (``frames.py``), 2D feature sources (``feature_sources.py``)
and the multi-view fusion of 2D features onto the points (``fusion.py``). Nothing that trains imports it."""
