"""Models: the sparse engine (``models.sparse``), the MinkUNet family, DisNet and the ESS adapter.

Kept empty on purpose: importing ``models`` must not pull in torch-heavy submodules.
"""
