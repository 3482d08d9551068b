"""Score a dataset end to end: streaming, batched, sharded, resumable, on one process or many.

:func:`score_dataset` runs a :class:`~xtf_kernels.methods.TokenScorer` over a dataset. Under ``torchrun``,
``accelerate launch`` or ``srun`` every rank runs the same call (see :mod:`~xtf_kernels.pipeline.distributed`);
shard i is samples [i * shard_size, (i + 1) * shard_size) whoever scores it, so the results are bit for bit
those of one process and a run resumes with any number of ranks.

1. lock: rank 0 creates ``.xtf-run.lock`` (:mod:`~xtf_kernels.pipeline.lock`); a second run is refused.
   Temporary files a killed writer left are removed; every rank checks it sees the lock (a shared folder).
2. dataset pass (no model forward): each rank reads, tokenises and digests the samples of the shards
   i = rank (mod world) in DataLoader workers and feeds them to the scorer; the scorer's additive statistics
   (XTF: token counts) are summed over the ranks, the digests and lengths gathered, so every rank fits the
   statistics of the whole dataset and knows its fingerprint.
3. resumption: shard files already on disk are validated (each rank a share; a shard carries its own
   checksum and fingerprints), the corrupt or foreign ones are scored again.
4. scoring pass: the missing shards are dealt out round-robin; each rank scores its shards in length-sorted
   batches under ``torch.no_grad`` and writes each shard atomically, under a name no other rank writes;
   no collective runs meanwhile. Only rank 0 writes the manifest (and state.safetensors).
5. finalisation: a pool-wide top k (Token Cleaning) is selected exactly over all shards, histograms summed
   across ranks (:mod:`~xtf_kernels.pipeline.topk`); the dropped and scored tokens are counted as a filter
   applies the masks (after the top k and the per-sample safeguards), summed across ranks and recorded
   (``drop_totals``); rank 0 marks the manifest complete, with tokens/s. Then every rank checks the total
   against the safeguards' global cap (``max_total_drop``), once: a warning on rank 0 or
   :class:`~xtf_kernels.errors.DropCapExceededError` on every rank, the same verdict as one process.

Memory is bounded by one shard of scores plus one batch of activations per rank. The models run in the
dtype they are in: load them in bfloat16 on a GPU (``xtf score`` does by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

import numpy as np
import torch

from ..datasets.samples import SampleSource
from ..datasets.samples import as_source
from ..errors import CorruptFileError
from ..errors import FingerprintMismatchError
from ..methods.base import TokenScorer
from ..methods.base import split_batch
from ..methods.safeguards import check_total_drop
from ..methods.safeguards import deferred_total_check
from ..methods.safeguards import drop_counts
from . import store
from . import topk
from .distributed import Group
from .distributed import join
from .fingerprint import FORMAT_VERSION
from .fingerprint import DataFingerprint
from .fingerprint import config_fingerprint
from .fingerprint import model_fingerprint
from .loader import dataset_pass_items
from .loader import default_workers
from .loader import scoring_batches
from .loader import shard_batches
from .lock import LOCK_FILE
from .lock import RunLock
from .lock import lock_run_id
from .progress import Meter
from .progress import summary
from .result import ScoreResult
from .result import final_flags
from .result import safeguards_of

log = logging.getLogger(__name__)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def score_dataset(
    scorer: TokenScorer,
    data,
    out_dir: str | os.PathLike,
    *,
    tokenizer=None,
    max_length: int | None = None,
    batch_size: int = 8,
    max_batch_tokens: int | None = None,
    shard_size: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
    source_info: dict | None = None,
    num_workers: int | None = None,
    break_lock: bool = False,
) -> ScoreResult:
    """Score every response token of ``data`` with ``scorer`` and write the results to ``out_dir``.

    Runs as is on one process, or on every rank of a torch.distributed job (torchrun, accelerate launch,
    srun: the process group is initialised from the environment if needed, gloo on CPU, NCCL on CUDA);
    each rank's ``scorer`` must hold the same models and config, on that rank's device.

    Args:
        scorer: e.g. :class:`~xtf_kernels.methods.XTFScorer` or :class:`~xtf_kernels.methods.TokenCleaningScorer`.
        data: tokenised samples in any form :func:`xtf_kernels.datasets.as_source` takes (a list, a
            ``datasets.Dataset`` or its save_to_disk folder / .parquet file, a JSONL path; prompt / response
            text needs ``tokenizer``). Every rank reads only its own samples from it.
        out_dir: results folder (created), on a filesystem every rank sees. If it holds results for the same
            data and config, the run resumes: valid shards are kept, missing or corrupt ones scored (or it
            returns at once if complete); for other data or config it raises FingerprintMismatchError unless
            ``overwrite``.
        max_length: truncate samples to this many tokens.
        batch_size / max_batch_tokens: samples per forward pass, and an optional cap on padded tokens.
        shard_size: samples per shard (the unit of work, of resumption and of memory); a resumed run keeps
            the folder's shard size.
        overwrite: discard results already in ``out_dir``.
        progress: tqdm progress bars (rank 0), with this rank's and all ranks' tokens/s.
        source_info: JSON-serialisable notes kept in the manifest (e.g. the data and model paths).
        num_workers: DataLoader workers per rank reading and batching samples (None: the rank's share of the
            CPU cores less one, at most 4; 0 reads in the main process).
        break_lock: take the folder's lock even if another run seems to hold it (see
            :mod:`~xtf_kernels.pipeline.lock`).

    Returns:
        the :class:`~xtf_kernels.pipeline.ScoreResult` of ``out_dir`` (on every rank).

    Raises:
        RunLockedError: another run is using ``out_dir``.
        FingerprintMismatchError: ``out_dir`` holds other results, or the ranks disagree on the data, the
            config or the models.
        DropCapExceededError: the scorer's safeguards say ``on_exceed="error"`` and the fraction of response
            tokens dropped over the whole dataset exceeds ``max_total_drop`` (raised after the results are
            complete on disk, so the report can show why; a rerun raises it again). With "warn", rank 0 warns.
    """
    if not isinstance(scorer, TokenScorer):
        raise TypeError(f"scorer must be a TokenScorer (e.g. XTFScorer), got {type(scorer).__name__}")
    _check_positive("batch_size", batch_size)
    _check_positive("shard_size", shard_size)
    if max_batch_tokens is not None:
        _check_positive("max_batch_tokens", max_batch_tokens)
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 0):
        raise ValueError(f"num_workers must be an int >= 0 or None, got {num_workers!r}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"out_dir {out_dir} exists and is not a folder")
    source = as_source(data, tokenizer, max_length=max_length)
    group = join(scorer.device)
    try:
        run = _Run(group, scorer, source, out_dir, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                   shard_size=shard_size, progress=progress, source_info=dict(source_info or {}),
                   workers=default_workers(_local_world_size(group)) if num_workers is None else num_workers)
        lock = RunLock(out_dir, world_size=group.world_size, break_lock=break_lock)
        with _terminate_as_exit():
            try:
                run_id = _on_main(group, lambda: _lock(out_dir, lock))
                _check_shared_folder(group, out_dir, run_id)
                return run.run(overwrite)
            finally:
                lock.release()
    finally:
        group.close()


def _local_world_size(group: Group) -> int:
    names = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE",
             "SLURM_NTASKS_PER_NODE")
    value = next((os.environ[name] for name in names if os.environ.get(name)), "")
    return int(value) if value.isdigit() else (group.world_size if group.distributed else 1)


def _lock(out_dir: str, lock: RunLock) -> str:
    os.makedirs(out_dir, exist_ok=True)
    run_id = lock.acquire().run_id
    _remove_temporaries(out_dir)
    return run_id


def _remove_temporaries(out_dir: str) -> None:
    """Temporary files a killed writer left (atomic writes of shards, manifest, state): with the lock held,
    no process is writing them."""
    ours = (store.MANIFEST, store.STATE_FILE)
    for name in os.listdir(out_dir):
        if name.startswith(".") and name.endswith(".tmp") and (name.startswith(".shard-")
                                                               or any(name.startswith(f".{o}.") for o in ours)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out_dir, name))


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (torchrun / SLURM stopping a job) raises SystemExit, so ``finally`` blocks remove the lock; a
    handler the program installed itself is left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _on_main(group: Group, fn):
    """``fn()`` on rank 0, its result (or the exception it raised, re-raised) on every rank."""
    outcome = None
    if group.is_main:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - handed to every rank, then raised there
            outcome = ("error", exc)
    outcome = group.broadcast_object(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


def _raise_if_any(group: Group, problem: str | None, error=FingerprintMismatchError) -> None:
    """Raise ``error`` on every rank if any rank found a problem (all ranks call this)."""
    problems = [p for p in group.all_gather_object(problem) if p]
    if problems:
        raise error(problems[0])


def _check_shared_folder(group: Group, out_dir: str, run_id: str) -> None:
    problem = None
    if group.distributed and lock_run_id(out_dir) != run_id:
        problem = (f"rank {group.rank} does not see the {LOCK_FILE} that rank 0 just created in {out_dir}: the "
                   "results folder must be on a filesystem every node shares (NFS, Lustre, GPFS, ...)")
    _raise_if_any(group, problem, ValueError)


class _Run:
    def __init__(self, group: Group, scorer: TokenScorer, source: SampleSource, out_dir: str, *, batch_size: int,
                 max_batch_tokens: int | None, shard_size: int, progress: bool, source_info: dict, workers: int):
        self.group, self.scorer, self.source, self.out_dir = group, scorer, source, out_dir
        self.batch_size, self.max_batch_tokens, self.shard_size = batch_size, max_batch_tokens, shard_size
        self.progress, self.source_info, self.workers = progress and group.is_main, source_info, workers

    # ---- plan -------------------------------------------------------------------------------------------

    def shard_range(self, index: int) -> range:
        return range(index * self.shard_size, min((index + 1) * self.shard_size, self.num_samples))

    def mine(self, indices: list[int]) -> list[int]:
        """This rank's share of ``indices`` (round-robin)."""
        return indices[self.group.rank::self.group.world_size]

    def run(self, overwrite: bool) -> ScoreResult:
        group = self.group
        previous = _on_main(group, lambda: _previous_manifest(self.out_dir, overwrite))
        if previous is not None:
            self.shard_size = previous["shard_size"]  # a resumed run keeps the folder's shards
        self.num_samples = len(self.source)
        _raise_if_any(group, _disagreement(group, "sample count", self.num_samples), ValueError)
        if self.num_samples == 0:
            raise ValueError("the dataset is empty")
        self.num_shards = -(-self.num_samples // self.shard_size)

        start = time.perf_counter()
        self.lengths, fingerprint = self.dataset_pass()
        pass_seconds = time.perf_counter() - start
        manifest = self.new_manifest(fingerprint)
        _on_main(group, lambda: _check_previous(self.out_dir, previous, manifest))
        done = self.validate_existing(manifest)
        if previous is not None and previous["complete"] and len(done) == self.num_shards:
            group.barrier()
            _check_total_drop(group, previous, previous.get("drop_totals") or self.drop_totals(previous))
            return ScoreResult(self.out_dir)
        manifest["shards"] = [done[i] for i in sorted(done)]
        _on_main(group, lambda: self.write_start(manifest))

        with deferred_total_check():  # checked once below, on the whole dataset's counts
            ranks = self.scoring_pass(manifest, [i for i in range(self.num_shards) if i not in done])
        gathered = group.all_gather_object(ranks)
        for entries, _ in gathered:
            done.update(entries)
        missing = sorted(set(range(self.num_shards)) - set(done))
        if missing:
            raise CorruptFileError(f"{self.out_dir}: shards {missing[:10]} were not written; run again to resume")
        manifest["shards"] = [done[i] for i in range(self.num_shards)]
        spec = self.scorer.global_topk
        if spec is not None:
            manifest["global_topk"] = topk.global_topk(group, self.topk_chunks(manifest, spec.score),
                                                       self.num_shards, spec)
        manifest["drop_totals"] = self.drop_totals(manifest)
        manifest["complete"] = True
        manifest["throughput"] = summary([record for _, record in gathered], pass_seconds)
        _on_main(group, lambda: store.write_manifest(self.out_dir, manifest))
        group.barrier()
        _check_total_drop(group, manifest, manifest["drop_totals"])
        return ScoreResult(self.out_dir)

    # ---- 2. dataset pass ----------------------------------------------------------------------------------

    def dataset_pass(self) -> tuple[np.ndarray, DataFingerprint]:
        """(every sample's length, the data fingerprint), the scorer fitted on the whole dataset."""
        group, scorer = self.group, self.scorer
        my_shards = self.mine(list(range(self.num_shards)))
        indices = [i for shard in my_shards for i in self.shard_range(shard)]
        if scorer.needs_dataset_pass:
            scorer.begin_dataset_pass()
        digests, lengths = bytearray(), np.zeros(len(indices), dtype=np.int64)
        items = dataset_pass_items(self.source, indices, self.workers)
        if self.progress:
            from tqdm.auto import tqdm

            world = f" (rank 0 of {group.world_size})" if group.distributed else ""
            items = tqdm(items, total=len(indices), desc=f"{scorer.name}: dataset pass{world}", unit="sample")
        for position, (_, sample, digest) in enumerate(items):
            if scorer.needs_dataset_pass:
                scorer.observe(sample)
            digests += digest
            lengths[position] = len(sample)
        if scorer.needs_dataset_pass:
            if group.distributed:
                statistics = scorer.dataset_statistics()
                scorer.load_dataset_statistics({name: group.all_reduce_sum(statistics[name])
                                                for name in sorted(statistics)})
            scorer.end_dataset_pass()
        all_lengths = np.zeros(self.num_samples, dtype=np.int64)
        all_digests: list[bytes] = [b""] * self.num_samples
        for rank_shards, rank_digests, rank_lengths in group.all_gather_object((my_shards, bytes(digests), lengths)):
            position = 0
            for shard in rank_shards:
                for i in self.shard_range(shard):
                    all_digests[i] = rank_digests[32 * position: 32 * (position + 1)]
                    all_lengths[i] = rank_lengths[position]
                    position += 1
        fingerprint = DataFingerprint()
        for digest, length in zip(all_digests, all_lengths.tolist()):
            fingerprint.update_digest(digest, length)
        return all_lengths, fingerprint

    def new_manifest(self, fingerprint: DataFingerprint) -> dict:
        scorer, group = self.scorer, self.group
        models = {role: model_fingerprint(model) for role, model in scorer.models().items()}
        config = config_fingerprint(scorer.config_dict(), models)
        _raise_if_any(group, _disagreement(group, "config and models (config fingerprint)", config))
        return {
            "format": store.MANIFEST_FORMAT, "version": FORMAT_VERSION, "method": scorer.name,
            "config": scorer.config_dict(), "rule_names": list(scorer.rule_names),
            "score_names": list(scorer.score_names), "data_fingerprint": fingerprint.hexdigest(),
            "config_fingerprint": config, "models": models, "num_samples": fingerprint.num_samples,
            "num_tokens": fingerprint.num_tokens, "shard_size": self.shard_size, "shards": [], "state": None,
            "global_topk": None, "complete": False, "source": self.source_info, "throughput": None,
        }

    # ---- 3. resumption --------------------------------------------------------------------------------------

    def shard_metadata(self, manifest: dict, index: int) -> dict[str, str]:
        return {"format": "xtf-score-shard", "index": str(index), "first_sample": str(index * self.shard_size),
                "shard_size": str(self.shard_size), "data_fingerprint": manifest["data_fingerprint"],
                "config_fingerprint": manifest["config_fingerprint"]}

    def validate_existing(self, manifest: dict) -> dict[int, dict]:
        """Shard index -> manifest entry of every valid shard already on disk (each rank checks a share)."""
        found = {}
        for index in self.mine(list(range(self.num_shards))):
            path = os.path.join(self.out_dir, store.shard_name(index))
            if not os.path.exists(path):
                continue
            lengths = self.lengths[self.shard_range(index).start: self.shard_range(index).stop].tolist()
            try:
                found[index] = store.check_found_shard(path, self.shard_metadata(manifest, index), lengths,
                                                       list(self.scorer.score_names))
            except CorruptFileError as exc:
                log.warning("%s; scoring shard %d again", exc, index)
        done = {}
        for part in self.group.all_gather_object(found):
            done.update(part)
        return done

    def write_start(self, manifest: dict) -> None:
        state = self.scorer.state_tensors()
        if state:
            sha = store.write_tensors(os.path.join(self.out_dir, store.STATE_FILE), state, {"format": "xtf-state"})
            manifest["state"] = {"file": store.STATE_FILE, "sha256": sha}
        store.write_manifest(self.out_dir, manifest)

    # ---- 4. scoring pass ----------------------------------------------------------------------------------

    def scoring_pass(self, manifest: dict, pending: list[int]) -> tuple[dict[int, dict], dict]:
        """Score this rank's share of ``pending``; (its shard entries, its throughput record)."""
        scorer, group = self.scorer, self.group
        my_shards = self.mine(pending)
        plan: list[list[int]] = []
        batches_left: dict[int, int] = {}
        for shard in my_shards:
            batches = shard_batches(self.shard_range(shard), self.lengths, self.batch_size, self.max_batch_tokens)
            plan.extend(batches)
            batches_left[shard] = len(batches)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            done = sum(s["num_samples"] for s in manifest["shards"])
            bar = tqdm(desc=f"{scorer.name}: scoring", unit="sample", total=self.num_samples, initial=done)
        meter = Meter(self.out_dir, {s: len(self.shard_range(s)) for s in pending},
                      {s: int(self.lengths[self.shard_range(s).start: self.shard_range(s).stop].sum())
                       for s in pending},
                      {s: position % group.world_size for position, s in enumerate(pending)}, bar)
        device = scorer.device
        results: dict[int, object] = {}
        entries: dict[int, dict] = {}
        with torch.no_grad():
            for indices, batch in scoring_batches(self.source, plan, scorer.pad_token_id, self.workers,
                                                  pin_memory=device.type == "cuda"):
                batch = batch.to(device, non_blocking=True)
                for i, result in zip(indices, split_batch(scorer.score_batch(batch), batch.lengths, scorer.rule_names)):
                    results[i] = result
                meter.add(len(indices), int(self.lengths[indices].sum()))
                shard = indices[0] // self.shard_size
                batches_left[shard] -= 1
                if batches_left[shard] == 0:
                    per_sample = [results.pop(i) for i in self.shard_range(shard)]
                    entries[shard] = self.write_shard(manifest, shard, per_sample)
                    meter.shard_done(shard)
                    if group.is_main:  # progress visible in the manifest: rank 0's own shards
                        manifest["shards"] = sorted([*manifest["shards"], entries[shard]],
                                                    key=lambda e: e["first_sample"])
                        store.write_manifest(self.out_dir, manifest)
        meter.close()
        return entries, meter.record(group.rank, device)

    def write_shard(self, manifest: dict, index: int, per_sample: list) -> dict:
        names = self.scorer.score_names
        tensors = store.shard_tensors(len(per_sample), [r.dropped_by.numel() for r in per_sample],
                                      [r.dropped_by for r in per_sample],
                                      {name: [r.scores[name] for r in per_sample] for name in names})
        name = store.shard_name(index)
        sha = store.write_shard(os.path.join(self.out_dir, name), tensors, self.shard_metadata(manifest, index))
        return {"file": name, "first_sample": index * self.shard_size, "num_samples": len(per_sample),
                "num_tokens": int(tensors["lengths"].sum()), "sha256": sha}

    # ---- 5. finalisation ------------------------------------------------------------------------------------

    def topk_chunks(self, manifest: dict, score: str):
        entries = manifest["shards"]
        mine = self.mine(list(range(self.num_shards)))

        def chunks():
            for index in mine:
                path = os.path.join(self.out_dir, entries[index]["file"])
                yield index, store.read_tensors(path, entries[index]["sha256"])[f"score/{score}"]

        return chunks


    def drop_totals(self, manifest: dict) -> dict:
        """{"dropped", "scored"}: response tokens over every shard, the masks as a filter applies them (pool-wide
        top k and per-sample safeguards included); each rank counts a share of the shards, summed."""
        counts = torch.zeros(2, dtype=torch.int64)
        names = manifest["score_names"]
        for index in self.mine(list(range(self.num_shards))):
            entry = manifest["shards"][index]
            tensors = store.read_tensors(os.path.join(self.out_dir, entry["file"]), entry["sha256"])
            flags, scores = final_flags(manifest, index, tensors["lengths"],
                                        {name: tensors[f"score/{name}"] for name in names}, tensors["dropped_by"])
            counts += torch.tensor(drop_counts(scores, flags), dtype=torch.int64)
        dropped, scored = self.group.all_reduce_sum(counts).tolist()
        return {"dropped": dropped, "scored": scored}


def _check_total_drop(group: Group, manifest: dict, totals: dict) -> None:
    """The safeguards' global cap on the whole dataset's counts, once per run: every rank holds the same totals,
    so with "error" every rank raises the same DropCapExceededError; with "warn" only rank 0 warns."""
    safeguards = safeguards_of(manifest)
    if safeguards is None or not (group.is_main or safeguards.on_exceed == "error"):
        return
    check_total_drop(totals["dropped"], totals["scored"], safeguards,
                     what=f"{manifest['method']} over the whole dataset ({manifest['num_samples']} samples)")


def _disagreement(group: Group, what: str, value) -> str | None:
    values = group.all_gather_object(value)
    if any(v != values[0] for v in values):
        return (f"the ranks disagree on the {what}: rank 0 has {str(values[0])[:16]}, rank "
                f"{next(r for r, v in enumerate(values) if v != values[0])} has "
                f"{str(next(v for v in values if v != values[0]))[:16]}; every rank must read the same data with "
                "the same models and settings")
    return None


def _previous_manifest(out_dir: str, overwrite: bool) -> dict | None:
    """The folder's manifest (None if there is none, if ``overwrite`` (its results are removed) or if it is
    unreadable: the shards, which validate themselves, are then kept or scored again one by one)."""
    if not os.path.exists(os.path.join(out_dir, store.MANIFEST)):
        return None
    if overwrite:
        _remove_results(out_dir)
        return None
    try:
        return store.read_manifest(out_dir)
    except CorruptFileError as exc:
        if "format version" in str(exc):
            raise FingerprintMismatchError(f"{exc}") from None
        log.warning("%s; rebuilding it from the shards on disk", exc)
        return None


def _check_previous(out_dir: str, previous: dict | None, manifest: dict) -> None:
    if previous is None:
        return
    for key, what in (("data_fingerprint", "data"), ("config_fingerprint", "config or models")):
        if previous[key] != manifest[key]:
            raise FingerprintMismatchError(
                f"{out_dir} holds results for different {what} ({key} {previous[key][:12]} != "
                f"{manifest[key][:12]}); use another folder or overwrite=True (`xtf score --overwrite`)"
            )


def _remove_results(out_dir: str) -> None:
    for name in os.listdir(out_dir):
        if name == store.MANIFEST or name == store.STATE_FILE or (name.startswith("shard-")
                                                                 and name.endswith(".safetensors")):
            os.unlink(os.path.join(out_dir, name))
