"""report.html is one self-contained page: embedded PNGs, escaped text, every section, samples token by token."""

from __future__ import annotations

import base64
import re

import torch

from xtf_kernels.datasets.miniature import KIND_CODE
from xtf_kernels.datasets.miniature import MiniatureTokenizer
from xtf_kernels.datasets.samples import TokenizedSample
from xtf_kernels.demo.experiment import CellArtifacts
from xtf_kernels.demo.html import build_page
from xtf_kernels.demo.html import differences_png

from .fake_report import fake_report


def _png_bytes(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,")
    return base64.b64decode(uri.split(",", 1)[1])


def _artifacts():
    tokenizer = MiniatureTokenizer.train(["Step one: 12 + 3 = 15. The answer is 15. &amp;"] * 20, vocab_size=300)
    ids = tokenizer.encode(" The answer is 15. &amp;")
    n = len(ids)
    labels = torch.tensor(ids)
    labels[0] = -100
    noise = torch.zeros(n, dtype=torch.bool)
    noise[-2:] = True
    kinds = torch.full((n,), KIND_CODE["template"], dtype=torch.int8)
    kinds[-2:] = KIND_CODE["garbled"]
    sample = TokenizedSample(torch.tensor(ids), labels, noise)
    clean = TokenizedSample(torch.tensor(ids), labels, torch.zeros(n, dtype=torch.bool))
    dropped = torch.zeros(n, dtype=torch.bool)
    dropped[-1] = True
    return CellArtifacts([clean, sample], [kinds, kinds], {"tc_fixed": [dropped, dropped],
                                                          "xtf_paper": [dropped, ~dropped]}), tokenizer


def test_page_is_self_contained_escaped_and_complete():
    artifacts, tokenizer = _artifacts()
    page = build_page(fake_report(), artifacts, tokenizer, highlighted=3)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 and _png_bytes(sources[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in page and "<script" not in page
    assert "a &lt;b&gt;finding&lt;/b&gt;" in page and "<b>finding</b>" not in page
    for text in ("Token Cleaning (fixed)", "scored only", "torch-materialised", "40 MiB", "+15.0 [+8.0, +22.0]",
                 "McNemar p 0.050", "wrong_number dropped / AUROC", "&lt;b&gt;", "vs all -0.015 [-0.025, -0.005]",
                 "vs random -0.012 [-0.022, -0.002]"):
        assert text in page, text
    # only the noisy sample is shown, once per arm that has a drop; its garbled tokens underlined
    samples = re.findall(r'<div class="sample">.*?</div>', page)
    assert len(samples) == 2 and all("sample 1," in s for s in samples)
    assert samples[0].count("noise") == 2 and "drop" in samples[0]


def test_differences_plot_with_missing_controls():
    arms = fake_report()["arms"]
    arms["tc_fixed"]["vs_random"] = None
    assert _png_bytes(differences_png(arms))[:4] == b"\x89PNG"
