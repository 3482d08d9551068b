"""Triton kernels (layer 1). Imported only through :mod:`xtf_kernels.ops.registry` (``backend="triton"``), so
``import xtf_kernels`` never needs Triton. The head-pass backend is :mod:`.backend`."""
