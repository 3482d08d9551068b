"""Per-rule diagnostics on hand-made results whose answers are counted here by hand."""

from __future__ import annotations

import math

import torch

from tests.methods import tiny
from xtf_kernels.datasets import TokenizedSample
from xtf_kernels.methods import SampleScores
from xtf_kernels.methods.diagnostics import rule_diagnostics

TOKENIZER = tiny.data().tokenizer
W = TOKENIZER.token_to_id
RULES = ("RI", "KN")


def sample(words, bits, guard=None):
    """Position 0 is a prompt token (not scored); the others are scored with the given rule bits."""
    ids = torch.tensor([W["<bos>"]] + [W[w] for w in words])
    labels = ids.clone()
    labels[0] = -100
    score = torch.tensor([math.nan] + [0.5] * len(words))
    scores = {"kn": score}
    if guard is not None:
        scores["guard"] = torch.tensor([math.nan] + guard)
    return TokenizedSample(ids, labels), SampleScores(scores, torch.tensor([0] + bits, dtype=torch.uint8), RULES)


def test_rule_diagnostics_by_hand():
    pairs = [
        # 5 scored tokens: "=" dropped by KN, "1" by RI, "<eos>" by both
        sample(["The", "=", "1", "2", "<eos>"], [0, 2, 1, 0, 3]),
        # 5 scored tokens: "=" by KN again (so always dropped), "3" by KN, the rest kept; a guard code 1
        sample(["answer", "=", "3", "is", "<eos>"], [0, 2, 2, 0, 0], guard=[0.0, 0.0, 0.0, 0.0, 1.0]),
        # every scored token dropped by RI
        sample(["has", "more"], [1, 1]),
    ]
    samples, results = zip(*pairs)
    out = rule_diagnostics(samples, results, tokenizer=TOKENIZER, special_ids=[W["<eos>"], W["<bos>"]])
    assert out["scored_tokens"] == 12
    kn, ri, union = out["rules"]["KN"], out["rules"]["RI"], out["rules"]["union"]
    assert kn["dropped"] == 4 and ri["dropped"] == 4 and union["dropped"] == 7
    assert [t["token"] for t in kn["always_dropped_types"]] == ["3", "="]  # ids ascend: digits come first
    assert kn["always_dropped_share"] == 3 / 12
    assert [t["token"] for t in ri["always_dropped_types"]] == ["1", "has", "more"]
    assert kn["top_types"][0] == {"id": W["="], "token": "=", "dropped": 2, "occurrences": 2, "share_of_type": 1.0}
    assert kn["special_dropped"] == 1 and ri["special_dropped"] == 1  # the first <eos>
    assert kn["digit_tokens"] == 3 and kn["digits_dropped"] == 1 and ri["digits_dropped"] == 1
    # relative positions: sample 1 and 2 fill bins 0..4 one token each; sample 3 fills bins 0 and 2
    assert out["positions"]["scored"] == [3, 2, 3, 2, 2]
    assert out["positions"]["drop_rate"]["RI"] == [1 / 3, 0.0, 2 / 3, 0.0, 1 / 2]
    assert out["positions"]["drop_rate"]["KN"] == [0.0, 1.0, 1 / 3, 0.0, 1 / 2]
    assert out["guard"]["protected"] == 1 and out["guard"]["none"] == 4
    assert out["whole_response"] == {"dropped": 1, "kept_whole": 0}
    text = " ".join(out["warnings"])
    assert "RI drops 1 special token(s) (<eos>)" in text and "KN drops 1 special token(s)" in text
    assert "KN drops 1 of 3 digit tokens (33%)" in text and "RI drops 1 of 3 digit tokens" in text


def test_common_types_mostly_dropped_are_warned_about():
    pairs = [sample(["is"] * 25, [2] * 13 + [0] * 12)]
    out = rule_diagnostics(*zip(*pairs), tokenizer=TOKENIZER)
    assert out["warnings"] == ["KN drops 13 of the 25 occurrences of 'is' (52%)"]
    assert rule_diagnostics([], [])["rules"] == {}
