"""The PNG plots of an experiment's table (research/experiments/report.py)."""

import math
import os

from research.experiments import ablation
from research.experiments import spec as spec_lib
from research.experiments import stats
from research.experiments import sweep as sweep_lib
from research.experiments import traces as traces_lib


SWEEP_PLOT = 'lr_sweep.png'


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
  return _write(plt, fig, path)


def _write(plt, fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _row_colors(plt, n: int) -> list:
  """One colour per row: matplotlib's ten, then their lighter pairs (tab20),
  so up to 20 rows never share one (a shared colour made two rows' dotted
  published lines one row's)."""
  tab20 = list(plt.get_cmap('tab20').colors)
  colors = tab20[0::2] + tab20[1::2]
  return [colors[i % len(colors)] for i in range(n)]


# Label spacings on a log axis, coarse to fine: powers of ten, 1-2-5, then
# finer steps for an axis spanning less than a decade.
_LOG_MANTISSAS = ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
# Labels closer than this fraction of the axis would touch (10-point labels on
# a 3.5-inch axis).
_MIN_LABEL_GAP = 1 / 14


def readable_log_axis(ax) -> None:
  """Labels the log-scaled y axis of `ax` at round values across its view.

  matplotlib labels the powers of ten, and on an axis shorter than a decade
  only a few minor ticks (an axis from 78 to 250 read 80, 90, 100): here the
  finest round values whose labels keep apart are the labelled ticks, written
  plainly (2.5, not 2.5 x 10^0); unlabelled minor ticks stay at 2..9 x 10^k.
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  low, high = sorted(ax.get_ylim())  # Not yaxis.get_view_interval(): it skips pending autoscaling.
  axis = ax.yaxis
  span = math.log10(high / low)
  ticks = None
  for mantissas in _LOG_MANTISSAS:
    candidates = [
      m * 10.0**k
      for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
      for m in mantissas
    ]
    inside = [v for v in candidates if low <= v <= high]
    gaps = [math.log10(b / a) for a, b in zip(inside, inside[1:])]
    if len(inside) >= 2 and min(gaps) < _MIN_LABEL_GAP * span:
      break
    ticks = inside
  if ticks is None:  # Many decades: matplotlib's own thinned powers of ten.
    return
  if len(ticks) < 3:  # Too short a range for round values: evenly spaced ones.
    ticks = [v for v in ticker.MaxNLocator(5).tick_values(low, high) if low <= v <= high]
  axis.set_major_locator(ticker.FixedLocator(ticks))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
  axis.set_minor_locator(ticker.LogLocator(subs=tuple(range(2, 10))))
  axis.set_minor_formatter(ticker.NullFormatter())


def valid_figure(experiment: spec_lib.Experiment, results: list):
  """The figure of valid_per_epoch.png: every cell's validation curve in its
  row's colour, each published validation value a dotted line; one legend
  entry per row names both. Returns (figure, axes)."""
  plt = _pyplot()
  from matplotlib.legend_handler import HandlerTuple  # pylint: disable=g-import-not-at-top

  colors = _row_colors(plt, len(experiment.rows))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  handles, labels = [], []
  for row, color in zip(experiment.rows, colors):
    drawn = []
    for r in (x for x in results if x.cell.row == row and x.history):
      epochs, values = zip(*r.history)
      (line,) = ax.plot(epochs, values, marker='.', color=color)
      drawn = drawn or [line]  # One seed's curve stands for the row's.
    ran = bool(drawn)
    if 'valid' in row.published:
      drawn.append(ax.axhline(row.published['valid'], color=color, linestyle=':', linewidth=1))
    if drawn:
      handles.append(tuple(drawn))
      labels.append(row.name if ran else f'{row.name}: published')
  ax.set_xlabel('epoch')
  ax.set_ylabel(f'validation {experiment.metric}')
  ax.set_yscale('log')
  readable_log_axis(ax)
  ax.set_title(
    f'{experiment.name}: validation {experiment.metric} per epoch (dotted: published)', fontsize=9
  )
  if handles:
    # Many rows go beside the plot, where they cover no curve.
    outside = len(handles) > 8
    if outside:  # Wider, so the plot keeps its width beside the legend.
      fig.set_size_inches(9, 4.5)
    ax.legend(
      handles,
      labels,
      handler_map={tuple: HandlerTuple(ndivide=None)},
      fontsize=7 if outside else None,
      **({'loc': 'upper left', 'bbox_to_anchor': (1.01, 1.0)} if outside else {}),
    )
  return fig, ax


def final_figure(experiment: spec_lib.Experiment, results: list):
  """The figure of final.png: each row's final figure per split, mean and 95%
  interval, and the published values. Returns (figure, axes)."""
  plt = _pyplot()
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  fig, ax = plt.subplots(figsize=(7, 4.5))
  width = 0.8 / max(len(experiment.splits), 1)
  labelled = set()

  def once(label):  # The first point of a kind carries its legend entry.
    if label in labelled:
      return None
    labelled.add(label)
    return label

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
          color=colors[k % len(colors)],
          capsize=4,
          label=once(f'ours ({split})'),
        )
      if split in row.published:
        ax.plot(
          x,
          row.published[split],
          marker='x',
          linestyle='none',
          color=colors[k % len(colors)],
          markersize=9,
          label=once(f'published ({split})'),
        )
  ax.set_xticks(range(len(experiment.rows)), [row.name for row in experiment.rows])
  ax.set_ylabel(experiment.metric)
  ax.set_title(
    f'{experiment.name}: final {experiment.metric}, mean and 95% interval over seeds', fontsize=9
  )
  if labelled:
    ax.legend(fontsize=8)
  return fig, ax


def write_plots(directory: str, experiment: spec_lib.Experiment, results: list) -> list[str]:
  """Writes valid_per_epoch.png and final.png from `results`
  (cell_results.CellResult); returns their paths. Where some results are recorded
  (no curves) and valid_per_epoch.png exists, it is left as it was drawn."""
  plt = _pyplot()
  curve = os.path.join(directory, 'valid_per_epoch.png')
  if not (any(r.recorded for r in results) and os.path.exists(curve)):
    fig, _ = valid_figure(experiment, results)
    _write(plt, fig, curve)
  fig, _ = final_figure(experiment, results)
  final = _write(plt, fig, os.path.join(directory, 'final.png'))
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


def sweep_figure(experiment: spec_lib.Experiment, results: list):
  """The figure of lr_sweep.png: each sweep group's counted final figure
  (research/experiments/sweep.py) against the swept value on a log axis, mean
  and 95% interval over seeds, one line per group; a ring marks a value where
  a seed diverged (counted at the initial figure). One panel per entry of
  `Sweep.panels` (each width, say), else one. Returns (figure, axes): the
  axes as a list when there are panels."""
  plt = _pyplot()
  sweep = experiment.sweep
  found = sweep_lib.groups(experiment, results)
  panels = sweep.panels or (('', tuple(g.name for g in found)),)
  fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), sharey=True)
  axes = [axes] if len(panels) == 1 else list(axes)
  values = sorted({p.value for g in found for p in g.points})
  for ax, (title, names) in zip(axes, panels):
    members = [g for g in found if g.name in names]
    _sweep_panel(plt, ax, members, values, sweep)
    ax.set_ylabel(f'final {experiment.metric} ({experiment.splits[0]})' if ax is axes[0] else '')
    if title:
      ax.set_title(title, fontsize=9)
  fig.suptitle(
    f'{experiment.name}: final {experiment.metric} per {sweep.label}, mean and 95% interval '
    'over seeds',
    fontsize=9,
  )
  for ax, (_, names) in zip(axes, panels):
    if ax.get_legend_handles_labels()[0]:
      outside = len(panels) == 1 and len(names) > 8  # Many groups go beside the plot.
      if outside:
        fig.set_size_inches(9, 4.5)
      ax.legend(
        fontsize=7 if outside else 8,
        **({'loc': 'upper left', 'bbox_to_anchor': (1.01, 1.0)} if outside else {}),
      )
  fig.tight_layout()
  return fig, (axes[0] if not sweep.panels else axes)


def _sweep_panel(plt, ax, found: list, values: list, sweep: spec_lib.Sweep) -> None:
  """The lines of `found`'s groups on `ax` (sweep_figure)."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  ringed = False
  for group, color in zip(found, _row_colors(plt, len(found))):
    points = [p for p in group.points if p.counted]
    if not points:
      continue
    intervals = [stats.confidence_interval(list(p.counted.values())) for p in points]
    ax.errorbar(
      [p.value for p in points],
      [m for m, _ in intervals],
      yerr=[h or 0.0 for _, h in intervals],
      marker='o',
      capsize=3,
      color=color,
      label=group.name,
    )
    diverged = [(p.value, m) for p, (m, _) in zip(points, intervals) if p.diverged]
    if diverged:
      ax.plot(
        *zip(*diverged),
        marker='o',
        markersize=12,
        markerfacecolor='none',
        linestyle='none',
        color=color,
      )
      ringed = True
  if ringed:  # One legend entry for the rings of every group, in no group's colour.
    ax.plot(
      [],
      [],
      marker='o',
      markersize=12,
      markerfacecolor='none',
      linestyle='none',
      color='black',
      label='a seed diverged (counted at the initial figure)',
    )
  if sweep.initial is not None:
    ax.axhline(sweep.initial, color='grey', linestyle=':', linewidth=1, label='at initialisation')
  ax.set_xscale('log')
  ax.xaxis.set_major_locator(ticker.FixedLocator(values))
  ax.xaxis.set_major_formatter(ticker.FixedFormatter([sweep_lib.rate_label(v) for v in values]))
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlabel(f'{sweep.label} ({sweep.key})')


def write_sweep_plot(directory: str, experiment: spec_lib.Experiment, results: list) -> str:
  """lr_sweep.png (`sweep_figure`); returns its path."""
  fig, _ = sweep_figure(experiment, results)
  return _write(_pyplot(), fig, os.path.join(directory, SWEEP_PLOT))


_ROLE_COLORS = {
  traces_lib.STABLE: 'tab:blue',
  traces_lib.UNSTABLE: 'tab:red',
  traces_lib.HIGHEST: 'tab:purple',
  traces_lib.BEST: 'tab:green',
}


def _readable_trace_axis(ax, yscale: str) -> None:
  """Round labels on a trace's y axis: `readable_log_axis` for 'log'; for a
  'symlog' view within one sign and less than 1.5 decades (log Z between 4 and 7),
  where the decade labels would leave it bare, evenly spaced values."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  if yscale == 'log':
    readable_log_axis(ax)
    return
  low, high = sorted(ax.get_ylim())
  if yscale == 'symlog' and low * high > 0 and math.log10(high / low) < 1.5:
    ticks = [v for v in ticker.MaxNLocator(6).tick_values(low, high) if low <= v <= high]
    ax.yaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
    ax.yaxis.set_minor_locator(ticker.NullLocator())


def trace_figure(experiment: spec_lib.Experiment, results: list, trace: spec_lib.Trace):
  """The figure of `trace.path` (research/experiments/traces.py): a panel per
  traced group, its cells solid and the group beside it dashed, a colour per
  role (highest stable, lowest unstable); a cross where a cell stopped on a
  non-finite loss. Returns (figure, list of axes)."""
  plt = _pyplot()
  drawn = traces_lib.panels(experiment, results, trace)
  by_point = sweep_lib.by_point(experiment, results)
  fig, axes = plt.subplots(
    1, len(drawn), figsize=(4.5 * len(drawn) + 0.5, 4.5), squeeze=False, sharey=True
  )
  for ax, panel in zip(axes[0], drawn):
    for group, style in ((panel.group, '-'), (panel.beside, '--')):
      for role, value in panel.lines if group else ():
        steps, values, diverged = traces_lib.series(
          by_point, trace.metric, group, value, panel.seed
        )
        if not steps:
          continue
        color = _ROLE_COLORS[role]
        label = f'{group}, {sweep_lib.rate_label(value)} ({role})'
        ax.plot(steps, values, linestyle=style, color=color, label=label)
        if diverged:
          ax.plot(steps[-1:], values[-1:], marker='x', markersize=9, color=color)
    ax.set_yscale(trace.yscale, **({'linthresh': 1.0} if trace.yscale == 'symlog' else {}))
    ax.set_xlabel('step')
    ax.set_title(
      panel.group
      + (f' (solid), {panel.beside} (dashed)' if panel.beside else '')
      + ('' if panel.lines else ': not run'),
      fontsize=8,
    )
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  axes[0][0].set_ylabel(f'{trace.metric} (train)')
  if any(ax.get_lines() for ax in axes[0]):  # The axes are shared: label the first.
    _readable_trace_axis(axes[0][0], trace.yscale)
  seeds = sorted({p.seed for p in drawn if p.seed is not None})
  fig.suptitle(
    f'{experiment.name}: {trace.metric} per step, seed {", ".join(map(str, seeds)) or "—"};\n'
    f'each group at its best, highest stable and lowest unstable {experiment.sweep.label} '
    '(x: stopped on a non-finite loss)',
    fontsize=8,
  )
  return fig, list(axes[0])


def write_trace_plots(directory: str, experiment: spec_lib.Experiment, results: list) -> list[str]:
  """Writes each of the spec's traces (`trace_figure`); returns their paths."""
  out = []
  for trace in experiment.traces:
    fig, _ = trace_figure(experiment, results, trace)
    out.append(_write(_pyplot(), fig, os.path.join(directory, trace.path)))
  return out
