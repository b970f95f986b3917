"""pass@k, maj@k and bootstrap intervals: the numbers an evaluation reports.

pass@k uses the unbiased estimator of Chen et al. 2021, "Evaluating Large
Language Models Trained on Code" (arXiv:2107.03374, section 2.1): draw n >= k
samples per problem, count the c correct ones, and estimate the probability
that at least one of k samples is correct as ``1 - C(n-c, k) / C(n, k)``.
Taking the fraction of correct samples among the first k instead is biased
and noisier; the binomial form overflows for large n, so it is computed as
the product ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` as in the paper's listing.

maj@k (self-consistency, majority voting) has no cheap closed form, so it is
estimated by drawing k of the n samples without replacement many times, or
exactly by enumeration when there are few enough subsets.

Everything here is pure: no model, no I/O, so it can be checked by hand.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

# Above this many resampled entries per batch the bootstrap works in chunks,
# so a large evaluation does not allocate iters x problems integers at once.
_BOOTSTRAP_CHUNK = 1_000_000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct out of ``n`` samples.

    >>> pass_at_k(4, 1, 2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(5, 0, 3), pass_at_k(5, 3, 3)  # no correct sample; n - c < k
    (0.0, 1.0)
    """
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if k > n:
        raise ValueError(f"pass@k needs k <= n (samples per problem), got k={k} > n={n}")
    if c < 0 or c > n:
        raise ValueError(f"number correct must be between 0 and n={n}, got c={c}")
    if n - c < k:
        # every subset of k samples contains a correct one
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, ... up to and including ``n`` (``n`` itself only if a power of two).

    >>> powers_of_two(10)
    [1, 2, 4, 8]
    """
    out: list[int] = []
    k = 1
    while k <= n:
        out.append(k)
        k *= 2
    return out


def mean_pass_at_k(counts: list[tuple[int, int]], ks: list[int]) -> dict[int, float]:
    """Mean over problems of pass@k for each k; ``counts[p] = (n_p, c_p)``.

    Problems may have different n; each must have n >= max(ks).

    >>> mean_pass_at_k([(4, 1), (2, 2)], [1, 2])  # (0.25 + 1) / 2, (0.5 + 1) / 2
    {1: 0.625, 2: 0.75}
    """
    if not counts:
        raise ValueError("pass@k over no problems is undefined")
    out: dict[int, float] = {}
    for k in ks:
        total = 0.0
        for p, (n, c) in enumerate(counts):
            try:
                total += pass_at_k(n, c, k)
            except ValueError as e:
                raise ValueError(f"problem {p}: {e}") from None
        out[k] = total / len(counts)
    return out


def _encode_problem(samples: list[tuple[str | None, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Answer ids per sample (-1 for no answer) and, per distinct answer, whether it is correct.

    An answer counts as correct if any sample of the problem carrying it was
    judged correct: the verifier may see formatting the normalised answer
    hides, and one wrong-looking twin should not make a right answer wrong.
    """
    ids: dict[str, int] = {}
    answer_ids = np.empty(len(samples), dtype=np.int64)
    correct: list[bool] = []
    for i, (answer, ok) in enumerate(samples):
        if answer is None:
            answer_ids[i] = -1
            continue
        if answer not in ids:
            ids[answer] = len(ids)
            correct.append(False)
        answer_ids[i] = ids[answer]
        correct[ids[answer]] = correct[ids[answer]] or bool(ok)
    return answer_ids, np.asarray(correct, dtype=bool)


