"""Build script: a pure-Python install everywhere, plus the CUDA extension ``xtf_kernels._C`` where nvcc is found.

The extension (csrc/, see csrc/README.md) includes no torch header: nvcc compiles the kernels and the one
pybind11 binding file, and the module links the CUDA runtime statically and never the driver library.
So it builds on a machine whose torch has no CUDA (and in pip's isolated build environment, which has no
torch at all) and imports on a machine without a GPU driver. ninja drives the compile (a build.ninja in
the build_temp folder), so a rebuild recompiles only what changed.

Environment flags (read here, at build time):
    XTF_BUILD_CUDA  auto (default) | 0 | 1. auto builds the extension when nvcc is found and installs
                    pure Python otherwise; 1 fails the install when nvcc is missing; 0 never builds it
                    (the pure-Python wheel). Once nvcc is found, a compile error fails the install.
    XTF_CUDA_ARCHS  SM architectures to compile for, separated by ";", "," or spaces (default "80;90":
                    A100 and H100 / H200; "8.0" and "sm_80" are read as 80 too). Each gets machine code
                    (SASS); the newest also gets PTX, which newer GPUs JIT-compile. Each arch adds one
                    device compile of each .cu file, so one arch (e.g. "90") is the fastest CI build.
    MAX_JOBS        parallel compile jobs (default: the CPU count).
    CUDA_HOME       CUDA toolkit root; nvcc is $CUDA_HOME/bin/nvcc (CUDA_PATH is read the same way).
                    Default: nvcc on PATH, else /usr/local/cuda/bin/nvcc.
    CXX             host C++ compiler nvcc uses (-ccbin); default g++.

What was built (or why nothing was) is recorded in xtf_kernels/build_info.json: CUDA version, archs,
compilers, git SHA, date. ``python -m xtf_kernels.env`` validates and prints it. A CUDA build gets the
PEP 440 local version ``+cu<major><minor>`` (e.g. 0.1.0+cu130), so a wheel's name says which CUDA it was
built with. One command builds the wheels for GPU clusters: csrc/build_wheels.sh.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

from setuptools import Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGE = "xtf_kernels"
EXTENSION = f"{PACKAGE}._C"
CUDA_SOURCES = ("csrc/row_kernels.cu", "csrc/row_copy_kernels.cu")
BINDING_SOURCE = "csrc/bindings.cpp"
HEADERS = ("csrc/xtf_kernels.h", "csrc/xtf_row_math.h", "csrc/cuda_check.h")
BUILD_INFO_NAME = "build_info.json"
BUILD_INFO_SCHEMA = 1  # read back by xtf_kernels/ops/_cuda/build_info.py
DEFAULT_ARCHS = "80;90"


class BuildPlan(NamedTuple):
    """What this build does: build the extension with ``nvcc`` for ``archs``, or not, for ``reason``."""

    build: bool
    reason: str | None
    nvcc: str | None
    cuda_version: tuple[int, int] | None
    archs: tuple[int, ...]


def base_version() -> str:
    text = (ROOT / PACKAGE / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if match is None:
        raise SystemExit(f"setup.py: no __version__ = \"...\" line in {PACKAGE}/__init__.py")
    return match.group(1)


def find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidate = Path(os.environ[var]) / "bin" / "nvcc"
            return str(candidate) if candidate.is_file() else None
    on_path = shutil.which("nvcc")
    if on_path:
        return on_path
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def nvcc_version(nvcc: str) -> tuple[int, int]:
    """(major, minor) from ``nvcc --version`` ("... release 13.0, V13.0.88")."""
    output = subprocess.run([nvcc, "--version"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", output)
    if match is None:
        raise SystemExit(f"setup.py: cannot read the CUDA version from `{nvcc} --version`:\n{output}")
    return int(match.group(1)), int(match.group(2))


def parse_archs(raw: str) -> tuple[int, ...]:
    """XTF_CUDA_ARCHS -> sorted SM numbers, e.g. "80;90" -> (80, 90)."""
    archs = set()
    for token in re.split(r"[;,\s]+", raw.strip()):
        if not token:
            continue
        digits = token.lower().removeprefix("sm_").replace(".", "")
        if not digits.isdigit() or int(digits) < 50:
            raise SystemExit(f"setup.py: XTF_CUDA_ARCHS={raw!r}: {token!r} is not an SM architecture like 80 or 9.0")
        archs.add(int(digits))
    if not archs:
        raise SystemExit(f"setup.py: XTF_CUDA_ARCHS={raw!r} names no architecture")
    return tuple(sorted(archs))


def make_plan() -> BuildPlan:
    mode = os.environ.get("XTF_BUILD_CUDA", "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"setup.py: XTF_BUILD_CUDA must be auto, 0 or 1 (got {mode!r})")
    if mode == "0":
        return BuildPlan(False, "not requested (XTF_BUILD_CUDA=0)", None, None, ())
    nvcc = find_nvcc()
    if nvcc is None:
        if mode == "1":
            raise SystemExit("setup.py: XTF_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
        return BuildPlan(False, "nvcc not found at build time (set CUDA_HOME or put nvcc on PATH)", None, None, ())
    archs = parse_archs(os.environ.get("XTF_CUDA_ARCHS", DEFAULT_ARCHS))
    return BuildPlan(True, None, nvcc, nvcc_version(nvcc), archs)


PLAN = make_plan()


def gencode_flags(archs: tuple[int, ...]) -> list[str]:
    """SASS for every arch, plus PTX for the newest so later GPUs can JIT-compile it."""
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return [*flags, f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def host_compiler() -> str:
    return os.environ.get("CXX") or "g++"


def first_line(command: list[str]) -> str | None:
    try:
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    lines = output.strip().splitlines()
    return lines[0] if lines else None


def git_sha() -> str | None:
    if not (ROOT / ".git").exists():
        return None
    return first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"])


def build_info(version: str, *, built: bool, reason: str | None, nvcc_flags: list[str] | None = None) -> dict:
    """The record written to xtf_kernels/build_info.json (schema: xtf_kernels/ops/_cuda/build_info.py)."""
    cuda = PLAN.cuda_version
    return {
        "schema": BUILD_INFO_SCHEMA,
        "version": version,
        "built": built,
        "reason": reason,
        "cuda_version": f"{cuda[0]}.{cuda[1]}" if built and cuda else None,
        "archs": list(PLAN.archs) if built else [],
        "ptx_arch": PLAN.archs[-1] if built else None,
        "nvcc": PLAN.nvcc if built else None,
        "nvcc_flags": nvcc_flags or [],
        "host_compiler": first_line([host_compiler(), "--version"]) if built else None,
        "python": sys.version.split()[0],
        "platform": sysconfig.get_platform(),
        "git_sha": git_sha(),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json_atomically(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# An sdist is source for any machine: no +cu tag (the wheel built from it gets one if it compiles CUDA).
BUILDING_SDIST = "sdist" in sys.argv[1:]
VERSION = base_version() + (
    f"+cu{PLAN.cuda_version[0]}{PLAN.cuda_version[1]}" if PLAN.build and not BUILDING_SDIST else ""
)


class BuildPyRecordingBuild(build_py):
    """Also writes build_info.json for a pure-Python build (a CUDA build's is written by build_ext).

    It replaces any record copied from the source tree (package data "*.json"), e.g. one left there by an
    in-place CUDA build, so a pure wheel never claims an extension.
    """

    def run(self):
        super().run()
        if PLAN.build:
            return
        package_dir = ROOT / PACKAGE if getattr(self, "editable_mode", False) else Path(self.build_lib) / PACKAGE
        write_json_atomically(package_dir / BUILD_INFO_NAME, build_info(VERSION, built=False, reason=PLAN.reason))


def ninja_escape(path: str) -> str:
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


class Step(NamedTuple):
    rule: str  # "nvcc" or "link"
    inputs: tuple[str, ...]
    output: str
    command: list[str]


class BuildExtWithNvcc(build_ext):
    """Compiles csrc/ with nvcc through ninja, links the CUDA runtime statically, records the build."""

    def build_extension(self, ext):
        if ext.name != EXTENSION:
            return super().build_extension(ext)
        import pybind11  # a build requirement ([build-system] in pyproject.toml); only needed here

        temp = Path(self.build_temp).resolve() / "xtf_csrc"
        temp.mkdir(parents=True, exist_ok=True)
        compile_flags = [
            "-ccbin", host_compiler(), "-std=c++17", "-O3", "-lineinfo", "-Xcompiler", "-fPIC,-fvisibility=hidden",
        ]
        binding_flags = [f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
        device_flags = gencode_flags(PLAN.archs)
        steps, objects = [], []
        for source in (*CUDA_SOURCES, BINDING_SOURCE):
            path, obj = str(ROOT / source), str(temp / (Path(source).name + ".o"))
            flags = compile_flags + (binding_flags if source == BINDING_SOURCE else device_flags)
            steps.append(Step("nvcc", (path,), obj, [PLAN.nvcc, *flags, "-c", path, "-o", obj]))
            objects.append(obj)
        linked = str(temp / Path(self.get_ext_filename(ext.name)).name)
        # -cudart static: no libcudart.so dependency; the driver (libcuda) is loaded by the runtime at first
        # use, never linked, so the module imports where there is no driver. --exclude-libs keeps the
        # static runtime's symbols out of the module's exported table.
        link = [PLAN.nvcc, "-ccbin", host_compiler(), "-shared", "-cudart", "static", *objects, "-o", linked,
                "-Xlinker", "--exclude-libs,ALL"]
        steps.append(Step("link", tuple(objects), linked, link))
        self._run_steps(steps, temp)

        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(linked, target)
        info = build_info(VERSION, built=True, reason=None, nvcc_flags=compile_flags + device_flags)
        write_json_atomically(target.parent / BUILD_INFO_NAME, info)

    def copy_extensions_to_source(self):
        """--inplace (and editable installs): the record goes next to the module in the source tree too."""
        super().copy_extensions_to_source()
        record = Path(self.build_lib) / PACKAGE / BUILD_INFO_NAME
        if PLAN.build and record.is_file():
            package_dir = Path(self.get_finalized_command("build_py").get_package_dir(PACKAGE))
            self.copy_file(str(record), str(package_dir / BUILD_INFO_NAME), level=self.verbose)

    def _run_steps(self, steps: list[Step], temp: Path) -> None:
        jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
        ninja = shutil.which("ninja") or self._ninja_from_package()
        if ninja is None:
            self.announce("ninja not found: compiling one file at a time", level=3)
            for step in steps:
                self.spawn(step.command)
            return
        lines = ["ninja_required_version = 1.3"]
        for rule in ("nvcc", "link"):
            depfile = ["  depfile = $out.d", "  deps = gcc"] if rule == "nvcc" else []
            extra = " -MD -MF $out.d" if rule == "nvcc" else ""
            lines += [f"rule {rule}", f"  command = $cmd{extra}", f"  description = {rule.upper()} $out", *depfile]
        for step in steps:
            inputs = " ".join(ninja_escape(path) for path in step.inputs)
            lines.append(f"build {ninja_escape(step.output)}: {step.rule} {inputs}")
            # Headers are tracked through the depfile nvcc writes (-MD -MF).
            lines.append("  cmd = " + " ".join(shlex.quote(arg).replace("$", "$$") for arg in step.command))
        (temp / "build.ninja").write_text("\n".join(lines) + "\n")
        self.spawn([ninja, "-C", str(temp), "-j", str(jobs)])

    @staticmethod
    def _ninja_from_package() -> str | None:
        try:
            import ninja
        except ImportError:
            return None
        candidate = Path(ninja.BIN_DIR) / "ninja"
        return str(candidate) if candidate.is_file() else None


setup(
    version=VERSION,
    ext_modules=[Extension(EXTENSION, sources=[*CUDA_SOURCES, BINDING_SOURCE], depends=list(HEADERS))]
    if PLAN.build
    else [],
    cmdclass={"build_py": BuildPyRecordingBuild, "build_ext": BuildExtWithNvcc},
)
