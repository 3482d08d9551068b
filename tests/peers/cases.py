"""The peers' own test grids, restated as data: shapes, option grids and tolerances.

Sources (read at the commits the project mirrors; re-expressed, no code copied):
- Liger-Kernel, ``test/transformers/test_fused_linear_cross_entropy.py``: ``LigerFusedLinearCrossEntropyLoss``
  against a materialised ``F.cross_entropy`` + z-loss, (B, T, H, V) in {(8, 128, 1024, 4096), (4, 47, 31,
  123)}, bias on / off, one row of defaults and one with every option (class weights ``torch.rand(V)``,
  label smoothing 0.1, ignore_index 42, z-loss scale 1e-4, softcap 30, z-loss returned), mean / sum, fp32 /
  bf16, and a token-accuracy test. Inputs: ``x = randn(B*T, H)``, weight and bias ``torch.rand`` (uniform
  [0, 1), so logits reach +-50 at H 1024), a random number in [1, BT/2) of targets set to ignore_index.
- Cut Cross-Entropy, ``tests/test_cce_loss_forward.py`` / ``tests/test_cce_loss_backward.py``: (N, V, D) in
  {(256, 512, 128), (252, 507, 128), (252, 507, 123)}, ``e = randn(N, D) / sqrt(D)``, ``c = randn(V, D)``
  whose first min(N, V) // 2 rows are copies of rows of ``e`` (peaked, near-one-hot softmaxes), bias
  ``randn(V) * 0.01`` (forward) / ``0.02`` (backward), 20% ignored targets, softcap None / 20, shift 0 / 2, z-loss
  (mean of lse^2 over kept tokens), reductions none / mean / sum. Their tolerance: the error against an
  fp32 ground truth may exceed that of the plain materialised computation in the input dtype by at most
  1e-5 (fp32), 1e-3 (fp16), 1e-2 (bf16).

Where the two grids are full products we keep a covering subset (every value of every option appears,
each shape in every dtype) so the whole port runs in seconds on a 2-core CPU.
"""

from __future__ import annotations

import itertools

import torch

# ---------------------------------------------------------------------------------------------- Liger-Kernel

LIGER_SHAPES = ((4, 47, 31, 123), (8, 128, 1024, 4096))
# (reduction, dtype, atol, rtol) as Liger states them.
LIGER_TOLERANCES = (
    ("mean", torch.bfloat16, 5e-3, 5e-2),
    ("mean", torch.float32, 1e-5, 5e-4),
    ("sum", torch.bfloat16, 5.0, 50.0),
    ("sum", torch.float32, 1e-3, 5e-2),
)
LIGER_DEFAULTS = dict(class_weights=False, label_smoothing=0.0, ignore_index=-100, z_loss=0.0, softcap=None)
LIGER_EVERYTHING = dict(class_weights=True, label_smoothing=0.1, ignore_index=42, z_loss=1e-4, softcap=30.0)


def liger_cases():
    """(shape, reduction, dtype, atol, rtol, bias, options): the full grid on the small shape; on the large
    one (1024 tokens x H 1024 x V 4096, 5-15 s with the float64 reference on the 2-core CPU) the bf16 "mean"
    row only, bias and every option on."""
    cases = []
    for (reduction, dtype, atol, rtol), bias, options in itertools.product(
        LIGER_TOLERANCES, (True, False), (LIGER_DEFAULTS, LIGER_EVERYTHING)
    ):
        cases.append((LIGER_SHAPES[0], reduction, dtype, atol, rtol, bias, options))
    for reduction, dtype, atol, rtol in LIGER_TOLERANCES[:1]:
        cases.append((LIGER_SHAPES[1], reduction, dtype, atol, rtol, True, LIGER_EVERYTHING))
    return cases


# ---------------------------------------------------------------------------------------- Cut Cross-Entropy

CCE_SHAPES = ((256, 512, 128), (252, 507, 128), (252, 507, 123))
CCE_ERROR_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
CCE_REDUCTIONS = ("none", "mean", "sum")


def cce_cases():
    """(shape, dtype, reduction, softcap, bias, shift (0 or 2), invalids, z_loss): every shape x dtype x reduction,
    the four binary options and softcap cycled so each value meets every dtype and reduction."""
    cases = []
    combos = list(itertools.product(CCE_SHAPES, CCE_ERROR_TOL, CCE_REDUCTIONS))
    for index, (shape, dtype, reduction) in enumerate(combos):
        bits = [(index >> k) & 1 for k in range(5)]
        softcap = 20.0 if bits[0] else None
        z_loss = bool(bits[4]) and reduction != "none"  # CCE adds z-loss outside a "none" loss; see the test
        cases.append((shape, dtype, reduction, softcap, bool(bits[1]), 2 * bits[2], not bits[3] or index % 3 == 0,
                       z_loss))
    return cases
