"""The table of an experiment: RESULTS.md, results.csv and PNG plots.

Everything here is read from the cells' workdirs (metrics.jsonl, runs.jsonl,
cell.json), never typed in: `write` regenerates the three outputs from
whatever cells exist, listing cells not run with the command that runs them
and failed and diverged cells with their reason; a spec's sweep groups get
their section (sweep.py) and plot.
"""

import csv
import dataclasses
import os
import statistics
import time

from research import metrics
from research import provenance
from research.experiments import ablation
from research.experiments import audit_plots
from research.experiments import audit_rows
from research.experiments import claims
from research.experiments import curves
from research.experiments import plots
from research.experiments import runner
from research.experiments import spec as spec_lib
from research.experiments import stats
from research.experiments import sweep
from research.experiments import speedup
from research.experiments import traces
from research.experiments import tuning


@dataclasses.dataclass
class CellResult:
  cell: spec_lib.Cell
  status: str
  reason: str
  command: str
  final: dict  # split -> metric value at the end of training.
  history: list  # (epoch, valid metric) of every validation.
  epochs: float
  wall_seconds: float
  hardware: str
  revision: str
  # (split, metric) -> value at the end, for the spec's further tables.
  extra: dict = dataclasses.field(default_factory=dict)
  # split -> metric value of an evaluation at step 0 (before training), if any.
  initial: dict = dataclasses.field(default_factory=dict)
  # Train metric -> [(step, value)] of its train lines, for the spec's traces and claims (a
  # diverged cell's: those written before it stopped).
  train: dict = dataclasses.field(default_factory=dict)
  # (step, metric) of every evaluation of the first split, by step (speedup.py).
  curve: list = dataclasses.field(default_factory=list)
  # Figures read back from a previous results.csv (`recorded`), not from a workdir.
  recorded: bool = False


def shown_root(root: str) -> str:
  """`root` as the table's commands give it: relative to the current folder
  (the repository root, where the commands run), so a page written on one
  machine carries no absolute folder of it: --root=/work/workdirs run from
  /work/main shows ../workdirs, --root=workdirs/ shows workdirs."""
  return os.path.relpath(root)


def collect(
  root: str, experiment: spec_lib.Experiment, recorded: dict | None = None
) -> list[CellResult]:
  """Each cell's state and figures from its workdir under `root`; its command
  names the workdir under `shown_root(root)`. A cell without a result there
  takes its entry of `recorded` (cell name -> CellResult, `read_recorded`) if
  it has one."""
  out = []
  for cell in spec_lib.cells(experiment):
    path = runner.workdir(root, experiment, cell)
    cell_state = runner.state(path)
    if cell_state.status not in runner.RESULTS and cell.name in (recorded or {}):
      out.append(recorded[cell.name])
      continue
    records = provenance.read_jsonl(os.path.join(path, 'metrics.jsonl'))
    runs = provenance.read_runs(path)
    final, extra = {}, {}
    wanted = {(s, t.metric) for t in experiment.tables for s in t.splits}
    if cell_state.status == 'finished' and cell.row.audit:  # Its audit files' figures.
      extra = {k: v for k, v in audit_rows.figures(path).items() if k in wanted}
    elif cell_state.status == 'finished':
      last = max(r['step'] for r in records)
      for r in records:
        if r['step'] != last:
          continue
        if r['split'] in experiment.splits:
          final[r['split']] = r[experiment.metric]
        extra.update({(r['split'], m): r[m] for s, m in wanted if s == r['split'] and m in r})
    history = [
      (r.get('epoch', float('nan')), r[experiment.metric]) for r in records if r['split'] == 'valid'
    ]
    starts = [r for r in runs if r['event'] == 'start']
    initial = {
      r['split']: r[experiment.metric]
      for r in records
      if r['step'] == 0 and r['split'] in experiment.splits and experiment.metric in r
    }
    traced = {t.metric for t in experiment.traces} | {c.metric for c in experiment.claims}
    traced |= {'tokens_per_s'} if experiment.steps_to_baseline else set()
    first = experiment.splits[0]
    curve = sorted(
      (r['step'], r[experiment.metric])
      for r in records
      if r['split'] == first and experiment.metric in r
    )
    train = {
      m: [(r['step'], r[m]) for r in records if r['split'] == 'train' and m in r]
      for m in sorted(traced - {''})
    }
    out.append(
      CellResult(
        cell=cell,
        status=cell_state.status,
        reason=cell_state.reason,
        command=runner.shown_command(shown_root(root), experiment, cell, python='python'),
        final=final,
        extra=extra,
        initial=initial,
        train=train,
        curve=curve,
        history=history,
        epochs=max([r.get('epoch', 0.0) for r in records], default=0.0),
        wall_seconds=provenance.wall_seconds(runs, [r['time'] for r in records if 'time' in r]),
        hardware=starts[-1]['hardware'] if starts else '',
        revision=starts[-1]['revision'] if starts else '',
      )
    )
  return out