def _vote_scores(drawn: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Expected correctness of the majority vote for each row of drawn answer ids.

    Ties are broken uniformly at random, so the expected score of a row is the
    fraction of tied top answers that are correct; a row with no answer scores 0.
    """
    rows, m = drawn.shape[0], len(correct)
    if m == 0:
        return np.zeros(rows)
    valid = drawn >= 0
    # one bincount over (row, answer) pairs gives the vote table for all rows
    flat = (np.arange(rows)[:, None] * m + drawn)[valid]
    votes = np.bincount(flat, minlength=rows * m).reshape(rows, m)
    top = votes.max(axis=1)
    tied = (votes == top[:, None]) & (top[:, None] > 0)
    n_tied = tied.sum(axis=1)
    n_right = (tied & correct[None, :]).sum(axis=1)
    return np.where(n_tied > 0, n_right / np.maximum(n_tied, 1), 0.0)


def _subsets(n: int, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Index rows of k of n samples: all subsets when there are at most ``draws``, else random ones."""
    if math.comb(n, k) <= draws:
        # enumerating is exact and no more work than sampling
        return np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    # the first k of a random permutation is a uniform draw without replacement
    return np.argsort(rng.random((draws, n)), axis=1)[:, :k]


def maj_at_k(samples: list[list[tuple[str | None, bool]]], k: int, draws: int = 200, seed: int = 0) -> float:
    """Mean over problems of the chance that a majority vote over k samples is correct.

    ``samples[p]`` holds ``(normalised answer or None, correct)`` for each sample
    of problem p. For each problem, k samples are drawn without replacement
    ``draws`` times (or every subset is used when there are no more than
    ``draws`` of them, which makes k == n exact); samples without an answer do
    not vote, a draw with no answer at all is wrong, and ties are split evenly.

    >>> maj_at_k([[("4", True), ("5", False)]], k=2)  # one tie, half of it right
    0.5
    """
    per_problem = maj_at_k_per_problem(samples, k, draws, seed)
    return sum(per_problem) / len(per_problem)


def maj_at_k_per_problem(
    samples: list[list[tuple[str | None, bool]]], k: int, draws: int = 200, seed: int = 0
) -> list[float]:
    """maj@k of each problem (what ``maj_at_k`` averages), for bootstrap intervals over problems."""
    if not samples:
        raise ValueError("maj@k over no problems is undefined")
    if k < 1:
        raise ValueError(f"maj@k needs k >= 1, got k={k}")
    if draws < 1:
        raise ValueError(f"maj@k needs draws >= 1, got draws={draws}")
    rng = np.random.default_rng(seed)
    out: list[float] = []
    for p, problem in enumerate(samples):
        if k > len(problem):
            raise ValueError(f"problem {p}: maj@k needs k <= n, got k={k} > n={len(problem)}")
        answer_ids, correct = _encode_problem(problem)
        drawn = answer_ids[_subsets(len(problem), k, draws, rng)]
        out.append(float(_vote_scores(drawn, correct).mean()))
    return out


def bootstrap_ci(
    per_problem: list[float],
    iters: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: list[float] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of per-problem scores.

    Problems are the unit resampled, since samples of one problem are not
    independent of each other. With ``weights`` the statistic is the weighted
    mean ``sum(w x) / sum(w)`` of each resample: a per-token loss is a ratio of
    per-example sums (``per_problem`` = mean NLL of an example, ``weights`` = its
    token count), and resampling examples keeps each example's tokens together.
    """
    if not per_problem:
        raise ValueError("a bootstrap interval over no problems is undefined")
    if iters < 1:
        raise ValueError(f"bootstrap needs iters >= 1, got iters={iters}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be strictly between 0 and 1, got level={level}")
    if weights is not None and (len(weights) != len(per_problem) or min(weights) < 0 or sum(weights) <= 0):
        raise ValueError("bootstrap weights must be non-negative, one per value, and not all zero")
    values = np.asarray(per_problem, dtype=np.float64)
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    m = len(values)
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CHUNK // m)
    means = np.empty(iters)
    for start in range(0, iters, rows):
        stop = min(iters, start + rows)
        idx = rng.integers(0, m, size=(stop - start, m))
        if weights is None:
            means[start:stop] = values[idx].mean(axis=1)
        else:
            # a resample whose weights are all zero has no mean; it cannot happen when every weight is > 0
            means[start:stop] = (values[idx] * w[idx]).sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-300)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
