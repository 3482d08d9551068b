"""setup.py end to end: build the CUDA wheel and the pure-Python wheel, install each into a fresh
virtual environment, import it there and check what the build recorded.

The CUDA wheel is compiled for one architecture (sm_90, the H200's) to keep this at about a minute on two
cores; it needs nvcc (skipped without it) but no GPU: the module links the CUDA runtime statically and not
the driver, so it imports here. The source is copied (and committed to a scratch git repository, so the
recorded SHA can be checked) to keep build outputs out of the working tree. Builds run without build
isolation, from the setuptools / wheel / pybind11 / ninja of this environment, so no network is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI_ARCH = "90"


def _nvcc() -> str | None:
    """The nvcc setup.py finds (same search order)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [Path(home) / "bin" / "nvcc"] if home else [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((str(c) for c in candidates if c and Path(c).is_file()), None)


def _run(cmd, *, cwd=None, env=None, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        command = " ".join(map(str, cmd))
        raise AssertionError(f"{command} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> tuple[Path, str | None]:
    """(a copy of the source tree, its commit SHA or None without git)."""
    dest = tmp_path_factory.mktemp("build") / "src"
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=False)
    if shutil.which("git") is None or listed.returncode != 0:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "_C*.so", ".git",
                                                                  "build_info.json", "__pycache__"))
        return dest, None
    for name in filter(None, listed.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git_env = dict(os.environ, GIT_AUTHOR_NAME="build test", GIT_AUTHOR_EMAIL="build@test",
                   GIT_COMMITTER_NAME="build test", GIT_COMMITTER_EMAIL="build@test")
    _run(["git", "init", "-q"], cwd=dest)
    _run(["git", "add", "-A"], cwd=dest)
    _run(["git", "commit", "-q", "-m", "snapshot", "--no-gpg-sign"], cwd=dest, env=git_env)
    return dest, _run(["git", "rev-parse", "HEAD"], cwd=dest).stdout.strip()


def _build_wheel(src: Path, out: Path, **flags: str) -> Path:
    missing = [name for name in ("setuptools", "wheel", "pybind11") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"build requirements missing from this environment: {missing}; `pip install {' '.join(missing)}`")
    env = dict(os.environ, MAX_JOBS="2", **flags)
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-w", out], env=env)
    (wheel,) = out.glob("xtf_kernels-*.whl")
    return wheel


def _venv_with(wheel: Path, where: Path) -> Path:
    """A fresh virtual environment (reusing this one's packages, torch included) with ``wheel`` installed."""
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", where])
    python = where / "bin" / "python"
    # --ignore-installed: a copy of xtf_kernels installed in the outer environment must not satisfy it.
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel])
    return python


_PROBE = """
import json, xtf_kernels, torch
from xtf_kernels.ops._cuda.build_info import read_build_info
from xtf_kernels.ops._cuda.extension import extension_unavailable_reason
from xtf_kernels.errors import BackendUnavailableError
info = read_build_info()
out = {"file": xtf_kernels.__file__, "info": info._asdict(), "reason": extension_unavailable_reason()}
if out["reason"] is None:
    import xtf_kernels._C as C
    out["module"] = dict(runtime=C.cuda_runtime_version(), archs=C.compiled_archs(), driver=C.cuda_driver_version())
    if out["module"]["driver"] == 0:  # no driver: a launch must fail with a Python error, not crash
        try:
            C.row_delta(rows=1, splits=1, base_partials=0, base_target_logit=0, ref_partials=0, ref_target_logit=0,
                        delta=0, device=0, stream=0)
        except RuntimeError as exc:
            out["launch_error"] = str(exc)
try:
    h, w, t = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2])
    xtf_kernels.linear_cross_entropy(h, w, t, backend="cuda")
    out["cuda_backend"] = "ran"
except BackendUnavailableError as exc:
    out["cuda_backend"] = str(exc)
print(json.dumps(out))
"""


