"""The demo's four data splits, all generated from one seed by :mod:`xtf_kernels.datasets` (nothing downloaded).

- train: noisy arithmetic SFT samples (random label tokens and filler spans in the responses, ground truth
  in ``noise_mask``), the pool every method filters and fine-tunes on;
- pretrain: clean problems as plain text, every token labelled (prompt included), so the randomly
  initialised model becomes a "pretrained" base that knows the language before it is fine-tuned, as
  XTF's attributes assume;
- warmup: clean SFT samples, the small trusted set Token Cleaning's reference model is fine-tuned on;
- heldout: clean problems whose prompts occur in no other split, for exact match and held-out loss.
Split ``k`` of seed ``s`` uses the generator seed ``4 s + k``, so splits and seeds never share a stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..datasets import ArithmeticProblem
from ..datasets import ArithmeticSFT
from ..datasets import ArithmeticTokenizer
from ..datasets import TokenizedSample
from ..datasets import make_arithmetic_sft
from ..datasets import make_problems
from ..datasets.arithmetic import encode_problem
from .config import DemoConfig


@dataclass(frozen=True)
class DemoData:
    """train: the noisy pool; pretrain / warmup: clean samples; heldout: clean problems; tokenizer: theirs."""

    train: ArithmeticSFT
    pretrain: list[TokenizedSample]
    warmup: list[TokenizedSample]
    heldout: list[ArithmeticProblem]
    tokenizer: ArithmeticTokenizer

    @property
    def heldout_samples(self) -> list[TokenizedSample]:
        """The held-out problems as SFT samples (prompt unlabelled), for the held-out loss."""
        return [encode_problem(p, self.tokenizer) for p in self.heldout]


def _split_seed(seed: int, split: int) -> int:
    return 4 * seed + split


def as_text_sample(sample: TokenizedSample) -> TokenizedSample:
    """``sample`` with every token labelled (language-model pretraining on the whole text)."""
    return TokenizedSample(sample.input_ids, sample.input_ids.clone(), sample.noise_mask)


def heldout_problems(n: int, seed: int, exclude: set[str]) -> list[ArithmeticProblem]:
    """``n`` clean problems drawn from ``seed`` whose prompt is not in ``exclude`` (nor repeated)."""
    out: list[ArithmeticProblem] = []
    seen = set(exclude)
    draw = n
    attempt = 0
    while len(out) < n:
        # Each attempt draws from its own stream; 40k distinct prompts exist, so one or two attempts suffice.
        for problem in make_problems(draw, seed=seed + 1_000_003 * attempt):
            if problem.prompt not in seen:
                seen.add(problem.prompt)
                out.append(problem)
                if len(out) == n:
                    break
        attempt += 1
        draw = 2 * (n - len(out))
    return out


def build_data(config: DemoConfig) -> DemoData:
    """The four splits of ``config`` (a pure function of its sizes, noise fraction and seed)."""
    seed = config.seed
    train = make_arithmetic_sft(config.train_samples, noise_fraction=config.noise_fraction,
                                seed=_split_seed(seed, 0))
    tokenizer = train.tokenizer
    pretrain_problems = make_problems(config.pretrain_samples, seed=_split_seed(seed, 1))
    pretrain = [as_text_sample(encode_problem(p, tokenizer)) for p in pretrain_problems]
    warmup = make_arithmetic_sft(config.warmup_samples, noise_fraction=0.0, seed=_split_seed(seed, 2))
    used = {p.prompt for p in (*train.problems, *pretrain_problems, *warmup.problems)}
    heldout = heldout_problems(config.heldout_problems, _split_seed(seed, 3), used)
    return DemoData(train, pretrain, list(warmup.samples), heldout, tokenizer)
