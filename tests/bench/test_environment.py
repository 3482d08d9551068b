import re

import torch

from xtf_kernels import __version__
from xtf_kernels.bench.environment import device_description
from xtf_kernels.bench.environment import git_sha
from xtf_kernels.bench.environment import package_version


def test_cpu_description_names_threads():
    assert f"{torch.get_num_threads()} torch threads" in device_description(torch.device("cpu"))


def test_versions():
    assert package_version("torch") == torch.__version__
    assert package_version("xtf_kernels") == __version__
    assert package_version("no-such-distribution-xyz") == ""
    assert package_version(None) == ""


def test_git_sha_is_hex_or_empty():
    assert re.fullmatch(r"([0-9a-f]{12})?", git_sha())
