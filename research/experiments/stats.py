"""Statistics of an experiment's table: intervals over seeds, and paired
differences from a baseline row.

The cells of a row differ only in their seed, so a row's final figures are a
sample over seeds and the table reports their mean with a Student-t 95%
interval. Against a baseline, a row's cell at seed s is compared with the
baseline's cell at the same seed (`paired_difference`): the seed fixes the
data order and the random draws, so what the two share cancels in the
difference and the test is more sensitive than one between two means.
"""

import dataclasses
import math
import statistics

from scipy import stats as scipy_stats


# Two-sided 95% quantiles of Student's t, t_{0.975}(df), df = 1..30.
_T975 = (
  12.7062,
  4.3027,
  3.1824,
  2.7764,
  2.5706,
  2.4469,
  2.3646,
  2.3060,
  2.2622,
  2.2281,
  2.2010,
  2.1788,
  2.1604,
  2.1448,
  2.1314,
  2.1199,
  2.1098,
  2.1009,
  2.0930,
  2.0860,
  2.0796,
  2.0739,
  2.0687,
  2.0639,
  2.0595,
  2.0555,
  2.0518,
  2.0484,
  2.0452,
  2.0423,
)


def t_quantile_975(df: int) -> float:
  """t_{0.975}(df): a table to 30, then the Cornish-Fisher expansion
  around the normal quantile (error below 1e-4 from df 30 on)."""
  if df < 1:
    raise ValueError(f'degrees of freedom must be >= 1, got {df}')
  if df <= len(_T975):
    return _T975[df - 1]
  z = 1.959964
  return (
    z
    + (z**3 + z) / (4 * df)
    + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
  )


def confidence_interval(values: list[float]) -> tuple[float, float | None]:
  """(mean, half-width of the 95% t interval); half-width None for n = 1."""
  if not values:
    raise ValueError('no values')
  mean = statistics.fmean(values)
  if len(values) < 2:
    return mean, None
  sem = statistics.stdev(values) / math.sqrt(len(values))
  return mean, t_quantile_975(len(values) - 1) * sem


def row_summary(row, results, split, metric: str | None = None):
  """(mean, 95% half-width, n, finished results) of `row`'s final `split`
  figure over its finished cells: the experiment's metric, or `metric` of a
  further table; None when no cell has it."""
  done = [r for r in results if r.cell.row == row and r.status == 'finished']
  if metric is None:
    values = [r.final[split] for r in done if split in r.final]
  else:
    values = [r.extra[(split, metric)] for r in done if (split, metric) in r.extra]
  if not values:
    return None
  mean, half = confidence_interval(values)
  return mean, half, len(values), done


@dataclasses.dataclass(frozen=True)
class Paired:
  """A row minus the baseline, over the seeds both finished."""

  mean: float  # Mean of the per-seed differences.
  half: float | None  # Half-width of its 95% Student-t interval (None: n = 1).
  p_value: float | None  # Two-sided paired t-test of a zero mean (None: n = 1).
  n: int  # Seeds in both.
  detectable: float | None  # Smallest true difference found 80% of the time.


def paired_difference(row: dict, baseline: dict) -> Paired | None:
  """`row` and `baseline` map seed -> value; None when no seed is in both.

  The interval is mean ± t_{0.975}(n-1) sd / sqrt(n) and the p-value
  2 P(T_{n-1} > |mean| / (sd / sqrt(n))) of the differences d_s. `detectable`
  is (t_{0.975}(n-1) + t_{0.80}(n-1)) sd / sqrt(n): the true difference that
  this many seeds, with the spread the differences showed, would find
  significant at 5% four times out of five (the usual power approximation).
  """
  seeds = sorted(set(row) & set(baseline))
  if not seeds:
    return None
  d = [row[s] - baseline[s] for s in seeds]
  n, mean = len(d), statistics.fmean(d)
  if n < 2:
    return Paired(mean, None, None, n, None)
  sem = statistics.stdev(d) / math.sqrt(n)
  t975 = t_quantile_975(n - 1)
  if sem == 0:
    p = 1.0 if mean == 0 else 0.0
  else:
    p = float(2 * scipy_stats.t.sf(abs(mean) / sem, n - 1))
  detectable = (t975 + float(scipy_stats.t.ppf(0.8, n - 1))) * sem
  return Paired(mean, t975 * sem, p, n, detectable)


def ordering_reproduced(paired: Paired | None, published_difference: float | None) -> str:
  """Whether the sign of a published row-minus-baseline difference is ours:
  'yes', 'no', 'not significant' (p >= 0.05 or one seed), or '—' (no
  published values to compare)."""
  if published_difference is None or paired is None:
    return '—'
  if paired.p_value is None or paired.p_value >= 0.05:
    return 'not significant'
  if published_difference == 0:
    return 'no'  # The paper saw no difference; we see a significant one.
  return 'yes' if (paired.mean > 0) == (published_difference > 0) else 'no'


def counted_loss(loss: float | None, initial: float) -> tuple[float, bool]:
  """(the loss a sweep counts, whether the run diverged): min(loss, initial),
  and a loss that is missing (the run stopped on a non-finite step), not
  finite or above the loss at initialisation counts at `initial` and is
  diverged (Wortsman et al. 2024, Section 2.2)."""
  if loss is None or not math.isfinite(loss) or loss > initial:
    return initial, True
  return loss, False


def lr_sensitivity(counted: list[float]) -> float:
  """LR sensitivity of Wortsman et al. 2024 (Section 2.2) of one sweep at one
  seed: E_eta[min(loss(eta), loss_0)] - min_eta loss(eta), the mean over the
  swept values (their expectation over a log-uniform range, for values evenly
  spaced in log) of the counted losses (`counted_loss`) minus the best one."""
  if not counted:
    raise ValueError('no values')
  return statistics.fmean(counted) - min(counted)
