"""``python -m xtf_kernels.env`` (also ``xtf env``): what this install is and what it can run here.

Paste its output into bug reports. It prints the package, Python, torch / Triton / transformers
versions, the device torch sees, the compiled extension ``xtf_kernels._C`` (does it import, which CUDA
runtime and architectures it holds, which CUDA the driver supports), the build record setup.py wrote
(xtf_kernels/build_info.json, validated on read: missing or corrupt is said so) and, per backend,
whether it runs on this device or why not. ``--json`` prints the same as one JSON object.

Exit status 0, or 1 when the install contradicts itself: a corrupt build record, a record of a CUDA build
whose module does not import or was built differently, or a module the record says was never built.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import torch

from . import __version__
from .errors import CorruptFileError
from .ops._cuda import build_info
from .ops._cuda.extension import extension
from .ops._cuda.extension import extension_unavailable_reason
from .ops._cuda.extension import format_cuda_version
from .ops.registry import availability_report


def _installed_version(distribution: str) -> str | None:
    """A package's installed version from its metadata, without importing it (None when absent)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device_section() -> tuple[torch.device, dict]:
    if not torch.cuda.is_available():
        return torch.device("cpu"), {"type": "cpu", "cuda_devices": 0}
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return torch.device("cuda", index), {
        "type": "cuda",
        "index": index,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "cuda_devices": torch.cuda.device_count(),
    }


def _extension_section() -> dict:
    reason = extension_unavailable_reason()
    if reason is not None:
        return {"imports": False, "reason": reason}
    module = extension()
    return {
        "imports": True,
        "path": module.__file__,
        "cuda_runtime": format_cuda_version(module.cuda_runtime_version()),
        "archs": [arch // 10 for arch in module.compiled_archs()],
        "driver_cuda": format_cuda_version(module.cuda_driver_version()),
    }


def _build_section() -> dict:
    path = build_info.BUILD_INFO_PATH
    try:
        info = build_info.read_build_info(path)
    except FileNotFoundError:
        return {
            "status": "missing",
            "path": str(path),
            "detail": "no build record: a source checkout never built with `pip install .` / "
            "`python setup.py build_ext --inplace`, or a damaged install",
        }
    except CorruptFileError as exc:
        return {"status": "corrupt", "path": str(path), "detail": str(exc)}
    return {"status": "ok", "path": str(path), "record": info._asdict()}


def _problems(ext: dict, build: dict) -> list[str]:
    """Contradictions between the build record and the module that is actually there."""
    if build["status"] == "corrupt":
        return [f"the build record is corrupt: {build['detail']}"]
    if build["status"] != "ok":
        return []
    record = build["record"]
    if record["built"] and not ext["imports"]:
        return [f"the build record says the extension was built, but it does not import: {ext['reason']}"]
    if not record["built"] and ext["imports"]:
        return [f"an extension module is present ({ext['path']}) but the build record says none was built "
                f"({record['reason']}); reinstall to make them agree"]
    problems = []
    if record["built"] and ext["cuda_runtime"] != record["cuda_version"]:
        problems.append(
            f"the module was built with CUDA {ext['cuda_runtime']}, the record says {record['cuda_version']}"
        )
    if record["built"] and sorted(ext["archs"]) != sorted(record["archs"]):
        problems.append(f"the module holds device code for {ext['archs']}, the record says {list(record['archs'])}")
    return problems


def collect_report() -> dict:
    """Everything the report prints, as JSON-ready values."""
    device, device_section = _device_section()
    ext = _extension_section()
    build = _build_section()
    return {
        "xtf_kernels": {
            "version": __version__,
            "installed_version": _installed_version("xtf_kernels"),
            "location": str(Path(__file__).resolve().parent),
        },
        "python": {"version": sys.version.split()[0], "platform": platform.platform()},
        "packages": {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "triton": _installed_version("triton"),
            "transformers": _installed_version("transformers"),
        },
        "device": device_section,
        "extension": ext,
        "build": build,
        "backends": {"device": str(device), "availability": availability_report(device)},
        "problems": _problems(ext, build),
    }


def _format_build(build: dict) -> list[str]:
    if build["status"] != "ok":
        return [f"build record   {build['status'].upper()}: {build['detail']} ({build['path']})"]
    r = build["record"]
    lines = [f"build record   {build['path']}"]
    if r["built"]:
        lines.append(
            f"  built        CUDA {r['cuda_version']}, SASS for sm {', '.join(map(str, r['archs']))} + PTX for "
            f"sm {r['ptx_arch']}"
        )
        lines.append(f"  compilers    {r['nvcc']}; host {r['host_compiler']}")
    else:
        lines.append(f"  built        no CUDA extension: {r['reason']}")
    lines.append(f"  version      {r['version']} for Python {r['python']} on {r['platform']}")
    lines.append(f"  source       git {r['git_sha'] or 'unknown (not a git checkout)'}, built {r['built_at']}")
    return lines


def format_report(report: dict) -> str:
    """The human-readable report."""
    pkg, py, packages, dev, ext = (report[k] for k in ("xtf_kernels", "python", "packages", "device", "extension"))
    installed = pkg["installed_version"] or "not installed (running from a source tree)"
    lines = [
        f"xtf_kernels    {pkg['version']} at {pkg['location']} (installed distribution: {installed})",
        f"python         {py['version']} on {py['platform']}",
        f"torch          {packages['torch']} (CUDA build: {packages['torch_cuda'] or 'none, CPU-only'})",
        f"triton         {packages['triton'] or 'not installed'}",
        f"transformers   {packages['transformers'] or 'not installed'}",
    ]
    if dev["type"] == "cuda":
        lines.append(
            f"device         cuda:{dev['index']} {dev['name']}, compute capability {dev['capability']}, "
            f"{dev['memory_gib']} GiB, {dev['multiprocessors']} SMs ({dev['cuda_devices']} CUDA device(s))"
        )
    else:
        lines.append("device         cpu (torch sees no CUDA device)")
    if ext["imports"]:
        driver = f"supports CUDA {ext['driver_cuda']}" if ext["driver_cuda"] else "none found"
        lines.append(
            f"extension      xtf_kernels._C imports: CUDA runtime {ext['cuda_runtime']} (static), device code for "
            f"sm {ext['archs']}; NVIDIA driver: {driver}"
        )
    else:
        lines.append(f"extension      not available: {ext['reason']}")
    lines += _format_build(report["build"])
    lines.append(f"backends on {report['backends']['device']}:")
    for name, reason in report["backends"]["availability"].items():
        lines.append(f"  {name:<12} {'available' if reason is None else 'unavailable: ' + reason}")
    for problem in report["problems"]:
        lines.append(f"PROBLEM        {problem}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    report = collect_report()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["problems"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xtf_kernels.env", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
