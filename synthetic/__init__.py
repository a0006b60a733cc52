"""Synthetic rooms that stand in for ScanNet / S3DIS (docs/synthetic_data.md): the demo and the tests run on them.

No real scans, 2D models or CLIP weights can be downloaded here, so this module builds data that has the *shape* and
the *failure modes* of the real inputs, written in the exact on-disk formats of the real data (docs/formats.md):

- ``<out>/<name>_3d/{train,val}/<scene>.pth``: procedural rooms made of labelled boxes and vertical
  cylinders (floor, walls, ceiling for S3DIS, furniture), points sampled uniformly on the visible
  surfaces, a few % of points 255. Furniture is built from parts with the sizes, heights and placements
  of real rooms (chairs with seat, legs and back around tables and at desks, table and desk tops at
  72-76 cm, coffee tables in front of sofas, beds with headboard and pillows beside nightstands, base
  cabinets under a countertop with wall cabinets above, doors with frames, open or closed, windows with
  frame, sill and sparse glass, pleated curtains...), so that a 3D network can tell classes apart by
  shape; each object's colour is drawn from a class palette that shares materials with other classes
  (wood, white, fabric), so that colour alone cannot.
- ``<out>/<name>_text_embeddings.npy``: C x D unit rows whose pairwise cosine similarities mimic CLIP
  text embeddings (confusable classes 0.8-0.9, the rest 0.6-0.75; CLIP's are never orthogonal).
- ``<out>/<name>_multiview/<scene>_0.pt``: fused 2D features as multi-view fusion produces them. Simulated
  cameras (ScanNet-like pinhole frusta) see the points that no primitive occludes (analytic ray casting);
  a point's feature is ``normalize(a t_c + b_c t_conf(c) + mean_views(n_view) + d t_ctx + e eps)``:
  a *systematic linear* confusion toward a confusable class (what ESS can learn to undo, because the
  scene-level mask resolves it in scenes without the confusable class), per-view noise shared by every
  point a view sees plus per-view wrong "blobs" (spatially coherent, locally wrong evidence, what the 3D
  network can overrule with geometry and colour), boundary blur toward the nearest point of another
  class, and points that no camera sees (no feature; the 3D network fills them).

Modules: ``geometry`` (primitives, rooms, palettes), ``furniture``, ``rooms`` (room types, ``make_room``), ``scan``
(cameras, ray casting, point sampling), ``features`` (text embeddings, simulated fused features), ``render``
(ray-cast RGB-D frames fused by prep/fusion.py), ``writer`` (the dataset on disk), ``dense_room`` (a room at
ScanNet density for checks), ``__main__`` (the command line). The scene geometry stays available as a
:class:`Room` (a list of :class:`Primitive`) so that
``synthetic/render.py`` can ray-cast it into depth / label / feature images.

CLI::

    python -m synthetic --out data --name demo --dataset scannet --num-train 16 --num-val 4 \\
        --points 20000 --seed 0 [--overwrite]
"""
