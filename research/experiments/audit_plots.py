"""The plot of an experiment's occupation audit rows (research/experiments/audit_rows.py).

occupations.png has one panel per audit row that runs the `occupations` probe
(research/audits/occupations.py): x is an occupation's U.S. BLS share of
women (%), y the model's gap log p(she sentence) - log p(he sentence) in nats,
read from each finished cell's CELL/audit/occupations.json. A light dot per
seed and occupation, a dark one per occupation at its mean over the row's
finished seeds (occupations every one of those seeds covers), the
least-squares line through the means and a dashed line at gap 0 (no
preference). The title gives n occupations, Pearson r of the means and the
mean of the per-seed r with its 95% Student-t interval over seeds (what the
occupations table shows as `model.pearson`).
"""

import json
import os

import numpy as np

from research.experiments import audit_rows
from research.experiments import plots
from research.experiments import runner
from research.experiments import spec as spec_lib
from research.experiments import stats

OCCUPATION_PLOT = 'occupations.png'
_PROBE = 'occupations'
_ANNOTATED = 2  # Occupations named at each end of the gap axis.


def occupation_rows(experiment: spec_lib.Experiment) -> list[spec_lib.Row]:
  """The audit rows that run the occupations probe (one panel each)."""
  return [r for r in experiment.rows if _PROBE in audit_rows.probes(r)]


def seed_results(root: str, experiment: spec_lib.Experiment, row, results: list) -> list[dict]:
  """`row`'s occupations results (the JSON's `result`) of its finished cells, by seed."""
  out = []
  for r in sorted(results, key=lambda r: r.cell.seed):
    path = os.path.join(runner.workdir(root, experiment, r.cell), 'audit', f'{_PROBE}.json')
    if r.cell.row == row and r.status == 'finished' and os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        out.append(json.load(f)['result'])
  return out


def least_squares(x, y) -> tuple[float, float]:
  """(slope, intercept) minimising sum (y - slope x - intercept)^2."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  dx = x - x.mean()
  slope = float(np.dot(dx, y - y.mean()) / np.dot(dx, dx))
  return slope, float(y.mean() - slope * x.mean())


def _points(per_seed: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(occupations covered in every seed, their BLS shares, gaps [seeds, occupations])."""
  per = [s['per_occupation'] for s in per_seed]
  names = sorted(o for o, v in per[0].items() if all('gap' in p.get(o, {}) for p in per))
  share_O = np.asarray([per[0][o]['bls_pct_female'] for o in names], np.float64)
  gap_SxO = np.asarray([[p[o]['gap'] for o in names] for p in per], np.float64)
  return names, share_O, gap_SxO


def _title(row, n: int, r_means: float, per_seed: list[dict]) -> str:
  seed_r = [s['model']['pearson'] for s in per_seed if 'pearson' in s['model']]
  title = f'{row.name}: {n} occupations, r = {r_means:+.2f} (means)'
  if seed_r:
    mean, half = stats.confidence_interval(seed_r)
    spread = f' ± {half:.2f}' if half is not None else ''
    title += f'\nmean of the per-seed r {mean:+.2f}{spread} (95%, {len(seed_r)} seeds)'
  return title


def _panel(ax, row, per_seed: list[dict]) -> None:
  """One row's scatter, fitted line and title on `ax`."""
  ax.axhline(0.0, color='grey', linestyle='--', linewidth=1)
  ax.set_xlim(0, 100)
  ax.set_xlabel('BLS share of women (%)')
  ax.set_ylabel('gap: log p(she) - log p(he) (nats)')
  names, share_O, gap_SxO = _points(per_seed) if per_seed else ([], None, None)
  if len(names) < 2:  # No line to fit: the panel says why.
    why = 'not run' if not per_seed else f'{len(names)} occupations in every seed'
    ax.set_title(f'{row.name}: {why}')
    ax.text(0.5, 0.5, why, ha='center', va='center', color='grey', transform=ax.transAxes)
    return
  for s, gap_O in enumerate(gap_SxO):
    label = 'one seed' if s == 0 else None
    ax.plot(share_O, gap_O, 'o', color='tab:blue', alpha=0.25, markersize=3, label=label)
  mean_O = gap_SxO.mean(axis=0)
  ax.plot(share_O, mean_O, 'o', color='tab:blue', markersize=5, label='mean over seeds')
  slope, intercept = least_squares(share_O, mean_O)
  x = np.asarray([0.0, 100.0])
  ax.plot(
    x,
    intercept + slope * x,
    color='tab:red',
    label=f'least squares: {slope:+.4f} nats per % point',
    gid='least_squares',
  )
  order = np.argsort(mean_O)
  for i in {*order[:_ANNOTATED], *order[-_ANNOTATED:]}:
    right = share_O[i] > 70  # Written leftwards, so the name stays inside the panel.
    ax.annotate(
      names[i],
      (share_O[i], mean_O[i]),
      xytext=(-3 if right else 3, 3),
      textcoords='offset points',
      ha='right' if right else 'left',
      fontsize=8,
    )
  ax.legend(fontsize=7)
  ax.set_title(_title(row, len(names), float(np.corrcoef(share_O, mean_O)[0, 1]), per_seed))


def occupation_figure(root: str, experiment: spec_lib.Experiment, results: list):
  """The figure of occupations.png (module docstring); returns (figure, list of axes)."""
  plt = plots._pyplot()
  rows = occupation_rows(experiment)
  ncols = min(len(rows), 2)
  nrows = -(-len(rows) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
  axes = list(axes.flat)
  for ax, row in zip(axes, rows):
    _panel(ax, row, seed_results(root, experiment, row, results))
    ax.title.set_fontsize(9)
  for ax in axes[len(rows) :]:
    ax.set_visible(False)
  fig.suptitle(
    f"{experiment.name}: the model's pronoun gap against the BLS share of women per occupation",
    fontsize=9,
  )
  return fig, axes[: len(rows)]


def write_occupation_plot(root: str, directory: str, experiment, results: list) -> list[str]:
  """Writes occupations.png when a row runs the occupations probe; returns [its path] or []."""
  if not occupation_rows(experiment):
    return []
  fig, _ = occupation_figure(root, experiment, results)
  return [plots._write(plots._pyplot(), fig, os.path.join(directory, OCCUPATION_PLOT))]
