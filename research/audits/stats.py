"""Statistics of the audit probes: bootstrap intervals, permutation p-values,
correlations and the ROC figures of a membership attack. Small pure numpy
functions; every random draw comes from `np.random.default_rng(seed)`, so a
figure is the same on every run.

Conventions:
- A bootstrap interval is the percentile interval (Efron and Tibshirani 1993,
  ch. 13): `n` resamples of the indices with replacement, the statistic of
  each, and the (1 - level) / 2 and (1 + level) / 2 quantiles of those
  replicates with numpy's default linear interpolation (Hyndman and Fan's
  type 7). Replicates that are not finite (a correlation of a constant
  resample) are dropped.
- A permutation p-value counts the rearrangements whose statistic is at least
  the observed one, the observed arrangement included, so it is never 0:
  exactly over every rearrangement when there are at most `n`, else
  (1 + hits) / (1 + n) over `n` random ones (Phipson and Smyth 2010).
- In ROC figures a higher score means "member" (the attacker's guess): the
  AUC is P(score_in > score_out) + P(score_in = score_out) / 2, the
  Mann-Whitney statistic divided by n_in n_out.
"""

import itertools
import math
from typing import Callable

import numpy as np

# Relative tolerance of "at least the observed statistic": a rearrangement
# equal to the observed one in exact arithmetic may differ in its last bits.
_TIE_TOLERANCE = 1e-12


def _vector(values, name: str) -> np.ndarray:
  array = np.asarray(values, np.float64)
  if array.ndim != 1 or array.size == 0:
    raise ValueError(f'{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}')
  return array


def _percentiles(replicates: list[float], level: float) -> tuple[float, float]:
  if not 0 < level < 1:
    raise ValueError(f'level must be in (0, 1), got {level}')
  finite = np.asarray([r for r in replicates if np.isfinite(r)], np.float64)
  if finite.size == 0:
    raise ValueError('every bootstrap replicate of the statistic was NaN or infinite')
  lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


