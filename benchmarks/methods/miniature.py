"""The token filters on a miniature that resembles their papers' regime, with known ground truth.

Protocol (every number a function of the seeds; the criteria of "a method works" are in
:mod:`benchmarks.methods.miniature_criteria`, written before the full run):
- base: :func:`xtf_kernels.datasets.miniature.load_base`: a byte-level BPE tokenizer of 2,000 pieces and a
  1.03M-parameter Llama-config model pretrained on 2.48M tokens of stories, web text with artefacts, fact
  Q&A and arithmetic in the chat template, 1% of it two-step problems (29x the SFT pool's tokens); one base
  for every seed, cached;
- per noise level (0%, 5%, 15% of the response tokens harmful: wrong numbers, off-domain sentences, garbled
  artefacts; boilerplate apart) and seed: :func:`xtf_kernels.demo.experiment.run_cell` runs every arm
  (all tokens, each XTF rule alone, XTF's union as the paper preset and with the library's defaults, Token
  Cleaning fixed and self-evolving, RHO-1, the oracle, a random drop matched to each method's drop rate);
- statistics per noise level (:func:`xtf_kernels.demo.aggregate.compare`): paired per-seed differences
  against all tokens and against the matched random drop with 95% intervals, per-problem differences pooled
  over seeds with a sign-flip permutation test, McNemar pooled over problems.

Run (one torch thread; nice it on a shared machine)::

    python -m benchmarks.methods.miniature             # 5 seeds x 3 noise levels -> benchmarks/methods/results/
    python -m benchmarks.methods.miniature --quick     # 2 seeds x 2 levels, small pool and base: under 3 minutes
    python -m benchmarks.methods.miniature --safeguards  # each safeguard alone: 5 seeds, 0% and 15%
    python -m benchmarks.methods.miniature --remaining-safeguards  # RI scores, self-evolving Token Cleaning
    python -m benchmarks.methods.miniature --replication  # the defaults on a new base and fresh seeds
    python -m benchmarks.methods.miniature --replication --refresh  # its files again from its cells

Writes ``miniature.json`` (every cell, the comparisons, the criteria's verdicts, machine and load),
``miniature.csv`` (one row per noise level, seed and arm), ``miniature.md`` (the tables) and
``miniature.png`` (exact-match differences with intervals, AUROC per noise kind).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

import torch

from benchmarks.methods.miniature_criteria import judge
from benchmarks.methods.miniature_criteria import judge_ladder
from benchmarks.methods.miniature_criteria import judge_remaining
from benchmarks.methods.miniature_criteria import judge_replication
from benchmarks.methods.miniature_criteria import judge_tr_anchors
from benchmarks.methods.miniature_report import write_results
from xtf_kernels import __version__
from xtf_kernels._atomic import atomic_write_text
from xtf_kernels.datasets.miniature import BaseConfig
from xtf_kernels.datasets.miniature import load_base
from xtf_kernels.demo.aggregate import compare
from xtf_kernels.demo.aggregate import paired
from xtf_kernels.demo.experiment import METHOD_ARMS
from xtf_kernels.demo.experiment import RI_SCORE_LADDER
from xtf_kernels.demo.experiment import RUNG_PRESET
from xtf_kernels.demo.experiment import SAFEGUARD_LADDER
from xtf_kernels.demo.experiment import SELF_EVOLVING_LADDER
from xtf_kernels.demo.experiment import TC_LADDER
from xtf_kernels.demo.experiment import TR_ANCHOR_LADDER
from xtf_kernels.demo.experiment import CellConfig
from xtf_kernels.demo.experiment import run_cell

HERE = os.path.dirname(os.path.abspath(__file__))
# The full plans' sizes: 1,200 problems in the pool (the base's pretraining is 2.48M tokens, 29x the pool's
# 85k at 15% noise, 31x its 80k at 0%), a 160-problem trusted set, 200 held-out problems, 30 of each
# retention task.
FULL_SIZES = dict(pool=1200, trusted=160, heldout=200, retention=30)
# At 0% noise only "does it cost anything" is asked (C2): no random controls, no oracle (it drops nothing).
CLEAN_ARMS = ("all_tokens", "xtf_paper", "xtf_safe", "tc_fixed", "tc_self_evolving", "rho1")


@dataclass(frozen=True)
class Plan:
    """seeds x noise levels (``cells``) on one base. ``decide``: None for the main comparison (judged by the
    criteria C0-C4), else the ladder's rule applied to the summary (a ladder has no random controls, so it is
    compared, not judged); ``title`` / ``intro``: the heading and first paragraph of its Markdown."""

    seeds: tuple[int, ...]
    cells: dict[float, CellConfig]
    base: BaseConfig = field(default_factory=BaseConfig)
    decide: Callable[[dict], dict] | None = None
    title: str = "Token filters on the miniature"
    intro: str = ""


def full_plan() -> Plan:
    """5 seeds; every arm at 15%, each with a random drop of its size; at 5% the unions, fixed Token Cleaning,
    RHO-1 and the oracle, each with its random drop; at 0% the methods only.
    Levels run 15% first: the criteria that need the most seeds are decided there."""
    sizes = FULL_SIZES
    noisy = CellConfig(**sizes, arms=METHOD_ARMS, random_for=tuple(a for a in METHOD_ARMS if a != "all_tokens"))
    mid = CellConfig(**sizes, arms=("all_tokens", "xtf_paper", "xtf_safe", "tc_fixed", "rho1", "oracle"),
                     random_for=("xtf_paper", "xtf_safe", "tc_fixed", "rho1", "oracle"))
    clean = CellConfig(**sizes, arms=CLEAN_ARMS, random_for=())
    return Plan(seeds=(0, 1, 2, 3, 4), cells={0.15: noisy, 0.0: clean, 0.05: mid})


def safeguards_plan() -> Plan:
    """Every safeguard measured on its own (:data:`~xtf_kernels.demo.experiment.SAFEGUARD_LADDER`): each added
    alone to the paper preset, all of them together ("guarded") and guarded with one part changed, beside all
    tokens, the paper preset and the oracle; at 15% noise (does it help) and 0% (does it cost); the same seeds,
    pools and base as the main plan, so all tokens and the paper preset reproduce the main run's cells."""
    arms = ("all_tokens", "xtf_paper", *SAFEGUARD_LADDER)
    return Plan(seeds=(0, 1, 2, 3, 4), decide=judge_ladder,
                cells={0.15: CellConfig(**FULL_SIZES, arms=(*arms, "oracle"), random_for=()),
                       0.0: CellConfig(**FULL_SIZES, arms=arms, random_for=())},
                title="Token filters on the miniature: the safeguards one by one",
                intro="Each safeguard added alone to XTF's paper preset, all of them together (guarded), and guarded "
                      "with one part changed; compared against the presets, not judged by C0-C4 (no random "
                      "controls).")


