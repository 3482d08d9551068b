"""report.html is one self-contained page: embedded PNGs, escaped text, every section."""

from __future__ import annotations

import base64
import re

import torch

from xtf_kernels.demo.html import build_page
from xtf_kernels.demo.html import loss_curves_png
from xtf_kernels.demo.html import score_histograms_png

from .fake_report import fake_report


def _png_bytes(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,")
    return base64.b64decode(uri.split(",", 1)[1])


def test_page_is_self_contained_and_escaped():
    panels = [("XTF KN", torch.tensor([0.0, 0.1, 0.9]), torch.tensor([1.0, 0.99]), [0.05]),
              ("Token Cleaning", torch.tensor([0.5, -0.5]), torch.tensor([-2.0]), [0.0])]
    highlighted = {"xtf": (("RI", "KN", "TR"), '<div class="sample">x</div>'),
                   "token_cleaning": (("low_influence",), '<div class="sample">y</div>')}
    page = build_page(fake_report(), panels, highlighted)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 2 and all(_png_bytes(s)[:8] == b"\x89PNG\r\n\x1a\n" for s in sources)
    assert "http" not in page and "<script" not in page
    assert "a &lt;b&gt;finding&lt;/b&gt;" in page and "<b>finding</b>" not in page
    for text in ("XTF per rule", "Token Cleaning", "KN&amp;TR", "torch-materialised", "40 MiB", "low_influence",
                 '<div class="sample">y</div>', 'href="scores/xtf/report.html"', "30.0%"):
        assert text in page, text


def test_plots_with_edge_case_inputs():
    methods = fake_report()["methods"]
    for method in methods.values():
        method["loss_curve"] = [1.0]  # a one-step run
    assert _png_bytes(loss_curves_png(methods))[:4] == b"\x89PNG"
    three = [("a", torch.tensor([1.0, 1.0]), torch.tensor([]), []), ("b", torch.tensor([]), torch.tensor([2.0]), [2.0]),
             ("c", torch.tensor([0.0, 1.0]), torch.tensor([0.5]), [0.2, 0.7])]
    assert _png_bytes(score_histograms_png(three))[:4] == b"\x89PNG"
