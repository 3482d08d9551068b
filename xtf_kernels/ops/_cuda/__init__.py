"""Driver for the compiled CUDA extension (``xtf_kernels._C``), built from csrc/ by setup.py."""
