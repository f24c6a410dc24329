"""Learning-rate sweeps in RESULTS.md (spec.Sweep): the final figure of each
group against the swept value, the best value, and the LR sensitivity of
Wortsman et al. 2024 over seeds, each group paired by seed with the baseline.

Definitions (Wortsman et al. 2024, "Small-scale proxies for large-scale
Transformer training instabilities", Section 2.2). A cell's figure is the
experiment's metric on its first split at the cell's last step. Its loss at
initialisation loss_0 is the cell's own evaluation of that split at step 0
when metrics.jsonl holds one, else `Sweep.initial` (ln V for a V-token
vocabulary). A cell counts at min(figure, loss_0), and at loss_0 when it
diverged: it stopped on a non-finite loss (runner state 'diverged', exit
status 3), or its figure is not finite, or above loss_0; such cells are marked
†, never dropped. A group's LR sensitivity at one seed is the mean of its
counted figures over the swept values minus the lowest of them; it needs
every value's cell of that seed (finished or diverged). Intervals are
Student-t 95% over seeds; the comparison with the baseline group is paired by
seed (stats.paired_difference).
"""

import dataclasses
import statistics

from research.experiments import runner
from research.experiments import spec as spec_lib
from research.experiments import stats

DAGGER = '†'


@dataclasses.dataclass(frozen=True)
class Point:
  """One group at one swept value."""

  value: float
  counted: dict  # seed -> the counted figure (stats.counted_loss).
  diverged: frozenset  # Seeds whose cell diverged here.
  planned: int  # Seeds of the row.


@dataclasses.dataclass(frozen=True)
class Group:
  name: str
  points: list  # Point per swept value, ascending.
  sensitivity: dict  # seed -> LR sensitivity, for the seeds with every value's cell.
  seeds: tuple  # Every seed of the group's rows.
  no_initial: tuple  # Cells done but without a loss at initialisation (not counted).

  def best_at(self, seed: int) -> float | None:
    """The value of the lowest counted figure at `seed` (the lower value on a
    tie), over the values counted there; None where none is."""
    counted = [p for p in self.points if seed in p.counted]
    return min(counted, key=lambda p: (p.counted[seed], p.value)).value if counted else None

  @property
  def best(self) -> Point | None:
    """The value of the lowest mean counted figure (the lower value on a tie)."""
    scored = [p for p in self.points if p.counted]
    return min(scored, key=lambda p: statistics.fmean(p.counted.values()), default=None)


def rate_label(value: float) -> str:
  """3e-4, 1e-3, 1.5e-2, 1 (a value as the sweep's columns and ticks show it)."""
  mantissa, exponent = f'{value:e}'.split('e')
  mantissa = mantissa.rstrip('0').rstrip('.')
  return mantissa if int(exponent) == 0 else f'{mantissa}e{int(exponent)}'


def groups(experiment: spec_lib.Experiment, results: list) -> list[Group]:
  """Each sweep group's points and per-seed sensitivities from `results`
  (cell_results.CellResult), in the order of the spec's groups."""
  sweep, split = experiment.sweep, experiment.splits[0]
  out = []
  for name, rows in sweep.groups(experiment.rows).items():
    points, no_initial, seeds = [], [], set()
    for row in rows:
      counted, diverged, planned = {}, set(), 0
      for r in (x for x in results if x.cell.row == row):
        planned += 1
        seeds.add(r.cell.seed)
        if r.status not in runner.RESULTS or (r.status == 'finished' and split not in r.final):
          continue
        initial = r.initial.get(split, sweep.initial)
        if initial is None:
          no_initial.append(r.cell.name)
          continue
        loss = r.final.get(split) if r.status == 'finished' else None
        counted[r.cell.seed], is_diverged = stats.counted_loss(loss, initial)
        if is_diverged:
          diverged.add(r.cell.seed)
      points.append(Point(sweep.value(row), counted, frozenset(diverged), planned))
    complete = set.intersection(*(set(p.counted) for p in points)) if points else set()
    sensitivity = {
      s: stats.lr_sensitivity([p.counted[s] for p in points]) for s in sorted(complete)
    }
    out.append(Group(name, points, sensitivity, tuple(sorted(seeds)), tuple(no_initial)))
  return out


def by_point(experiment: spec_lib.Experiment, results: list) -> dict:
  """(group, swept value, seed) -> the cell's result, for the rows of sweep groups."""
  sweep = experiment.sweep
  return {
    (r.cell.row.group, sweep.value(r.cell.row), r.cell.seed): r for r in results if r.cell.row.group
  }


def _decimals(metric: str) -> int:
  return 1 if metric == 'perplexity' else 3