def _duration(seconds: float) -> str:
  h, m, s = metrics.hours_minutes_seconds(seconds)
  return f'{h} h {m:02d} min' if h else f'{m} min {s:02d} s'


# Decimals of a row's mean (a cell's value gets one more): perplexities
# differ in the first decimal, losses and bits per character in the third.
# Counts (bytes, tokens per second) have none, and thousands separators.
_DECIMALS = {
  'perplexity': 1,
  'loss': 3,
  'bpc': 3,
  'exposure': 2,
  'epsilon': 2,
  'param_bytes': 0,
  'eval_tokens_per_s': 0,
  'generate_tokens_per_s': 0,
  'float_eval_tokens_per_s': 0,
  'size_ratio': 3,
  'eval_speedup': 2,
  'generate_speedup': 2,
}


def _fmt(mean, half, metric: str) -> str:
  d = _DECIMALS.get(metric, 3)
  return f'{mean:,.{d}f}' if half is None else f'{mean:,.{d}f} ± {half:,.{d}f}'


def trained(experiment: spec_lib.Experiment) -> spec_lib.Experiment:
  """`experiment` without its audit rows, which have no figure of its metric,
  and, where it has rows outside its sweep groups (rows tuned on them), without
  the groups' rows, which the sweep section shows: what the main table, the
  comparisons and their plots read."""
  rows = [r for r in experiment.rows if not r.audit]
  if any(not r.group for r in rows):
    rows = [r for r in rows if not r.group]
  return dataclasses.replace(experiment, rows=tuple(rows))


