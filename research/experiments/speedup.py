"""Steps to the baseline's loss (`Experiment.steps_to_baseline`): the
"speed-up" optimizer papers quote, per row against the baseline row, paired by
seed, for RESULTS.md.

At seed s the target is the baseline cell's final figure (the experiment's
metric on its first split, lower is better). A cell's steps to the target are
the first step at which its evaluations of that split reach it, interpolated
linearly between the two evaluations around the crossing (its first
evaluation, where that one already reaches it); the baseline's own are found
the same way on its own curve (its last step, unless it reached its final
figure earlier). The step ratio is baseline steps / row steps (> 1: the row
gets there in fewer steps). A cell that never reaches the target counts at its
last step, so its ratio is an upper bound; the table says how many did not
reach it. The ratio is summarised on log scale (a geometric mean): the mean
of log ratio over seeds with its 95% Student-t interval and p-value, shown
back as ratios. The wall-clock ratio multiplies each seed's step ratio by
the row's median train tokens/s over the baseline's (the same tokens per
step), so a speed-up in steps is also stated in time.
"""

import dataclasses
import math
import statistics

from research.experiments import spec as spec_lib
from research.experiments import stats


@dataclasses.dataclass(frozen=True)
class Seed:
  steps: float  # Steps the row's cell took to the target (its last step if never).
  reached: bool
  ratio: float  # Baseline steps / row steps.
  wall_ratio: float | None  # ratio x (row tokens/s / baseline tokens/s); None: no speeds.


def steps_to(curve: list, target: float) -> tuple[float, bool]:
  """(steps to reach `target` on `curve`, [(step, figure)] ascending, whether
  it does): linear interpolation between the evaluations around the first
  crossing; the last step and False when none reaches it."""
  for i, (step, value) in enumerate(curve):
    if value <= target:
      if i == 0:
        return float(step), True
      step_0, value_0 = curve[i - 1]
      return step_0 + (step - step_0) * (value_0 - target) / (value_0 - value), True
  return float(curve[-1][0]), False


def _speed(result) -> float | None:
  values = [v for _, v in result.train.get('tokens_per_s', []) if v > 0]
  return statistics.median(values) if values else None


def per_seed(row_result, base_result) -> Seed | None:
  """The pair's figures (`cell_results.CellResult`s of one seed); None where either
  lacks an evaluated curve or a final figure."""
  if not row_result.curve or not base_result.curve:
    return None
  target = base_result.curve[-1][1]
  base_steps, _ = steps_to(base_result.curve, target)
  steps, reached = steps_to(row_result.curve, target)
  ratio = base_steps / steps if steps > 0 else math.inf
  speeds = _speed(row_result), _speed(base_result)
  wall = ratio * speeds[0] / speeds[1] if all(speeds) else None
  return Seed(steps, reached, ratio, wall)


def _summary(ratios: list) -> tuple[str, str]:
  """('1.31 [1.12, 1.53]', p): the geometric mean of the finite positive
  `ratios` with its 95% interval, and the p-value of mean log ratio = 0
  (stats.paired_difference of the log ratios against 0); '—' where none."""
  logs = [math.log(r) for r in ratios if r is not None and 0 < r < math.inf]
  paired = stats.paired_difference(dict(enumerate(logs)), dict.fromkeys(range(len(logs)), 0.0))
  if paired is None:
    return '—', '—'
  if paired.half is None:
    return f'{math.exp(paired.mean):.2f}', '—'
  low, high = math.exp(paired.mean - paired.half), math.exp(paired.mean + paired.half)
  return f'{math.exp(paired.mean):.2f} [{low:.2f}, {high:.2f}]', f'{paired.p_value:.3g}'


def comparisons(experiment: spec_lib.Experiment, results: list) -> list[tuple]:
  """(row, {seed: Seed}, planned seeds) for every trained row but the
  baseline and the sweep groups' rows, in table order."""
  by_name = {r.name: r for r in experiment.rows}
  base = by_name[experiment.baseline]
  done = {(r.cell.row.name, r.cell.seed): r for r in results if r.status == 'finished'}
  out = []
  for row in experiment.rows:
    if row is base or row.group or row.audit:
      continue
    seeds = row.seeds if row.seeds is not None else experiment.seeds
    pairs = {}
    for seed in seeds:
      if (row.name, seed) in done and (base.name, seed) in done:
        found = per_seed(done[(row.name, seed)], done[(base.name, seed)])
        if found is not None:
          pairs[seed] = found
    out.append((row, pairs, len(seeds)))
  return out


def markdown(experiment: spec_lib.Experiment, results: list) -> list[str]:
  """The 'Steps to the baseline's loss' section of RESULTS.md."""
  split = experiment.splits[0]
  lines = [
    f"## Steps to the baseline's {split} {experiment.metric} ({experiment.baseline})",
    '',
    f"At each seed, the steps a row takes to reach the baseline's final {split} "
    f'{experiment.metric}, interpolated between evaluations, against the steps the baseline '
    'takes; ratio = baseline steps / row steps (> 1: fewer steps), geometric mean over seeds '
    'with its 95% interval and the p-value of log ratio = 0. Wall-clock: the same ratio times '
    "the row's train tokens/s over the baseline's. A seed that never reaches the target counts "
    'at its last step (an upper bound on its ratio).',
    '',
    '| row | n | not reached | steps (mean) | step ratio [95% CI] | p | wall-clock ratio [95% CI] |',
    '| --- | --- | --- | --- | --- | --- | --- |',
  ]
  for row, pairs, planned in comparisons(experiment, results):
    if not pairs:
      lines.append(f'| {row.name} | 0 of {planned} | | | | | |')
      continue
    seeds = list(pairs.values())
    ratio, p = _summary([s.ratio for s in seeds])
    wall, _ = _summary([s.wall_ratio for s in seeds])
    lines.append(
      f'| {row.name} | {len(seeds)} of {planned} | {sum(not s.reached for s in seeds)} | '
      f'{statistics.fmean(s.steps for s in seeds):,.0f} | {ratio} | {p} | {wall} |'
    )
  return lines + ['']