def _point_text(point: Point | None, d: int) -> str:
  """'2.512 ± 0.010', with '†' when every seed diverged there and '†k/n' when
  k of its n counted seeds did; '' : no such value, '—': none counted."""
  if point is None:
    return ''
  if not point.counted:
    return '—'
  mean, half = stats.confidence_interval(list(point.counted.values()))
  text = f'{mean:.{d}f}' if half is None else f'{mean:.{d}f} ± {half:.{d}f}'
  k, n = len(point.diverged), len(point.counted)
  if k:
    text += f' {DAGGER}' + ('' if k == n else f'{k}/{n}')
  return text


def _interval(values: list[float], d: int) -> str:
  mean, half = stats.confidence_interval(values)
  return f'{mean:.{d + 1}f}' if half is None else f'{mean:.{d + 1}f} ± {half:.{d + 1}f}'


def markdown(experiment: spec_lib.Experiment, results: list) -> list[str]:
  """The 'Learning-rate sweep' section of RESULTS.md."""
  sweep, metric, split = experiment.sweep, experiment.metric, experiment.splits[0]
  found = groups(experiment, results)
  d = _decimals(metric)
  values = sorted({p.value for g in found for p in g.points})
  initial = (
    f'`Sweep.initial` = {sweep.initial:.4g}'
    if sweep.initial is not None
    else 'none (only cells evaluated at step 0 have one)'
  )
  lines = [
    f'## Sweeps of {sweep.label} (`{sweep.key}`)',
    '',
    f'Final {metric} on {split} per group and {sweep.label}: mean ± half-width of the 95% '
    'Student-t interval over seeds. Following Wortsman et al. 2024 (Section 2.2), a run '
    f'counts at min({metric}, its {metric} at initialisation), and a diverged run (stopped '
    f'on a non-finite loss, or ending non-finite or above its initial {metric}) counts at the '
    f'initial {metric} and is marked {DAGGER} (k/n: k of the n seeds diverged there; no '
    "count: all did). The initial figure is the cell's own evaluation at step 0 where it "
    f'has one, else {initial}. LR sensitivity, per seed: the mean over the swept values '
    'of the counted figure minus the best one, then mean ± 95% interval over the seeds '
    'that have every value (n of N). Best: the value with the lowest mean counted figure.',
    '',
    '| group | '
    + ' | '.join(rate_label(v) for v in values)
    + f' | best {sweep.label} | LR sensitivity | n |',
    '| --- | ' + ' | '.join('---' for _ in values) + ' | --- | --- | --- |',
  ]
  for group in found:
    at = {p.value: p for p in group.points}
    best = group.best
    sensitivity = list(group.sensitivity.values())
    lines.append(
      f'| {group.name} | '
      + ' | '.join(_point_text(at.get(v), d) for v in values)
      + f' | {rate_label(best.value) if best else "—"} | '
      + (_interval(sensitivity, d) if sensitivity else '—')
      + f' | {len(sensitivity)} of {len(group.seeds)} |'
    )
  missing = sorted(c for g in found for c in g.no_initial)
  if missing:
    lines += [
      '',
      f'Not counted, for want of a {metric} at initialisation (no evaluation at step 0, and '
      f'no `Sweep.initial`): {", ".join(missing)}.',
    ]
  lines += ['']
  if any(sweep.baseline_of(g.name) for g in found):
    lines += _paired_lines(sweep, found, d)
  return lines


def _paired_lines(sweep: spec_lib.Sweep, found: list[Group], d: int) -> list[str]:
  """Each group's LR sensitivity minus its baseline group's, paired by seed."""
  by_name = {g.name: g for g in found}
  single = isinstance(sweep.baseline, str)
  lines = [
    (
      f'LR sensitivity minus that of {sweep.baseline}'
      if single
      else "LR sensitivity minus that of the group's baseline"
    )
    + ', paired by seed: mean of the per-seed '
    'differences ± half-width of its 95% Student-t interval, the two-sided paired t-test '
    'p-value, and the smallest true difference this design would find significant at 5% '
    'four times out of five (detectable).',
    '',
    '| group | minus baseline | p | detectable | n |'
    if single
    else '| group | baseline | minus baseline | p | detectable | n |',
    '| --- | --- | --- | --- | --- |' + ('' if single else ' --- |'),
  ]
  for group in found:
    base = by_name.get(sweep.baseline_of(group.name))
    if base is None:
      continue
    cells = f'| {group.name} |' + ('' if single else f' {base.name} |')
    paired = stats.paired_difference(group.sensitivity, base.sensitivity)
    if paired is None:
      lines.append(f'{cells} — | | | 0 |')
      continue
    half = '' if paired.half is None else f' ± {paired.half:.{d + 1}f}'
    p = '' if paired.p_value is None else f'{paired.p_value:.3f}'
    detectable = '' if paired.detectable is None else f'{paired.detectable:.{d + 1}f}'
    lines.append(f'{cells} {paired.mean:+.{d + 1}f}{half} | {p} | {detectable} | {paired.n} |')
  return lines + ['']