def _probe(python: Path, cwd: Path) -> dict:
    return json.loads(_run([python, "-c", _PROBE], cwd=cwd).stdout)


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found: the CUDA wheel cannot be built here")
def test_cuda_wheel_builds_installs_and_records_its_build(source_copy, tmp_path):
    src, sha = source_copy
    nvcc_release = re.search(r"release (\d+)\.(\d+)", _run([_nvcc(), "--version"]).stdout).groups()
    wheel = _build_wheel(src, tmp_path / "dist", XTF_BUILD_CUDA="1", XTF_CUDA_ARCHS=CI_ARCH)

    local = f"+cu{nvcc_release[0]}{nvcc_release[1]}"
    assert local in wheel.name, f"{wheel.name} does not say which CUDA it is for ({local})"
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (so_name,) = [n for n in names if re.fullmatch(r"xtf_kernels/_C\..*\.so", n)]
        recorded = json.loads(zf.read("xtf_kernels/build_info.json"))
        assert "csrc/xtf_row_math.h" not in names  # sources stay out of the wheel
        zf.extract(so_name, tmp_path / "so")
    # Dynamic dependencies (readelf comes with binutils, which nvcc's host compiler needs anyway).
    dynamic = _run(["readelf", "-d", tmp_path / "so" / so_name]).stdout
    needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed and not any("libcuda.so" in line or "libcudart" in line for line in needed), needed

    python = _venv_with(wheel, tmp_path / "venv")
    probe = _probe(python, tmp_path)
    assert probe["file"].startswith(str(tmp_path / "venv")), probe["file"]
    info = probe["info"]
    assert recorded.pop("schema") == 1 and info == recorded
    assert info["built"] is True and info["reason"] is None
    assert info["version"].endswith(local)
    assert info["cuda_version"] == ".".join(nvcc_release)
    assert info["archs"] == [int(CI_ARCH)] and info["ptx_arch"] == int(CI_ARCH)
    assert f"-gencode=arch=compute_{CI_ARCH},code=sm_{CI_ARCH}" in info["nvcc_flags"]
    assert info["git_sha"] == sha
    assert probe["reason"] is None, probe["reason"]
    module = probe["module"]
    assert module["archs"] == [int(CI_ARCH) * 10]
    assert module["runtime"] == int(nvcc_release[0]) * 1000 + int(nvcc_release[1]) * 10
    if module["driver"] == 0:  # this machine has no GPU driver: errors, never a crash
        assert "needs CUDA tensors" in probe["cuda_backend"]
        assert "cudaSetDevice(0) failed: cudaErrorInsufficientDriver" in probe["launch_error"]

    env_report = _run([python, "-m", "xtf_kernels.env"], cwd=tmp_path, check=False)
    assert env_report.returncode == 0, env_report.stdout + env_report.stderr
    assert f"SASS for sm {CI_ARCH} + PTX for sm {CI_ARCH}" in env_report.stdout
    assert "PROBLEM" not in env_report.stdout


def test_pure_python_wheel_installs_and_says_why_there_is_no_extension(source_copy, tmp_path):
    src, _sha = source_copy
    wheel = _build_wheel(src, tmp_path / "dist", XTF_BUILD_CUDA="0")
    assert wheel.name.endswith("-py3-none-any.whl") and "+cu" not in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".so")]

    python = _venv_with(wheel, tmp_path / "venv")
    probe = _probe(python, tmp_path)
    assert probe["info"]["built"] is False
    assert probe["info"]["reason"] == "not requested (XTF_BUILD_CUDA=0)"
    assert probe["info"]["archs"] == [] and probe["info"]["cuda_version"] is None
    assert "not built in this install" in probe["reason"] and "XTF_BUILD_CUDA=1 pip install" in probe["reason"]
    assert probe["cuda_backend"].startswith("backend='cuda' is not available")

    env_report = _run([python, "-m", "xtf_kernels.env"], cwd=tmp_path, check=False)
    assert env_report.returncode == 0, env_report.stdout + env_report.stderr
    assert "no CUDA extension: not requested (XTF_BUILD_CUDA=0)" in env_report.stdout
    assert "extension      not available: the compiled extension xtf_kernels._C is not built" in env_report.stdout
