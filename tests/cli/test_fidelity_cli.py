"""`xtf fidelity`: the ranking from embeddings files and from JSONL text, JSON output, one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from xtf_kernels.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny fits: a second thread only adds synchronisation
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def embedding_files(tmp_path):
    """real.npy and three synthetic sets at mean shifts 0, 0.8 and 2.5 in three formats."""
    rng = np.random.default_rng(0)
    real = tmp_path / "real.npy"
    np.save(real, rng.normal(size=(800, 4)).astype(np.float32))
    shifted = {shift: (rng.normal(size=(700, 4)) + shift).astype(np.float32) for shift in (0.0, 0.8, 2.5)}
    far, near, same = tmp_path / "far.pt", tmp_path / "near.safetensors", tmp_path / "same.npy"
    torch.save(torch.from_numpy(shifted[2.5]), far)
    save_file({"embeddings": torch.from_numpy(shifted[0.8])}, near)
    np.save(same, shifted[0.0])
    return real, far, near, same


def test_table_ranks_sets_by_distance(embedding_files, capsys):
    real, far, near, same = embedding_files
    assert main(["fidelity", str(real), str(far), str(near), str(same)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"real set: {real} (800 rows, 4 features)")
    ranked = [line.split()[1] for line in out[2:5]]
    assert ranked == [str(same), str(near), str(far)]
    assert "lower bound" in out[-1]


def test_json_output_with_options(embedding_files, capsys):
    real, far, near, _ = embedding_files
    argv = ["fidelity", str(real), str(near), str(far), "--json", "--classifier", "max", "--seed", "3",
            "--test-fraction", "0.25", "--max-samples", "400"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["real"] == str(real) and report["classifier"] == "max" and "lower bound" in report["note"]
    rows = report["ranking"]
    assert [row["name"] for row in rows] == [str(near), str(far)]
    assert all(row["seed"] == 3 and row["n_test"] == 100 and set(row["validation_tv"]) == {"linear", "quadratic",
                                                                                           "mlp"} for row in rows)
    assert rows[0]["lower"] <= rows[0]["tv"] <= rows[0]["upper"]


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: text, "id": i}) + "\n" for i, text in enumerate(texts)))
    return path


def test_jsonl_text_is_embedded_with_a_local_model(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.fidelity.tiny_text_encoder import WORDS
    from tests.fidelity.tiny_text_encoder import save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    capsys.readouterr()  # what importing transformers' optional integrations printed is not the command's output
    rng = np.random.default_rng(1)
    sentences = lambda pool, n: [" ".join(rng.choice(pool, size=rng.integers(3, 9))) for _ in range(n)]
    real = write_jsonl(tmp_path / "real.jsonl", sentences(WORDS, 200), field="body")
    same = write_jsonl(tmp_path / "same.jsonl", sentences(WORDS, 200), field="body")
    narrow = write_jsonl(tmp_path / "narrow.jsonl", sentences(WORDS[:3], 200), field="body")
    argv = ["fidelity", str(real), str(narrow), str(same), "--model", str(model), "--text-field", "body",
            "--classifier", "quadratic", "--json", "--batch-size", "32"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["ranking"]
    assert [row["name"] for row in rows] == [str(same), str(narrow)]
    assert rows[1]["tv"] > 0.8  # three-word vocabulary against fifteen: easy to tell apart


@pytest.mark.parametrize(
    "make_argv, match",
    [
        (lambda d, f: ["fidelity", str(f[0]), str(d / "missing.npy")], "missing.npy' does not exist"),
        (lambda d, f: ["fidelity", str(f[0]), str(f[1]), str(f[1])], "repeated"),
        (lambda d, f: ["fidelity", str(f[0]), str(d / "x.csv")], "unsupported file type .csv"),
        (lambda d, f: ["fidelity", str(f[0]), str(d / "t.jsonl")], "mix embeddings files and JSONL text"),
        (lambda d, f: ["fidelity", str(d / "t.jsonl"), str(d / "t2.jsonl")], "need --model PATH"),
        (lambda d, f: ["fidelity", str(d / "t.jsonl"), str(d / "t2.jsonl"), "--model", str(d)],
         "cannot load a transformers model from"),
        (lambda d, f: ["fidelity", str(d / "t.jsonl"), str(d / "t2.jsonl"), "--model", str(d / "nope")],
         "model path .* does not exist"),
        (lambda d, f: ["fidelity", str(f[0]), str(f[1]), "--model", str(d)], "apply to JSONL text inputs only"),
        (lambda d, f: ["fidelity", str(f[0]), str(f[1]), "--device", "banana"], "not a torch device"),
        (lambda d, f: ["fidelity", str(f[0]), str(f[1]), "--test-fraction", "1.5"], "test_fraction"),
        (lambda d, f: ["fidelity", str(f[0]), str(d / "wide.npy")], "same number of features"),
    ],
)
def test_errors_are_one_line_with_status_2(tmp_path, embedding_files, capsys, make_argv, match):
    write_jsonl(tmp_path / "t.jsonl", ["the cat"] * 50)
    write_jsonl(tmp_path / "t2.jsonl", ["a dog"] * 50)
    np.save(tmp_path / "wide.npy", np.zeros((100, 7), dtype=np.float32))
    assert main(make_argv(tmp_path, embedding_files)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xtf fidelity: error:"), err
    assert re.search(match, err), err


def test_bad_option_values_are_argparse_errors(embedding_files, capsys):
    real, far, _, _ = embedding_files
    with pytest.raises(SystemExit) as exit_info:
        main(["fidelity", str(real), str(far), "--classifier", "svm"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'svm'" in capsys.readouterr().err
