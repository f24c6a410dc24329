"""The PNG plots of an experiment's table (research/experiments/report.py)."""

import os

from research.experiments import ablation
from research.experiments import spec as spec_lib
from research.experiments import stats


def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend (imported on first use:
  the runner needs it only to write a table)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def _save(plt, fig, ax, path: str, legend_size) -> str:
  """Adds the legend (if anything is labelled), writes `path`, closes."""
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=legend_size)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_plots(directory: str, experiment: spec_lib.Experiment, results: list) -> list[str]:
  """Writes valid_per_epoch.png and final.png from `results`
  (report.CellResult); returns their paths."""
  plt = _pyplot()

  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, row in enumerate(experiment.rows):
    for j, r in enumerate(x for x in results if x.cell.row == row and x.history):
      epochs, values = zip(*r.history)
      ax.plot(
        epochs,
        values,
        marker='.',
        color=colors[i % len(colors)],
        label=row.name if j == 0 else None,
      )
    if 'valid' in row.published:
      ax.axhline(row.published['valid'], color=colors[i % len(colors)], linestyle=':', linewidth=1)
  ax.set_xlabel('epoch')
  ax.set_ylabel(f'validation {experiment.metric}')
  ax.set_yscale('log')
  ax.set_title(
    f'{experiment.name}: validation {experiment.metric} per epoch (dotted: published)', fontsize=9
  )
  curve = _save(plt, fig, ax, os.path.join(directory, 'valid_per_epoch.png'), None)

  fig, ax = plt.subplots(figsize=(7, 4.5))
  width = 0.8 / max(len(experiment.splits), 1)
  for k, split in enumerate(experiment.splits):
    for i, row in enumerate(experiment.rows):
      x = i + (k - (len(experiment.splits) - 1) / 2) * width
      summary = stats.row_summary(row, results, split)
      if summary is not None:
        mean, half, _, _ = summary
        ax.errorbar(
          x,
          mean,
          yerr=half or 0.0,
          fmt='o',
          color=colors[k],
          capsize=4,
          label=f'ours ({split})' if i == 0 else None,
        )
      if split in row.published:
        ax.plot(
          x,
          row.published[split],
          marker='x',
          linestyle='none',
          color=colors[k],
          markersize=9,
          label=f'published ({split})' if i == 0 else None,
        )
  ax.set_xticks(range(len(experiment.rows)), [row.name for row in experiment.rows])
  ax.set_ylabel(experiment.metric)
  ax.set_title(
    f'{experiment.name}: final {experiment.metric}, mean and 95% interval over seeds', fontsize=9
  )
  final = _save(plt, fig, ax, os.path.join(directory, 'final.png'), 8)
  return [curve, final]


def write_difference_plot(directory: str, experiment: spec_lib.Experiment, results: list) -> str:
  """differences.png: each row minus the baseline, seed-paired, with its 95%
  interval per split (crosses: the published difference). Returns its path."""
  plt = _pyplot()

  compared = ablation.comparisons(experiment, results)
  names = list(dict.fromkeys(row.name for row, _, _, _ in compared))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names) + 2), 4.5))
  width = 0.8 / max(len(experiment.splits), 1)
  labelled = set()
  for row, split, paired, published in compared:
    k = experiment.splits.index(split)
    x = names.index(row.name) + (k - (len(experiment.splits) - 1) / 2) * width
    if paired is not None:
      ax.errorbar(
        x,
        paired.mean,
        yerr=paired.half or 0.0,
        fmt='o',
        color=colors[k % len(colors)],
        capsize=4,
        label=None if ('ours', split) in labelled else f'ours ({split})',
      )
      labelled.add(('ours', split))
    if published is not None:
      ax.plot(
        x,
        published,
        marker='x',
        linestyle='none',
        markersize=9,
        color=colors[k % len(colors)],
        label=None if ('pub', split) in labelled else f'published ({split})',
      )
      labelled.add(('pub', split))
  ax.axhline(0.0, color='grey', linewidth=1)
  # A row compared with a baseline of its own names it under its label.
  own = {r.name: r.baseline for r in experiment.rows if r.baseline not in ('', experiment.baseline)}
  labels = [f'{n}\n(minus {own[n]})' if n in own else n for n in names]
  ax.set_xticks(range(len(names)), labels, rotation=30, ha='right')
  ax.set_ylabel(f'{experiment.metric} minus the baseline')
  ax.set_title(
    f'{experiment.name}: difference from {experiment.baseline} (unless a row names its own),\n'
    'paired by seed, 95% interval',
    fontsize=9,
  )
  path = _save(plt, fig, ax, os.path.join(directory, 'differences.png'), 8)
  return path


def _per_split(
  path, title, rows, results, splits, labels, metric, metric_name, references=None
) -> str:
  """Each row's mean and 95% interval on every split, in order, one line per
  row; `metric` None: the experiment's own; `references`: label -> value,
  drawn as dotted horizontal lines."""
  plt = _pyplot()

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label, value in (references or {}).items():
    ax.axhline(value, color='grey', linestyle=':', linewidth=1)
    ax.annotate(label, (0, value), textcoords='offset points', xytext=(2, 3), fontsize=7)
  for row in rows:
    points = []
    for k, split in enumerate(splits):
      summary = stats.row_summary(row, results, split, metric)
      if summary is not None:
        points.append((k, summary[0], summary[1] or 0.0))
    if points:
      xs, means, halves = zip(*points)
      ax.errorbar(xs, means, yerr=halves, marker='o', capsize=3, label=row.name)
  ax.set_xticks(range(len(splits)), labels)
  ax.set_ylabel(metric_name)
  ax.set_title(title, fontsize=9)
  return _save(plt, fig, ax, path, 8)


def write_split_plot(directory: str, experiment: spec_lib.Experiment, results: list) -> str:
  """splits.png: each row's mean and 95% interval on every split, in the
  spec's order (evaluation contexts, say), one line per row."""
  return _per_split(
    os.path.join(directory, 'splits.png'),
    f'{experiment.name}: {experiment.metric} per split, mean and 95% interval',
    experiment.rows,
    results,
    experiment.splits,
    experiment.splits,
    None,
    experiment.metric,
  )


def write_table_plot(
  directory: str, table: spec_lib.Table, experiment: spec_lib.Experiment, results: list
) -> str:
  """`table.plot`: a further table's metric per column, one line per row."""
  return _per_split(
    os.path.join(directory, table.plot),
    f'{experiment.name}: {table.title.lower()}, mean and 95% interval',
    experiment.rows,
    results,
    table.splits,
    [table.label(s) for s in table.splits],
    table.metric,
    table.metric,
    table.references,
  )