def tr_anchors_plan() -> Plan:
    """The second round of the ladder: guarded + rates (the defaults the first round chose, which the main run
    found failing at 5% noise) against the same with TR anchors (0.25, 0.5) and without TR, at 15%, 5% and 0%."""
    arms = ("all_tokens", "xtf_guarded+rates", *TR_ANCHOR_LADDER)
    return Plan(seeds=(0, 1, 2, 3, 4), decide=judge_tr_anchors,
                cells={0.15: CellConfig(**FULL_SIZES, arms=(*arms, "oracle"), random_for=()),
                       0.05: CellConfig(**FULL_SIZES, arms=(*arms, "oracle"), random_for=()),
                       0.0: CellConfig(**FULL_SIZES, arms=arms, random_for=())},
                title="Token filters on the miniature: the safeguard ladder's second round",
                intro="Guarded + 5% rates (the defaults the first round chose) against the same with TR anchors and "
                      "without TR, at 15%, 5% and 0% noise; compared, not judged by C0-C4 (no random controls).")


def tc_safeguards_plan() -> Plan:
    """Token Cleaning's rung: fixed Token Cleaning as published against the library's defaults (the special
    tokens protected; no cap: the top k fixes the drop rate), at 15%, 5% and 0% noise."""
    arms = ("all_tokens", "tc_fixed", *TC_LADDER)
    return Plan(seeds=(0, 1, 2, 3, 4), decide=lambda summary: {},
                cells={level: CellConfig(**FULL_SIZES, arms=arms, random_for=()) for level in (0.15, 0.05, 0.0)},
                title="Token filters on the miniature: Token Cleaning's safeguards",
                intro="Fixed Token Cleaning as published against the library's defaults (the special tokens "
                      "protected; no cap, the top k fixes the drop rate), at 15%, 5% and 0% noise; compared, not "
                      "judged by C0-C4 (no random controls).")


