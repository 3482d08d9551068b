"""Fidelity auditor: a discriminative estimate of the total-variation distance between two sample sets.

With equal priors the Bayes risk of telling P (e.g. real data) from Q (e.g. synthetic data) is
(1 - TV(P, Q)) / 2, and every classifier f satisfies TV(P, Q) >= P(f = 1) - Q(f = 1). The auditor balances
the two sets, fits a classifier from a chosen hypothesis class on a training split and reports, on held-out
rows, TV_hat = mean_P[f = 1] - mean_Q[f = 1] clipped to [0, 1] with a binomial (Newcombe) confidence
interval. A learned classifier gives a LOWER BOUND on TV: a richer class or more data can only raise it.
Ranking several synthetic sets against one real set by TV_hat ranks their fidelity (lower = better).

    from xtf_kernels.fidelity import estimate_tv, rank_fidelity
    estimate_tv(real, synthetic, classifier="max", seed=0)      # real, synthetic: (n, d) tensors / arrays
    print(rank_fidelity(real, {"gen_a": a, "gen_b": b}).table())

Text datasets are embedded first with :func:`embed_texts` (mean-pooled last hidden states of a
transformers model, loaded with :func:`load_text_encoder`); transformers is imported only there.
"""

from .classifiers import CLASSIFIERS
from .classifiers import ClassifierOptions
from .embedding import embed_texts
from .embedding import load_text_encoder
from .estimator import TVEstimate
from .estimator import estimate_tv
from .files import load_embeddings
from .files import read_jsonl_texts
from .ranking import FidelityRanking
from .ranking import RankedSet
from .ranking import rank_fidelity

__all__ = [
    "CLASSIFIERS",
    "ClassifierOptions",
    "FidelityRanking",
    "RankedSet",
    "TVEstimate",
    "embed_texts",
    "estimate_tv",
    "load_embeddings",
    "load_text_encoder",
    "rank_fidelity",
    "read_jsonl_texts",
]