def bootstrap_interval(
  values, statistic: Callable, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
  """Percentile interval of `statistic(values)`: resample i draws the row
  `default_rng(seed).integers(0, N, size=(n, N))[i]` of indices."""
  values = np.asarray(values)
  if values.ndim < 1 or len(values) == 0:
    raise ValueError('bootstrap_interval needs a non-empty sample')
  indices_nxN = np.random.default_rng(seed).integers(0, len(values), size=(n, len(values)))
  return _percentiles([float(statistic(values[i])) for i in indices_nxN], level)


def paired_bootstrap_interval(
  x, y, statistic: Callable, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
  """Percentile interval of `statistic(x, y)` over resampled pairs: the same
  indices (drawn as in `bootstrap_interval`) pick from x and from y."""
  x, y = np.asarray(x), np.asarray(y)
  if len(x) != len(y) or len(x) == 0:
    raise ValueError(
      f'paired samples must be non-empty and of one length, got {len(x)} and {len(y)}'
    )
  indices_nxN = np.random.default_rng(seed).integers(0, len(x), size=(n, len(x)))
  return _percentiles([float(statistic(x[i], y[i])) for i in indices_nxN], level)


def two_sample_bootstrap_interval(
  x, y, statistic: Callable, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
  """Percentile interval of `statistic(x, y)` for two independent samples,
  each resampled within itself (stratified): replicate i uses rows i of
  `integers(0, len(x), (n, len(x)))` then `integers(0, len(y), (n, len(y)))`
  of one `default_rng(seed)`."""
  x, y = np.asarray(x), np.asarray(y)
  if len(x) == 0 or len(y) == 0:
    raise ValueError('two_sample_bootstrap_interval needs two non-empty samples')
  rng = np.random.default_rng(seed)
  ix_nxN = rng.integers(0, len(x), size=(n, len(x)))
  iy_nxM = rng.integers(0, len(y), size=(n, len(y)))
  return _percentiles([float(statistic(x[i], y[j])) for i, j in zip(ix_nxN, iy_nxM)], level)


def _rearrangements(x, y, permute: str, n: int, seed: int):
  """(every rearrangement of (x, y) or n random ones, exact?)."""
  if permute == 'pairing':  # Shuffle y against a fixed x.
    if len(x) != len(y):
      raise ValueError(f'pairing needs x and y of one length, got {len(x)} and {len(y)}')
    if math.factorial(len(y)) <= n:
      return ((x, y[list(p)]) for p in itertools.permutations(range(len(y)))), True
    rng = np.random.default_rng(seed)
    return ((x, y[rng.permutation(len(y))]) for _ in range(n)), False
  if permute == 'groups':  # Re-split the pooled values into groups of the same sizes.
    pooled, k = np.concatenate([x, y]), len(x)
    if math.comb(len(pooled), k) <= n:
      everything = np.arange(len(pooled))

      def split(chosen):
        mask = np.zeros(len(pooled), bool)
        mask[list(chosen)] = True
        return pooled[mask], pooled[~mask]

      return (split(c) for c in itertools.combinations(everything, k)), True
    rng = np.random.default_rng(seed)
    orders = (rng.permutation(len(pooled)) for _ in range(n))
    return ((pooled[o[:k]], pooled[o[k:]]) for o in orders), False
  raise ValueError(f"permute must be one of ['groups', 'pairing'], got {permute!r}")


def permutation_p_value(
  x,
  y,
  statistic: Callable,
  *,
  permute: str = 'pairing',
  alternative: str = 'greater',
  n: int = 10_000,
  seed: int = 0,
) -> float:
  """P(statistic of a rearrangement >= the observed one) under the null that
  the arrangement does not matter.

  Args:
    x, y: 1-D samples.
    statistic: `statistic(x, y) -> float`.
    permute: 'pairing' shuffles y against x (a correlation's null: no
      association); 'groups' re-splits x ∪ y into groups of len(x) and len(y)
      (a two-group difference's null: exchangeable groups).
    alternative: 'greater' (large statistics are evidence), 'less', or
      'two-sided' (compares absolute values).
    n: the most rearrangements: all of them when there are at most n
      (exact), else n drawn with `seed`.
    seed: the draws' seed.
  """
  x, y = _vector(x, 'x'), _vector(y, 'y')
  sign = {'greater': 1.0, 'less': -1.0, 'two-sided': None}
  if alternative not in sign:
    raise ValueError(f'alternative must be one of {sorted(sign)}, got {alternative!r}')

  def oriented(a, b):
    value = float(statistic(a, b))
    return abs(value) if sign[alternative] is None else sign[alternative] * value

  observed = oriented(x, y)
  bar = observed - _TIE_TOLERANCE * max(1.0, abs(observed))
  arrangements, exact = _rearrangements(x, y, permute, n, seed)
  hits = total = 0
  for a, b in arrangements:
    hits += oriented(a, b) >= bar
    total += 1
  return hits / total if exact else (1 + hits) / (1 + total)


def pearson(x, y) -> float:
  """Pearson's r: sum(dx dy) / sqrt(sum(dx^2) sum(dy^2)); NaN when either
  sample is constant."""
  x, y = _vector(x, 'x'), _vector(y, 'y')
  if len(x) != len(y):
    raise ValueError(f'pearson needs x and y of one length, got {len(x)} and {len(y)}')
  dx, dy = x - x.mean(), y - y.mean()
  denominator = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
  return float(np.dot(dx, dy)) / denominator if denominator > 0 else math.nan


def average_ranks(values) -> np.ndarray:
  """Ranks 1..N, ties given the mean of the ranks they span."""
  _, group_of, counts = np.unique(
    _vector(values, 'values'), return_inverse=True, return_counts=True
  )
  last = np.cumsum(counts)  # The rank of each tie group's last member.
  return (last - (counts - 1) / 2)[group_of].astype(np.float64)


def spearman(x, y) -> float:
  """Spearman's rho: Pearson's r of the average ranks."""
  return pearson(average_ranks(x), average_ranks(y))


def roc_auc(scores_in, scores_out) -> float:
  """Area under the ROC curve of "member when score >= t": the Mann-Whitney
  U of the members' average ranks in the pooled scores, U / (n_in n_out)."""
  scores_in, scores_out = _vector(scores_in, 'scores_in'), _vector(scores_out, 'scores_out')
  ranks = average_ranks(np.concatenate([scores_in, scores_out]))
  n_in, n_out = len(scores_in), len(scores_out)
  u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2
  return float(u / (n_in * n_out))


def tpr_at_fpr(scores_in, scores_out, fpr: float) -> float:
  """The highest true-positive rate of "member when score >= t" over the
  thresholds t whose false-positive rate is at most `fpr` (Carlini et al.
  2022, section 3: the ROC curve read at a low FPR). With n_out non-members
  an FPR below 1 / n_out means no false positive at all."""
  if not 0 <= fpr <= 1:
    raise ValueError(f'fpr must be in [0, 1], got {fpr}')
  scores_in, scores_out = _vector(scores_in, 'scores_in'), _vector(scores_out, 'scores_out')
  sorted_in, sorted_out = np.sort(scores_in), np.sort(scores_out)
  thresholds = np.unique(np.concatenate([scores_in, scores_out]))
  false_positives = len(sorted_out) - np.searchsorted(sorted_out, thresholds, side='left')
  true_positives = len(sorted_in) - np.searchsorted(sorted_in, thresholds, side='left')
  allowed = false_positives <= fpr * len(sorted_out) + 1e-9  # 0.29 * 100 is 28.999...
  # t above every score flags nobody: TPR 0 at FPR 0.
  return float(true_positives[allowed].max() / len(sorted_in)) if allowed.any() else 0.0