def remaining_safeguards_plan() -> Plan:
    """The third round: what the first two left unmeasured that changes which tokens go. RI's other scores on
    the library's defaults; self-evolving Token Cleaning with the trusted set as its first part against the
    same schedule with nothing dropped, and as published, each checking its reference before every round; at
    15%, 5% and 0% noise."""
    arms = ("all_tokens", "xtf_safe", *RI_SCORE_LADDER, "tc_self_evolving", *SELF_EVOLVING_LADDER)
    return Plan(seeds=(0, 1, 2, 3, 4), decide=judge_remaining,
                cells={0.15: CellConfig(**FULL_SIZES, arms=(*arms, "oracle"), random_for=()),
                       0.05: CellConfig(**FULL_SIZES, arms=(*arms, "oracle"), random_for=()),
                       0.0: CellConfig(**FULL_SIZES, arms=arms, random_for=())},
                title="Token filters on the miniature: the safeguards' third round",
                intro="RI's other scores on XTF's library defaults; self-evolving Token Cleaning with a trusted first "
                      "part against the same schedule with nothing dropped, and as published, with the per-round "
                      "reference check recorded; at 15%, 5% and 0% noise; compared by rules L4-L6, not judged by "
                      "C0-C4 (no random controls).")


def replication_plan() -> Plan:
    """The library's defaults on a base pretrained from seed 1 and fresh SFT seeds 5-9 (they were chosen on
    base seed 0 and seeds 0-4): all tokens, the defaults with their random drop, the paper preset and the
    oracle at 15%, 5% and 0% noise."""
    noisy = CellConfig(**FULL_SIZES, arms=("all_tokens", "xtf_paper", "xtf_safe", "oracle"),
                       random_for=("xtf_safe",))
    return Plan(seeds=(5, 6, 7, 8, 9), base=BaseConfig(seed=1), decide=judge_replication,
                cells={0.15: noisy, 0.05: noisy,
                       0.0: CellConfig(**FULL_SIZES, arms=("all_tokens", "xtf_paper", "xtf_safe"), random_for=())},
                title="Token filters on the miniature: the defaults replicated on a new base",
                intro="XTF's library defaults, chosen on base seed 0 and SFT seeds 0-4, run on a base pretrained from "
                      "another seed with fresh SFT seeds (both in the line above; base 1 and seeds 5-9 unless "
                      "--base-seed / --seeds); judged by R0-R1 and N0-N1 (miniature_criteria.py), with C0-C3 "
                      "reported.")


def quick_plan() -> Plan:
    small = dict(pool=96, trusted=48, heldout=60, retention=20, self_evolving_parts=3)  # lr 3e-4 as the full run
    noisy = CellConfig(**small, arms=("all_tokens", "xtf_KN", "xtf_paper", "xtf_safe", "tc_fixed",
                                            "tc_self_evolving", "rho1", "oracle"),
                       random_for=("xtf_paper", "tc_fixed", "oracle"))
    clean = CellConfig(**small, arms=("all_tokens", "xtf_paper", "tc_fixed"), random_for=())
    return Plan(seeds=(0, 1), cells={0.0: clean, 0.15: noisy},
                base=BaseConfig(documents=2500, tokenizer_documents=2500, vocab_size=1200))


