"""Kernels and their drivers (layer 1) and the torch.library custom ops built on them (layer 2).

Nothing here imports transformers; optional backends (Triton, the compiled CUDA extension) are imported
lazily by :mod:`xtf_kernels.ops.registry` on first use.
"""
