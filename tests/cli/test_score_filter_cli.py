"""`xtf score` / `xtf filter` end to end on a tiny saved model, and their one-line error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.cli.model_folders import save_base_and_ref
from tests.methods import tiny
from xtf_kernels.cli import main
from xtf_kernels.pipeline import ScoreResult

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    dataset = tiny.data(10)
    save_base_and_ref(root, dataset)
    dataset.to_jsonl(root / "data.jsonl", tokenised=False)
    return root, dataset


def _score_in_one_thread(argv: list[str]) -> None:
    """``xtf`` ``argv`` in this process with one torch thread, as each launched rank runs (equal results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def test_score_then_filter_xtf(workspace, capsys):
    root, dataset = workspace
    out = root / "xtf"
    status = main(["score", str(root / "data.jsonl"), "--model", str(root / "base"), "--out", str(out),
                   "--shard-size", "4", "--no-progress", "--report-samples", "3"])
    printed = capsys.readouterr().out
    assert status == 0 and "response tokens scored" in printed and "TR" in printed
    assert {"manifest.json", "report.html", "report.json", "histograms.png"} <= set(os.listdir(out))

    status = main(["filter", str(root / "data.jsonl"), "--scores", str(out), "--out", str(root / "f.jsonl")])
    assert status == 0 and "wrote 10 samples" in capsys.readouterr().out
    rows = [json.loads(line) for line in (root / "f.jsonl").read_text().splitlines()]
    assert [r["input_ids"] for r in rows] == [s.input_ids.tolist() for s in dataset.samples]
    report = json.loads((out / "report.json").read_text())
    dropped = sum(sum(1 for a, b in zip(r["labels"], s.labels.tolist()) if a == -100 and b != -100)
                  for r, s in zip(rows, dataset.samples))
    assert dropped == report["statistics"]["dropped_tokens"]


def test_score_then_filter_token_cleaning_to_safetensors(workspace, capsys):
    root, _ = workspace
    out = root / "tc"
    assert main(["score", str(root / "data.jsonl"), "--model", str(root / "base"), "--method", "token-cleaning",
                 "--ref", str(root / "ref"), "--k", "0.5", "--out", str(out), "--no-progress", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["filter", str(root / "data.jsonl"), "--scores", str(out), "--out", str(root / "tc.safetensors")]) == 0
    from safetensors.torch import load_file

    tensors = load_file(str(root / "tc.safetensors"))
    manifest = json.loads((out / "manifest.json").read_text())
    labelled = int((tensors["labels"] != -100).sum())
    result = ScoreResult(out)
    protected = sum(int((shard.scores["guard"] == 1).sum()) for shard in result.shards())
    assert labelled == manifest["global_topk"]["keep"] + protected  # ranked top k and protected keep their label
    assert tensors["offsets"].shape == (11,)


def test_filter_refuses_other_data(workspace, capsys):
    root, _ = workspace
    out = root / "xtf-other"
    main(["score", str(root / "data.jsonl"), "--model", str(root / "base"), "--out", str(out), "--no-progress",
          "--no-report"])
    other = root / "other.jsonl"
    lines = (root / "data.jsonl").read_text().splitlines()
    other.write_text("\n".join(lines[:-1]) + "\n")
    capsys.readouterr()
    assert main(["filter", str(other), "--scores", str(out), "--out", str(root / "x.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "not the data scored" in error and "Traceback" not in error and error.count("\n") == 1


@pytest.mark.parametrize("case", ["missing-data", "missing-model", "not-causal", "no-ref", "bad-scores"])
def test_one_line_errors(workspace, tmp_path, capsys, case):
    root, _ = workspace
    data, base = str(root / "data.jsonl"), str(root / "base")
    if case == "not-causal":
        transformers = pytest.importorskip("transformers")
        config = transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=8, image_size=8, patch_size=4)
        config.save_pretrained(tmp_path / "vit")
    argv = {
        "missing-data": ["score", str(tmp_path / "nope.jsonl"), "--model", base, "--out", str(tmp_path / "o")],
        "missing-model": ["score", data, "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        "not-causal": ["score", data, "--model", str(tmp_path / "vit"), "--out", str(tmp_path / "o")],
        "no-ref": ["score", data, "--model", base, "--method", "token-cleaning", "--out", str(tmp_path / "o")],
        "bad-scores": ["filter", data, "--scores", str(tmp_path), "--out", str(tmp_path / "f.jsonl")],
    }[case]
    expected = {"missing-data": "not found", "missing-model": "does not exist", "not-causal": "not a causal LM",
                "no-ref": "needs --ref", "bad-scores": "no scoring results"}[case]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error and error.count("\n") == 1


@pytest.mark.parametrize(("command", "option"), [("score", "--kn-pcp-max"), ("filter", "--scores")])
def test_help_in_a_subprocess(command, option):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-m", "xtf_kernels", command, "--help"], capture_output=True, text=True,
                          timeout=120, cwd=root)
    assert done.returncode == 0 and option in done.stdout and "Example" in done.stdout


def test_filter_to_a_dataset_then_score_that_dataset(workspace, capsys):
    datasets = pytest.importorskip("datasets")
    root, dataset = workspace
    scores, filtered = root / "xtf-ds", root / "filtered-ds"
    assert main(["score", str(root / "data.jsonl"), "--model", str(root / "base"), "--out", str(scores),
                 "--no-progress", "--no-report", "--num-workers", "0"]) == 0
    assert main(["filter", str(root / "data.jsonl"), "--scores", str(scores), "--out", str(filtered),
                 "--format", "dataset"]) == 0
    loaded = datasets.load_from_disk(str(filtered))
    assert loaded.num_rows == 10 and {"completion_mask", "token_weights", "dropped_by", "score_kn"} <= set(
        loaded.column_names)
    assert json.loads(loaded.info.description)["rule_names"] == {"0": "RI", "1": "KN", "2": "TR"}
    capsys.readouterr()
    assert main(["score", str(filtered), "--model", str(root / "base"), "--out", str(root / "rescored"),
                 "--no-progress", "--no-report", "--num-workers", "0"]) == 0  # a datasets folder as input
    assert "10 samples" in capsys.readouterr().out


def test_score_under_torchrun_matches_one_process(workspace, tmp_path):
    import torch

    from xtf_kernels.pipeline import ScoreResult

    root, _ = workspace
    argv = ["score", str(root / "data.jsonl"), "--model", str(root / "base"), "--method", "token-cleaning",
            "--ref", str(root / "ref"), "--k", "0.4", "--shard-size", "3", "--batch-size", "2", "--no-progress",
            "--no-report", "--num-workers", "0", "--device", "cpu"]
    _score_in_one_thread([*argv, "--out", str(tmp_path / "one")])  # as each rank / process below
    port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                           "print(s.getsockname()[1])"], capture_output=True, text=True).stdout.strip()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                           "127.0.0.1", "--master-port", port, "-m", "xtf_kernels", *argv, "--out",
                           str(tmp_path / "two")], capture_output=True, text=True, timeout=240, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 rank(s)" in done.stdout and done.stdout.count("response tokens scored") == 1  # rank 0 prints
    one, two = ScoreResult(tmp_path / "one"), ScoreResult(tmp_path / "two")
    assert two.manifest["throughput"]["world_size"] == 2
    for a, b in zip(one.iter_samples(), two.iter_samples(), strict=True):
        assert torch.equal(a.dropped_by, b.dropped_by)
        torch.testing.assert_close(a.scores["influence"], b.scores["influence"], rtol=0, atol=0, equal_nan=True)


def _score_parser():
    from xtf_kernels.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return subparsers.choices["score"]


def test_every_score_option_shows_its_default_read_from_the_configs():
    from xtf_kernels.cli import score
    from xtf_kernels.methods import TokenCleaningConfig
    from xtf_kernels.methods import XTFConfig

    actions = {a.dest: a for a in _score_parser()._actions}
    for action in actions.values():
        if action.option_strings and not action.required and action.nargs != 0 and action.dest != "help":
            assert "default" in action.help, action.option_strings
    for field in score.XTF_FIELDS:
        help_text = " ".join(actions[field].help.split())
        safe, paper = score._shown(getattr(XTFConfig(), field)), score._shown(getattr(XTFConfig.paper(), field))
        assert (f"default {safe}" in help_text) if safe == paper else (f"{safe} (safe) / {paper} (paper)" in help_text)
    assert "default 0.6" in actions["k"].help and TokenCleaningConfig().k == 0.6
    assert "xtf 0.4 (safe) / none (paper), token-cleaning none" in " ".join(actions["max_sample_drop"].help.split())


def test_presets_protected_tokens_caps_and_rate_modes(workspace, capsys):
    root, dataset = workspace
    common = [str(root / "data.jsonl"), "--model", str(root / "base"), "--no-progress", "--no-report",
              "--num-workers", "0"]
    assert main(["score", *common, "--preset", "paper", "--out", str(root / "paper")]) == 0
    assert "(paper preset)" in capsys.readouterr().out
    paper = ScoreResult(root / "paper").config
    assert paper["ri_score"] == "mean" and paper["kn_anchor_fraction"] == 0.0
    assert paper["safeguards"]["max_sample_drop"] is None and paper["protected_ids_resolved"] == []

    equals, digit = 52, 9  # "=" and "5" in the arithmetic tokenizer
    assert main(["score", *common, "--out", str(root / "guarded"), "--protect", "=", "--protect", str(digit),
                 "--max-sample-drop", "0.2", "--kn-drop-rate", "0.3", "--ri-score", "relative"]) == 0
    result = ScoreResult(root / "guarded")
    config = result.config
    assert config["kn_threshold"] == "rate" and config["kn_drop_rate"] == 0.3 and config["ri_score"] == "relative"
    assert config["safeguards"]["max_sample_drop"] == 0.2 and config["safeguards"]["protected_tokens"] == ["="]
    assert set(config["protected_ids_resolved"]) == {0, 1, 2, 3, equals, digit}  # + the tokenizer's specials
    guarded = 0
    for sample, scored in zip(dataset.samples, result.iter_samples(), strict=True):
        protected = torch.isin(sample.input_ids, torch.tensor([equals, digit, 2]))
        valid = ~torch.isnan(scored.scores["guard"])
        assert not bool((scored.dropped & protected).any())
        assert bool((scored.scores["guard"][protected & valid] == 1).all())
        assert int(scored.dropped.sum()) <= int(0.2 * int(valid.sum()))  # floor(0.2 n) per sample
        guarded += int((protected & valid).sum())
    assert guarded > 10  # the protection was exercised


def test_pretokenised_data_needs_no_tokenizer(workspace, tmp_path, capsys):
    root, dataset = workspace
    bare = tmp_path / "bare"
    tiny.model("llama", num_layers=2).save_pretrained(bare)  # weights only, no tokenizer files
    dataset.to_jsonl(tmp_path / "tokens.jsonl", tokenised=True)
    for extra in ([], ["--no-report"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["score", str(tmp_path / "tokens.jsonl"), "--model", str(bare), "--out", str(out),
                     "--no-progress", "--num-workers", "0", *extra]) == 0
        captured = capsys.readouterr()
        assert "response tokens scored" in captured.out and "only the model's end-of-sequence ids" in captured.err
        result = ScoreResult(out)
        assert result.config["protected_ids_resolved"] == [2] and result.manifest["source"]["tokenizer"] is None
    assert (tmp_path / "out0" / "report.html").exists()
    assert main(["filter", str(tmp_path / "tokens.jsonl"), "--scores", str(tmp_path / "out1"), "--out",
                 str(tmp_path / "f.jsonl")]) == 0
    for argv, expected in (
        ([str(root / "data.jsonl")], "holds no tokenizer; give --tokenizer"),
        ([str(tmp_path / "tokens.jsonl"), "--protect", "="], "--protect '=' is text and needs a tokenizer"),
    ):
        capsys.readouterr()
        assert main(["score", *argv, "--model", str(bare), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert expected in error and error.count("\n") == 1


@pytest.mark.parametrize(("extra", "expected"), [
    (["--max-sample-drop", "1.5"], "argument --max-sample-drop: expected a number in [0, 1] or none"),
    (["--max-total-drop", "x"], "argument --max-total-drop"),
    (["--ri-drop-rate", "-0.1"], "argument --ri-drop-rate"),
    (["--protect", ""], "argument --protect"),
    (["--rules", "RI,XX"], "argument --rules"),
    (["--batch-size", "0"], "argument --batch-size"),
    (["--on-exceed", "maybe"], "argument --on-exceed"),
    (["--preset", "fast"], "argument --preset"),
    (["--ri-drop-rate", "0.1", "--ri-threshold", "fence"],
     "--ri-drop-rate is only read with --ri-threshold='rate', but --ri-threshold is 'fence'"),
    (["--kn-pcp-max", "0.9", "--kn-threshold", "rate"],
     "--kn-pcp-max is only read with --kn-threshold='absolute', but --kn-threshold is 'rate'"),
    (["--k", "0.5"], "--k is only used with --method token-cleaning"),
    (["--otsu-classes", "4", "--otsu-bins", "3"], "--otsu-bins (3) must be >= --otsu-classes (4)"),
    (["--tr-noisy-classes", "5"], "--tr-noisy-classes must be"),
])
def test_bad_score_options_are_one_line_errors_naming_the_flag(workspace, tmp_path, capsys, extra, expected):
    root, _ = workspace
    argv = ["score", str(root / "data.jsonl"), "--model", str(root / "base"), "--out", str(tmp_path / "o"), *extra]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own checks exit at parse time
        status = exc.code
    assert status == 2
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error and error.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before anything was loaded or written


def test_global_drop_cap_error_exits_after_the_report(workspace, tmp_path, capsys):
    root, _ = workspace
    out = tmp_path / "capped"
    status = main(["score", str(root / "data.jsonl"), "--model", str(root / "base"), "--out", str(out),
                   "--no-progress", "--num-workers", "0", "--max-total-drop", "0.01", "--on-exceed", "error",
                   "--report-samples", "2"])
    error = capsys.readouterr().err
    assert status == 1 and "over the whole dataset" in error and "--max-total-drop" in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert (out / "report.html").exists() and ScoreResult(out).complete  # kept for inspection


def _accelerate(launch: list[str], argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    """``accelerate launch LAUNCH -m xtf_kernels ARGV`` with no accelerate config of the machine's own (HF_HOME
    points into tmp_path), one thread per process, a free port."""
    from tests.integrations.distributed import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1", "--mixed_precision",
               "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port",
               str(free_port()), "-m", "xtf_kernels", *argv]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=root)


def test_score_under_accelerate_launch_on_cpus_matches_one_process(workspace, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` starts 2 processes through torchrun even without a GPU;
    they join a gloo group and score XTF (dataset statistics all-reduced) bit for bit as one process."""
    pytest.importorskip("accelerate")
    root, _ = workspace
    argv = ["score", str(root / "data.jsonl"), "--model", str(root / "base"), "--shard-size", "3", "--batch-size",
            "2", "--no-progress", "--no-report", "--num-workers", "0", "--device", "cpu"]
    _score_in_one_thread([*argv, "--out", str(tmp_path / "one")])  # as each rank / process below
    two = _accelerate(["--multi_gpu", "--num_processes", "2"], [*argv, "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 rank(s)" in two.stdout and two.stdout.count("response tokens scored") == 1  # rank 0 prints
    one, other = ScoreResult(tmp_path / "one"), ScoreResult(tmp_path / "two")
    assert other.manifest["throughput"]["world_size"] == 2
    assert torch.equal(other.state()["token_counts"], one.state()["token_counts"])
    for a, b in zip(one.iter_samples(), other.iter_samples(), strict=True):
        assert torch.equal(a.dropped_by, b.dropped_by)
        for name in a.scores:
            torch.testing.assert_close(a.scores[name], b.scores[name], rtol=0, atol=0, equal_nan=True)


def test_accelerate_cpu_flag_starts_one_process(workspace, tmp_path):
    """Why an earlier try scored on one process: accelerate 1.15 sends ``--cpu`` to its simple launcher, which
    runs the command once (several CPU processes only under mpirun, with a hostfile). That one process scores
    everything alone, correctly; if a later accelerate starts 2 here, this test says so."""
    pytest.importorskip("accelerate")
    root, _ = workspace
    done = _accelerate(["--cpu", "--num_processes", "2"], ["score", str(root / "data.jsonl"), "--model",
                                                          str(root / "base"), "--no-progress", "--no-report",
                                                          "--num-workers", "0", "--out", str(tmp_path / "cpu")],
                       tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("response tokens scored") == 1 and "on 1 rank(s)" in done.stdout
    assert ScoreResult(tmp_path / "cpu").manifest["throughput"]["world_size"] == 1


def test_protect_reads_ids_and_text_and_presets_take_overrides():
    from xtf_kernels.cli.score import build_config

    parser = _score_parser()
    base = ["data.jsonl", "--model", "m", "--out", "o"]
    config = build_config(parser.parse_args([*base, "--protect", "7", "--protect", "text:7", "--protect", " = ",
                                             "--preset", "paper", "--max-total-drop", "0.5", "--ri-score", "sum"]))
    assert config.safeguards.protected_ids == (7,) and config.safeguards.protected_tokens == ("7", " = ")
    assert config.safeguards.max_total_drop == 0.5 and config.safeguards.max_sample_drop is None  # paper's
    assert config.ri_score == "sum" and config.kn_anchor_fraction == 0.0
    config = build_config(parser.parse_args([*base, "--method", "token-cleaning", "--max-sample-drop", "none",
                                             "--no-protect-special", "--k", "0.7", "--scope", "sample"]))
    assert (config.k, config.scope, config.safeguards.protect_special_tokens) == (0.7, "sample", False)


@pytest.mark.parametrize(("flags", "mode", "value"), [
    (["--kn-pcp-max", "0.9"], "kn_threshold", "absolute"), (["--ri-fence-c", "1.5"], "ri_threshold", "fence"),
    (["--otsu-bins", "64"], "tr_threshold", "otsu"), (["--tr-drop-rate", "0.02"], "tr_threshold", "rate"),
])
def test_a_threshold_knob_given_alone_selects_its_mode(flags, mode, value):
    from xtf_kernels.cli.score import build_config
    from xtf_kernels.methods import XTFConfig

    base = ["data.jsonl", "--model", "m", "--out", "o"]
    safe = build_config(_score_parser().parse_args([*base, *flags]))
    assert getattr(safe, mode) == value
    others = {f: getattr(XTFConfig(), f) for f in ("ri_threshold", "kn_threshold", "tr_threshold") if f != mode}
    assert all(getattr(safe, f) == v for f, v in others.items())  # the other rules keep the preset's modes
    paper = build_config(_score_parser().parse_args([*base, *flags, "--preset", "paper"]))
    assert getattr(paper, mode) == value