# The plans besides the main one, by command-line name (--quick, --safeguards, ...; also their results folder).
OTHER_PLANS = {
    "quick": (quick_plan, "2 seeds, 0%% and 15%% noise, small pool and base"),
    "safeguards": (safeguards_plan, "the safeguard ladder (each safeguard alone) at 0%% and 15%%"),
    "tr_anchors": (tr_anchors_plan, "the ladder's second round (TR anchors, no TR) at 0, 5, 15%%"),
    "tc_safeguards": (tc_safeguards_plan, "Token Cleaning as published vs its defaults at 0, 5, 15%%"),
    "replication": (replication_plan, "the defaults on a base from seed 1 and SFT seeds 5-9"),
    "remaining_safeguards": (remaining_safeguards_plan, "the third round (RI scores, self-evolving Token Cleaning's "
                                                        "trusted part and reference check)"),
}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} thread(s))"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_cells(plan: Plan, partial: str, *, levels: tuple[float, ...] | None = None,
              cache_dir: str | None = None, log=_log) -> dict[str, list[dict]]:
    """Every (noise level, seed) cell of ``plan`` (``levels`` in that order, default the plan's), skipping the
    cells already in the JSON file ``partial`` and rewriting it atomically after each new cell, so an
    interrupted run resumes and several processes can split the seeds between them."""
    state = {"cells": {}, "load_average_start": list(os.getloadavg()), "started": time.time()}
    if os.path.exists(partial):
        with open(partial, encoding="utf-8") as handle:
            state = json.load(handle)
    cells = state["cells"]
    base = load_base(plan.base, cache_dir=cache_dir, log=log)
    state.setdefault("base_info", base.info)
    for noise in levels or tuple(plan.cells):
        for seed in plan.seeds:
            done = {cell["seed"] for cell in cells.get(f"{noise:.2f}", [])}
            if seed in done:
                continue
            cell = run_cell(base.model, base.tokenizer, noise=noise, seed=seed, config=plan.cells[noise], log=log)
            cells.setdefault(f"{noise:.2f}", []).append(cell)
            state["finished"], state["load_average_end"] = time.time(), list(os.getloadavg())
            atomic_write_text(partial, json.dumps(state))
    return state


def record(plan: Plan, cells: dict[str, list[dict]], *, seconds: float, load_start: list[float],
           load_end: list[float], base_info: dict) -> tuple[dict, dict]:
    """(environment, plan) records of a run of ``plan`` that computed ``cells``, as results files keep them."""
    environment = {"machine": machine(), "python": platform.python_version(), "xtf_kernels": __version__,
                   "load_average_start": list(load_start), "load_average_end": list(load_end), "seconds": seconds,
                   "cell_seconds": sum(c["seconds"] for cs in cells.values() for c in cs)}
    planned = {"seeds": sorted({c["seed"] for cs in cells.values() for c in cs}), "base": plan.base.to_dict(),
               "base_info": base_info, "cells": _cell_records(plan)}
    return environment, planned


def _cell_records(plan: Plan) -> dict:
    return {f"{k:.2f}": {**v.__dict__, "arms": list(v.arms), "random_for": list(v.random_for),
                         "score_only": list(v.score_only)} for k, v in plan.cells.items()}


def finish(plan: Plan, cells: dict[str, list[dict]], out_dir: str, *, environment: dict, plan_record: dict,
           refreshed: dict | None = None) -> dict:
    """Comparisons, the criteria's verdicts and every output file from the cells (levels with cells only);
    ``environment`` / ``plan_record``: what :func:`record` made when the cells ran; ``refreshed``: when and by
    which version the files were recomputed from stored cells (None for a fresh run)."""
    for level in cells:
        cells[level].sort(key=lambda cell: cell["seed"])
    summary = {level: compare(level_cells) for level, level_cells in sorted(cells.items(), reverse=True)}
    for level, level_summary in summary.items():  # each rung of the safeguard ladders against its preset
        for arm, preset in RUNG_PRESET.items():
            if arm in level_summary and preset in level_summary:
                level_summary[arm]["vs_preset"] = paired(cells[level], arm, preset)
    results = {
        "format": "xtf-miniature-benchmark", "version": 1,
        "environment": environment,
        "plan": plan_record,
        "title": plan.title, "intro": plan.intro,
        "summary": summary,
        "criteria": judge(summary) if plan.decide is None else None,
        "ladder": None if plan.decide is None else plan.decide(summary),
        "cells": cells,
    }
    if refreshed is not None:
        results["refreshed"] = refreshed
    os.makedirs(out_dir, exist_ok=True)
    write_results(results, out_dir)
    return results


def run(plan: Plan, out_dir: str, *, cache_dir: str | None = None, log=_log) -> dict:
    """Every cell of ``plan`` in one process, then :func:`finish`."""
    os.makedirs(out_dir, exist_ok=True)
    start, load_start = time.perf_counter(), os.getloadavg()
    partial = os.path.join(out_dir, "cells.partial.json")
    state = run_cells(plan, partial, cache_dir=cache_dir, log=log)
    environment, planned = record(plan, state["cells"], seconds=time.perf_counter() - start,
                                  load_start=list(load_start), load_end=list(os.getloadavg()),
                                  base_info=state["base_info"])
    results = finish(plan, state["cells"], out_dir, environment=environment, plan_record=planned)
    os.remove(partial)
    return results


