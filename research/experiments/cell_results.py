"""What each cell of an experiment gave (`CellResult`): read from its workdir
(`collect`: metrics.jsonl, runs.jsonl, cell.json, an audit row's JSON files)
or, for a cell whose workdir is elsewhere, from the experiment folder's
results.csv (`read_recorded`), which report.write wrote.
"""

import collections
import csv
import dataclasses
import os

from research import provenance
from research.experiments import audit_rows
from research.experiments import runner
from research.experiments import spec as spec_lib


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


def _recorded_lines(table: str) -> list[dict]:
  """The lines of an existing results.csv that hold a cell's figure (not a
  published value); [] without the file."""
  if not os.path.exists(table):
    return []
  with open(table, newline='') as f:
    return [r for r in csv.DictReader(f) if r['seed'] != 'published' and r['value']]


def recorded_cells(table: str) -> set[str]:
  """Cells (ROW-sSEED) with a value in an existing results.csv."""
  return {f'{r["row"]}-s{r["seed"]}' for r in _recorded_lines(table)}


def read_recorded(
  directory: str, root: str, experiment: spec_lib.Experiment
) -> dict[str, CellResult]:
  """The cells of the spec that the experiment folder's results.csv holds, as
  results (`recorded`): their figures to the six digits the file keeps, wall
  time and hardware; no curves, epochs or revision (the file has none). A
  diverged cell's NaN comes back as a divergence."""
  by_cell = collections.defaultdict(list)
  for r in _recorded_lines(os.path.join(directory, 'results.csv')):
    by_cell[f'{r["row"]}-s{r["seed"]}'].append(r)
  out = {}
  for cell in spec_lib.cells(experiment):
    mine = by_cell.get(cell.name)
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
