"""curves.png: each row's curve of the first split's figure against step, the
mean over its seeds with a 95% band, for an experiment that counts steps to
its baseline's loss (`Experiment.steps_to_baseline`: the curves the step
ratios are read from).

At each evaluated step every finished seed of the row has a value for, the
line is their mean and the band its 95% Student-t interval (stats.
confidence_interval); a step some seeds lack is left out, so a row's line
never mixes seeds. The baseline's final mean is a dotted level: where a
row's line crosses it is where it reaches the baseline's loss.
"""

import os

from research.experiments import plots
from research.experiments import spec as spec_lib
from research.experiments import stats

PLOT = 'curves.png'


def _with_curves(row: spec_lib.Row, results: list) -> list:
  """`row`'s finished cells that have a curve (one read back from results.csv has none)."""
  return [r for r in results if r.cell.row == row and r.status == 'finished' and r.curve]


def bands(row: spec_lib.Row, results: list) -> list[tuple]:
  """[(step, mean, 95% half-width or None)] of `row`'s finished cells' first
  split curves (cell_results.CellResult.curve), at the steps every one of them has."""
  curves = [dict(r.curve) for r in _with_curves(row, results)]
  if not curves:
    return []
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  return [(s, *stats.confidence_interval([c[s] for c in curves])) for s in steps]


def write(directory: str, experiment: spec_lib.Experiment, results: list) -> str:
  """Writes curves.png for the spec's rows outside sweep groups; returns its path."""
  plt = plots._pyplot()  # pylint: disable=protected-access
  rows = [r for r in experiment.rows if not r.group and not r.audit]
  colors = plots._row_colors(plt, len(rows))  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for row, color in zip(rows, colors):
    found = bands(row, results)
    if not found:
      continue
    steps, means, halves = zip(*found)
    seeds = len(_with_curves(row, results))
    ax.plot(steps, means, color=color, label=f'{row.name} ({seeds} seeds)')
    if all(h is not None for h in halves):
      low = [m - h for m, h in zip(means, halves)]
      high = [m + h for m, h in zip(means, halves)]
      ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    if row.name == experiment.baseline:
      ax.axhline(means[-1], color=color, linestyle=':', linewidth=1)
  split = experiment.splits[0]
  ax.set_xlabel('step')
  ax.set_ylabel(f'{split} {experiment.metric}')
  ax.set_yscale('log')
  plots.readable_log_axis(ax)
  ax.set_title(
    f'{experiment.name}: {split} {experiment.metric}, mean and 95% band over seeds '
    f"(dotted: {experiment.baseline}'s final)",
    fontsize=9,
  )
  return plots._save(plt, fig, ax, os.path.join(directory, PLOT), 8)  # pylint: disable=protected-access
