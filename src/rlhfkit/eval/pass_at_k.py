"""pass@k: the chance that at least one of k samples passes, estimated from n samples per prompt.

Chen et al., "Evaluating Large Language Models Trained on Code" (2021), eq. 1: with n samples
of a prompt of which c pass, the unbiased estimator of pass@k is

    pass@k = 1 - C(n - c, k) / C(n, k)

averaged over prompts. ``rlhfkit eval --n_samples N --pass_at K`` reports it for every reward
(a sample passes when it scores 1.0, as the ``code`` reward's passing tests do), with the
same 95% interval over prompts as every other figure. With several samples per prompt, a
figure's values are per prompt (the mean of its samples), so an interval counts prompts, not
samples that share one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rlhfkit.eval.heldout import Measure, mean_measure
from rlhfkit.eval.policy import PolicyEval

PASS = 1.0  # a score at least this counts as a passing sample


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k), for n samples of which c pass.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), the product form of Chen et al.'s
    reference code: the binomials overflow a float at n in the hundreds, the product does not.

    >>> pass_at_k(10, 1, 1), pass_at_k(5, 0, 3), pass_at_k(5, 3, 3)
    (0.1, 0.0, 1.0)
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def per_prompt(values: Sequence[float], n: int) -> list[list[float]]:
    """``values`` of n consecutive samples per prompt, grouped by prompt."""
    if n < 1 or len(values) % n:
        raise ValueError(f"{len(values)} values are not {n} per prompt")
    return [list(values[i : i + n]) for i in range(0, len(values), n)]


def fold(result: PolicyEval, n: int) -> PolicyEval:
    """``result`` of n samples per prompt as one value per prompt: the mean of its samples
    (scores, lengths, KL); the completions stay all there, for the diversity figures."""
    if n == 1:
        return result

    def means(values: Sequence[float]) -> list[float]:
        return [sum(group) / n for group in per_prompt(values, n)]

    return PolicyEval(
        completions=result.completions,
        scores={name: means(values) for name, values in result.scores.items()},
        lengths=means(result.lengths),  # type: ignore[arg-type]  # mean lengths are not whole
        kl=means(result.kl) if result.kl else [],
    )


def pass_measures(scores: dict[str, list[float]], n: int, ks: Sequence[int]) -> dict[str, Measure]:
    """``"REWARD pass@k"``: each prompt's pass@k estimate for every reward and k, from the
    per-sample ``scores`` of n samples per prompt."""
    figures = {}
    for name, values in scores.items():
        passes = [sum(v >= PASS for v in group) for group in per_prompt(values, n)]
        for k in ks:
            figures[f"{name} pass@{k}"] = mean_measure([pass_at_k(n, c, k) for c in passes])
    return figures
