"""Statistics of an experiment's table: intervals over seeds.

The cells of a row differ only in their seed, so a row's final figures are a
sample over seeds and the table reports their mean with a Student-t 95%
interval.
"""

import math
import statistics


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


def row_summary(row, results, split):
  """(mean, 95% half-width, n, finished results) of `row`'s final `split`
  metric over its finished cells; None when none has it."""
  done = [r for r in results if r.cell.row == row and r.status == 'finished']
  values = [r.final[split] for r in done if split in r.final]
  if not values:
    return None
  mean, half = confidence_interval(values)
  return mean, half, len(values), done