def refresh(plan: Plan, out_dir: str) -> dict:
    """:func:`finish` again on the cells of ``out_dir``/miniature.json, keeping the run's own environment and
    plan records and stamping ``refreshed``; refuses results written by another plan (other seeds, base, or any
    cell setting the run recorded)."""
    with open(os.path.join(out_dir, "miniature.json"), encoding="utf-8") as handle:
        stored = json.load(handle)
    recorded = stored["plan"]
    current = _cell_records(plan)
    # Settings added to CellConfig after a run are absent from its record: compare what both have.
    same_cells = set(recorded["cells"]) == set(current) and all(
        recorded["cells"][level][key] == current[level][key]
        for level in current for key in recorded["cells"][level].keys() & current[level].keys())
    mismatch = [name for name, same in (("seeds", recorded["seeds"] == sorted(plan.seeds)),
                                        ("base", recorded["base"] == plan.base.to_dict()),
                                        ("cells", same_cells)) if not same]
    if mismatch:
        raise ValueError(f"{out_dir}/miniature.json was written by another plan ({', '.join(mismatch)} differ); "
                         "give the plan flag, --seeds and --base-seed it was run with")
    refreshed = {"at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "xtf_kernels": __version__}
    return finish(plan, stored["cells"], out_dir, environment=stored["environment"], plan_record=recorded,
                  refreshed=refreshed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    for name, (_, text) in OTHER_PLANS.items():
        which.add_argument(f"--{name.replace('_', '-')}", dest="plan", action="store_const", const=name,
                           help=f"{text} -> results/{name}/")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the plan's seeds")
    parser.add_argument("--base-seed", type=int, default=None,
                        help="override the seed of the plan's base (a different pretrained base, cached apart)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/methods/results, or "
                                                    "results/<plan> with a plan flag such as --quick)")
    parser.add_argument("--cache-dir", default=None, help="where the pretrained base is cached")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--partial", default=None,
                        help="only run cells into this JSON file (resumable; split seeds across processes with "
                             "--seeds); combine files with --merge")
    parser.add_argument("--levels", type=float, nargs="+", default=None, help="noise levels to run, in order")
    source.add_argument("--merge", nargs="+", default=None, help="partial files to combine into the results")
    source.add_argument("--refresh", action="store_true",
                        help="recompute the comparisons, verdicts and files of the results in the output folder from "
                             "their own cells (after the report or the statistics changed; nothing is trained)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    plan = OTHER_PLANS[args.plan][0]() if args.plan else full_plan()
    if args.seeds:
        plan = dataclasses.replace(plan, seeds=tuple(args.seeds))
    if args.base_seed is not None:
        plan = dataclasses.replace(plan, base=dataclasses.replace(plan.base, seed=args.base_seed))
    out = args.out or os.path.join(HERE, "results", args.plan or "")
    if args.partial:
        run_cells(plan, args.partial, levels=tuple(args.levels) if args.levels else None, cache_dir=args.cache_dir)
        return 0
    if args.refresh:
        results = refresh(plan, out)
    elif args.merge:
        cells: dict[str, list[dict]] = {}
        states = []
        for path in args.merge:
            with open(path, encoding="utf-8") as handle:
                states.append(json.load(handle))
            for level, level_cells in states[-1]["cells"].items():
                cells.setdefault(level, []).extend(level_cells)
        seconds = max(s.get("finished", s["started"]) for s in states) - min(s["started"] for s in states)
        load_start = max((s["load_average_start"] for s in states), key=lambda load: load[0])
        load_end = max((s["load_average_end"] for s in states), key=lambda load: load[0])  # when the cells ended
        environment, planned = record(plan, cells, seconds=seconds, load_start=load_start, load_end=load_end,
                                      base_info=states[0]["base_info"])
        results = finish(plan, cells, out, environment=environment, plan_record=planned)
    else:
        results = run(plan, out, cache_dir=args.cache_dir)
    with open(os.path.join(out, "miniature.md"), encoding="utf-8") as handle:
        print(handle.read())
    print(f"{results['environment']['seconds']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
