"""rank_fidelity: sets ordered by known distance to the real set, table and dict forms, named errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xtf_kernels.fidelity import rank_fidelity

from .reference import tv_equal_covariance


def synthetic_sets(rng, shifts, n=1500, dim=3):
    return {f"shift_{s}": rng.normal(size=(n, dim)) + np.array([s, 0.0, 0.0]) for s in shifts}


def test_ranking_follows_the_known_order_of_distances():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 3))
    shifts = [2.0, 0.0, 1.0, 0.5, 3.0]  # given out of order
    ranking = rank_fidelity(real, synthetic_sets(rng, shifts), seed=1)
    assert ranking.names == ["shift_0.0", "shift_0.5", "shift_1.0", "shift_2.0", "shift_3.0"]
    assert [entry.rank for entry in ranking] == [1, 2, 3, 4, 5]
    for entry in ranking:
        shift = float(entry.name.split("_")[1])
        assert abs(entry.estimate.tv - tv_equal_covariance(shift)) < 0.07, entry


def test_table_and_dict_carry_every_set_with_its_interval():
    rng = np.random.default_rng(1)
    ranking = rank_fidelity(rng.normal(size=(300, 3)), synthetic_sets(rng, [1.5, 0.0], n=300), classifier="quadratic")
    table = ranking.table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["rank", "synthetic", "set"]
    assert lines[1].split()[:2] == ["1", "shift_0.0"] and lines[2].split()[:2] == ["2", "shift_1.5"]
    best = ranking.entries[0].estimate
    assert f"[{best.lower:.3f}, {best.upper:.3f}]" in lines[1]
    assert "lower bound" in lines[-1]
    report = json.loads(json.dumps(ranking.to_dict()))
    assert [row["name"] for row in report["ranking"]] == ranking.names
    assert report["ranking"][1]["classifier"] == "quadratic" and "lower bound" in report["note"]


def test_every_set_is_compared_with_the_same_seed_and_options():
    rng = np.random.default_rng(2)
    real, other = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    ranking = rank_fidelity(real, {"a": other, "b": other.copy()}, seed=9, test_fraction=0.4)
    first, second = (entry.estimate for entry in ranking)
    assert first.to_dict() == second.to_dict() and first.seed == 9 and first.n_test == 80


@pytest.mark.parametrize(
    "real, synthetic, error, match",
    [
        (np.zeros((100, 2)), {}, TypeError, "non-empty mapping"),
        (np.zeros((100, 2)), [np.zeros((100, 2))], TypeError, "non-empty mapping"),
        (np.zeros((100, 2)), {1: np.zeros((100, 2))}, TypeError, "names must be strings"),
        (np.zeros((100, 2)), {"ok": np.zeros((100, 2)), "wide": np.zeros((100, 3))}, ValueError,
         r"real is \(100, 2\), synthetic set 'wide' is \(100, 3\)"),
        (np.zeros((100, 2)), {"few": np.zeros((12, 2))}, ValueError, r"comparing synthetic set 'few'.*too few"),
        (np.full((100, 2), np.nan), {"a": np.zeros((100, 2))}, ValueError, "real has 100 row"),
        (np.zeros((100, 2)), {"bad": np.full((100, 2), np.inf)}, ValueError, "synthetic set 'bad' has 100 row"),
    ],
)
def test_errors_name_the_set(real, synthetic, error, match):
    with pytest.raises(error, match=match):
        rank_fidelity(real, synthetic)