def results_markdown(experiment: spec_lib.Experiment, results: list[CellResult]) -> str:
  metric = experiment.metric
  lines = [
    f'# {experiment.title}',
    '',
    '<!-- Generated by `python -m research.experiments run|report '
    f'experiments/{experiment.name}`; do not edit by hand. -->',
    '',
  ]
  if experiment.notes:
    lines += [experiment.notes.strip(), '']
  lines += [
    f'Ours: mean ± half-width of the 95% Student-t interval over the '
    f'seeds that finished (n); a single seed has no interval. Metric: '
    f'{metric}. Wall time is the whole command (data, compilation, '
    'training, every evaluation), summed over resumed segments.',
    '',
    f'| row | split | published {metric} | ours | n | wall time per epoch | wall time | hardware |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for row in trained(experiment).rows:
    for split in experiment.splits:
      published = row.published.get(split)
      pub = f'{published:g}' if published is not None else '—'
      summary = stats.row_summary(row, results, split)
      if summary is None:
        cells = [r for r in results if r.cell.row == row]
        states = sorted({r.status for r in cells})
        # Finished cells without this split's figure were not scored on it.
        shown = 'not scored' if states == ['finished'] else ', '.join(states)
        lines.append(f'| {row.name} | {split} | {pub} | {shown} | 0 | | | |')
        continue
      mean, half, n, done = summary
      planned = sum(1 for r in results if r.cell.row == row)
      walls = [r.wall_seconds for r in done]
      # Only cells that ran a whole epoch: a shorter run (a fine-tuning of a
      # tenth of an epoch, a compression cell that trains none) would
      # extrapolate its start-up and evaluations to an epoch it never ran.
      per_epoch = [r.wall_seconds / r.epochs for r in done if r.epochs >= 1]
      hardware = '; '.join(sorted({r.hardware for r in done}))
      lines.append(
        f'| {row.name} | {split} | {pub} | {_fmt(mean, half, metric)} | {n} of {planned} | '
        f'{_duration(statistics.fmean(per_epoch)) if per_epoch else ""} | '
        f'{_duration(statistics.fmean(walls))} | {hardware} |'
      )
  sources = sorted({r.source for r in experiment.rows if r.source})
  if sources:
    lines += ['', 'Published values: ' + '; '.join(sources) + '.']
  lines += ['']
  for table in experiment.tables:
    lines += table_markdown(table, experiment, results)
  if experiment.baseline:
    lines += ablation.markdown(trained(experiment), results)
  if experiment.split_baseline:
    lines += ablation.split_markdown(trained(experiment), results)
  if experiment.sweep:
    lines += sweep.markdown(experiment, results)
  lines += tuning.markdown(experiment, results)
  if experiment.steps_to_baseline:
    lines += speedup.markdown(experiment, results)
  lines += traces.markdown(experiment, results) + claims.markdown(experiment, results)
  # A diverged cell is a result (re-running it diverges again), not a row to run.
  missing = [
    row.name
    for row in experiment.rows
    if not any(r.cell.row == row and r.status in runner.RESULTS for r in results)
  ]
  if missing:
    lines += [
      f'Rows without a finished cell here: {", ".join(missing)}. This '
      "command runs them (each cell's own command is listed below):",
      '',
      f'    python -m research.experiments run experiments/{experiment.name} '
      f'--cells={",".join(missing)}',
      '',
    ]
  recorded = [r.cell.name for r in results if r.recorded]
  if recorded:
    lines += [
      f'Cells whose figures are those the previous results.csv held (`--keep_recorded`): '
      f'{", ".join(recorded)}. Their workdirs are not on the machine '
      'that wrote this page, so their figures have six significant digits, their epochs and '
      'code revision are not shown, and valid_per_epoch.png is left as it was last drawn.',
      '',
    ]
  lines += [
    '## Cells',
    '',
    '| cell | status | '
    + ' | '.join(experiment.splits)
    + ' | epochs | wall time | revision | command or reason |',
    '| --- | --- | ' + ' | '.join('---' for _ in experiment.splits) + ' | --- | --- | --- | --- |',
  ]
  for r in results:
    d = _DECIMALS.get(metric, 3) + 1
    values = ' | '.join(f'{r.final[s]:.{d}f}' if s in r.final else '' for s in experiment.splits)
    detail = r.reason if r.status in ('failed', 'diverged') else f'`{r.command}`'
    if r.recorded:
      detail = f'recorded: figures from the previous results.csv (no workdir here); {detail}'
    wall = _duration(r.wall_seconds) if r.wall_seconds else ''
    epochs = '' if r.recorded else f'{r.epochs:.2f}'
    lines.append(
      f'| {r.cell.name} | {r.status} | {values} | '
      f'{epochs} | {wall} | {r.revision[:12]} | {detail} |'
    )
  lines += [
    '',
    'Plots: ' + ', '.join(_plot_names(experiment)) + '.',
    '',
    f'Generated {time.strftime("%Y-%m-%d %H:%M %Z")}.',
    '',
  ]
  return '\n'.join(lines)


def _plot_names(experiment: spec_lib.Experiment) -> list[str]:
  """The plots `write` makes, each with what it shows."""
  names = []
  if not swept_only(experiment):
    names += [
      '`valid_per_epoch.png` (validation per epoch, every cell)',
      '`final.png` (final figures per row with their interval, and the published values)',
    ]
  if experiment.baseline:
    names.append('`differences.png` (each row minus the baseline, paired by seed)')
  if experiment.split_baseline:
    names.append('`splits.png` (each row per split)')
  if experiment.sweep:
    names.append(f'`{plots.SWEEP_PLOT}` (each sweep group per {experiment.sweep.label})')
  if experiment.steps_to_baseline:
    names.append(f'`{curves.PLOT}` (each row against step, mean and 95% band over seeds)')
  names += [f'`{t.plot}` ({t.title.lower()})' for t in experiment.tables if t.plot]
  if audit_plots.occupation_rows(experiment):
    names.append(
      f'`{audit_plots.OCCUPATION_PLOT}` (per audit row of the occupations probe, the gap '
      'log p(she) - log p(he) against the BLS share of women per occupation, with its '
      'least-squares line)'
    )
  return names + [f'`{t.path}` ({t.metric} per step)' for t in experiment.traces]


def table_markdown(
  table: spec_lib.Table, experiment: spec_lib.Experiment, results: list[CellResult]
) -> list[str]:
  """A further table's lines: one line per row, one column per split, each
  `mean ± 95% half-width (n)` over the row's finished cells ('—': none has it)."""
  lines = [f'## {table.title}', '']
  if table.note:
    lines += [table.note.strip(), '']
  lines += [
    '| row | ' + ' | '.join(table.label(s) for s in table.splits) + ' |',
    '| --- | ' + ' | '.join('---' for _ in table.splits) + ' |',
  ]
  for row in _table_rows(table, experiment).rows:
    shown = []
    for split in table.splits:
      summary = stats.row_summary(row, results, split, table.metric)
      if summary is None:
        shown.append('—')
      else:
        mean, half, n, _ = summary
        shown.append(f'{_fmt(mean, half, table.metric)} ({n})')
    lines.append(f'| {row.name} | ' + ' | '.join(shown) + ' |')
  return lines + ['']


def _table_rows(table: spec_lib.Table, experiment: spec_lib.Experiment) -> spec_lib.Experiment:
  """`experiment` with the rows a further table lists: those of its probe's
  audit rows in a table of audit figures, the other rows in any other."""
  rows = experiment.rows
  return dataclasses.replace(
    experiment, rows=tuple(r for r in rows if audit_rows.shown(r, table.metric, rows))
  )


def write_csv(path: str, experiment: spec_lib.Experiment, results: list[CellResult]) -> None:
  """One line per cell, split and metric; published values with seed
  'published'; a diverged cell's figure on the first split is 'nan'."""
  with open(path, 'w', newline='') as f:
    out = csv.writer(f)
    out.writerow(['row', 'seed', 'split', 'metric', 'value', 'wall_seconds', 'hardware'])
    for row in experiment.rows:
      for split in experiment.splits:
        if split in row.published:
          out.writerow(
            [row.name, 'published', split, experiment.metric, row.published[split], '', '']
          )
    for r in results:
      for split in experiment.splits:
        if split in r.final:
          out.writerow(
            [
              r.cell.row.name,
              r.cell.seed,
              split,
              experiment.metric,
              f'{r.final[split]:.6g}',
              f'{r.wall_seconds:.1f}',
              r.hardware,
            ]
          )
      if r.status == 'diverged':  # Stopped on a non-finite loss: its final figure is NaN.
        out.writerow(
          [
            r.cell.row.name,
            r.cell.seed,
            experiment.splits[0],
            experiment.metric,
            'nan',
            f'{r.wall_seconds:.1f}',
            r.hardware,
          ]
        )
      for (split, metric), value in sorted(r.extra.items()):
        out.writerow(
          [
            r.cell.row.name,
            r.cell.seed,
            split,
            metric,
            f'{value:.6g}',
            f'{r.wall_seconds:.1f}',
            r.hardware,
          ]
        )


def recorded_cells(table: str) -> set[str]:
  """Cells (ROW-sSEED) with a value in an existing results.csv."""
  if not os.path.exists(table):
    return set()
  with open(table, newline='') as f:
    return {
      f'{r["row"]}-s{r["seed"]}'
      for r in csv.DictReader(f)
      if r['seed'] != 'published' and r['value']
    }


def read_recorded(
  directory: str, root: str, experiment: spec_lib.Experiment
) -> dict[str, CellResult]:
  """The cells of the spec that the experiment folder's results.csv holds, as
  results (`recorded`): their figures to the six digits the file keeps, wall
  time and hardware; no curves, epochs or revision (the file has none). A
  diverged cell's NaN comes back as a divergence."""
  table = os.path.join(directory, 'results.csv')
  if not os.path.exists(table):
    return {}
  with open(table, newline='') as f:
    lines = [r for r in csv.DictReader(f) if r['seed'] != 'published' and r['value']]
  out = {}
  for cell in spec_lib.cells(experiment):
    mine = [r for r in lines if r['row'] == cell.row.name and r['seed'] == str(cell.seed)]
    if not mine:
      continue
    final, extra = {}, {}
    for r in mine:
      value = float(r['value'])
      if r['split'] in experiment.splits and r['metric'] == experiment.metric:
        final[r['split']] = value
      else:
        extra[(r['split'], r['metric'])] = value
    diverged = any(v != v for v in final.values())  # NaN: the runner's mark of a divergence.
    out[cell.name] = CellResult(
      cell=cell,
      status='diverged' if diverged else 'finished',
      reason='recorded in results.csv as diverged' if diverged else '',
      command=runner.shown_command(shown_root(root), experiment, cell, python='python'),
      final={} if diverged else final,
      extra=extra,
      history=[],
      epochs=float('nan'),
      wall_seconds=float(mine[0]['wall_seconds'] or 0.0),
      hardware=mine[0]['hardware'],
      revision='',
      recorded=True,
    )
  return out


def finished_cells(root: str, experiment: spec_lib.Experiment) -> set[str]:
  """Names of the cells whose workdirs under `root` hold a result: a finished
  run, or a diverged one."""
  return {
    cell.name
    for cell in spec_lib.cells(experiment)
    if runner.state(runner.workdir(root, experiment, cell)).status in runner.RESULTS
  }


def check_nothing_dropped(
  directory: str, root: str, experiment: spec_lib.Experiment, kept: set[str] | frozenset[str]
) -> None:
  """Refuses a table rewrite that would drop recorded results.

  Args:
    directory: the experiment folder (its results.csv is the record).
    root: where the cells' workdirs are (named in the message).
    experiment: the spec.
    kept: cells the new table will have: those finished under `root`, and
      before a run also those about to run.

  Raises:
    ValueError: results.csv has values for cells not in `kept` (their
      workdirs are elsewhere or gone).
  """
  table = os.path.join(directory, 'results.csv')
  lost = sorted(recorded_cells(table) - set(kept))
  if lost:
    raise ValueError(
      f'{table} holds results of {", ".join(lost)}, which are not finished '
      f'under --root={root} (expected in {os.path.join(root, experiment.name)}'
      '/CELL). Rewriting it would drop them: point --root at the workdirs '
      'that hold them, or pass --force to rewrite the table without them.'
    )


def swept_only(experiment: spec_lib.Experiment) -> bool:
  """Whether every row (audit rows apart) is a point of a sweep group: then lr_sweep.png shows
  the final figures, and a plot per row (tens of them) is left out."""
  return bool(experiment.sweep) and all(row.group for row in trained(experiment).rows)


def write(
  directory: str,
  root: str,
  experiment: spec_lib.Experiment,
  force: bool = False,
  keep_recorded: bool = False,
) -> list[str]:
  """Writes RESULTS.md, results.csv and the plots; returns their paths.

  Unless `force`, first `check_nothing_dropped` (nothing is written when it
  raises). With `keep_recorded`, a cell without a result under `root` keeps
  the figures the folder's results.csv holds for it (`read_recorded`).
  """
  recorded = read_recorded(directory, root, experiment) if keep_recorded else {}
  results = collect(root, experiment, recorded)
  if not force:
    check_nothing_dropped(
      directory, root, experiment, {r.cell.name for r in results if r.status in runner.RESULTS}
    )
  table = os.path.join(directory, 'results.csv')
  markdown = os.path.join(directory, 'RESULTS.md')
  with open(markdown, 'w') as f:
    f.write(results_markdown(experiment, results))
  write_csv(table, experiment, results)
  written = [markdown, table]
  if not swept_only(experiment):  # A sweep's rows are lr_sweep.png's points.
    written += plots.write_plots(directory, trained(experiment), results)
  if experiment.baseline:
    written.append(plots.write_difference_plot(directory, trained(experiment), results))
  if experiment.split_baseline:
    written.append(plots.write_split_plot(directory, trained(experiment), results))
  for table in experiment.tables:
    if table.plot:
      shown = _table_rows(table, experiment)
      written.append(plots.write_table_plot(directory, table, shown, results))
  if experiment.sweep:
    written.append(plots.write_sweep_plot(directory, experiment, results))
  if experiment.steps_to_baseline:
    written.append(curves.write(directory, experiment, results))
  written += plots.write_trace_plots(directory, experiment, results)
  written += audit_plots.write_occupation_plot(root, directory, experiment, results)
  return written
