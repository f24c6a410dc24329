"""Train metrics against step for chosen cells of a learning-rate sweep
(spec.Trace): what the attention logits or log Z did in the last run that
stayed stable and the first that did not, the curves Wortsman et al. 2024
draw for their models (Section 3.1).

For a traced group, at its lowest seed s: its highest stable value is the
largest swept value whose cell at s counted and did not diverge by sweep.py's
rule (finished, figure finite and not above the loss at initialisation); its
lowest unstable value the smallest whose cell at s diverged. A group with no
diverged cell at s shows its highest swept value instead, and says so. Its
best value (the lowest counted figure at s) is drawn too where it is neither,
so a sweep in which nothing diverges still shows the metric at the best rate
beside the highest. The
group beside it is drawn at the same two values and seed, dashed, so the
difference an option makes is read at the same learning rate.
"""

import dataclasses
import math

from research.experiments import runner
from research.experiments import spec as spec_lib
from research.experiments import sweep as sweep_lib

STABLE, UNSTABLE, HIGHEST = 'highest stable', 'lowest unstable', 'highest rate (none diverged)'
BEST = 'best'  # The value of the lowest counted figure at the seed, where it is none of those.


@dataclasses.dataclass(frozen=True)
class Panel:
  """One traced group: the values drawn for it and for the group beside it."""

  group: str
  beside: str  # '' : none.
  seed: int | None  # The group's lowest seed (None: the spec has no such group).
  lines: tuple  # (role, swept value): [BEST,] STABLE, then UNSTABLE or HIGHEST; a value once.

  def cells(self, experiment: spec_lib.Experiment) -> list[str]:
    """The names of the cells drawn, the traced group's first."""
    rows = experiment.sweep.groups(experiment.rows)
    out = []
    for group in (self.group, self.beside):
      by_value = {experiment.sweep.value(r): r for r in rows.get(group, [])}
      out += [spec_lib.Cell(by_value[v], self.seed).name for _, v in self.lines if v in by_value]
    return out


def panels(experiment: spec_lib.Experiment, results: list, trace: spec_lib.Trace) -> list[Panel]:
  """The cells `trace` draws, a panel per traced group, from `results`
  (cell_results.CellResult)."""
  found = {g.name: g for g in sweep_lib.groups(experiment, results)}
  out = []
  for i, name in enumerate(trace.groups):
    beside = trace.beside[i] if trace.beside else ''
    group = found.get(name)
    if group is None or not group.seeds:
      out.append(Panel(name, beside, None, ()))
      continue
    seed = group.seeds[0]
    stable = [p.value for p in group.points if seed in p.counted and seed not in p.diverged]
    unstable = [p.value for p in group.points if seed in p.diverged]
    lines = [(STABLE, max(stable))] if stable else []
    if unstable:
      lines.append((UNSTABLE, min(unstable)))
    elif stable and group.points[-1].value != max(stable):
      lines.append((HIGHEST, group.points[-1].value))
    best = group.best_at(seed)
    if best is not None and best not in [v for _, v in lines]:
      lines.insert(0, (BEST, best))  # Where nothing diverges, the growth from here.
    out.append(Panel(name, beside, seed, tuple(lines)))
  return out


def _status(by_point: dict, name: str, group: str, value: float, seed: int) -> str:
  result = by_point.get((group, value, seed))
  state = result.status if result is not None else 'not in the spec'
  if state in runner.RESULTS and not any(math.isfinite(v) for _, v in result.train.get(name, [])):
    state += f', no {name} lines'
  return state


def series(by_point: dict, metric: str, group: str, value: float, seed: int) -> tuple:
  """(steps, values, diverged) of one cell's finite train values of `metric`;
  `by_point` is sweep.by_point's."""
  result = by_point.get((group, value, seed))
  if result is None:
    return (), (), False
  points = [(s, v) for s, v in result.train.get(metric, []) if math.isfinite(v)]
  steps, values = zip(*points) if points else ((), ())
  return steps, values, result.status == 'diverged'


def markdown(experiment: spec_lib.Experiment, results: list) -> list[str]:
  """The 'Traces' section of RESULTS.md: which cells each plot shows."""
  if not experiment.traces:
    return []
  by_point = sweep_lib.by_point(experiment, results)
  found = {g.name: g for g in sweep_lib.groups(experiment, results)}
  rows = experiment.sweep.groups(experiment.rows)
  lines = [
    '## Traces',
    '',
    "Train metrics against step at a group's lowest seed: its highest stable "
    f'{experiment.sweep.label} (the largest value whose cell counted and did not diverge, as '
    'in the sweep table) and its lowest unstable one (the smallest whose cell diverged), '
    'solid; the group beside it at the same two values, dashed; a cross where a cell stopped '
    'on a non-finite loss. A group none of whose cells diverged shows its highest value '
    'instead. The best value (the lowest counted figure at that seed) is drawn too where it '
    'is neither.',
    '',
  ]
  for trace in experiment.traces:
    lines += [f'`{trace.path}` ({trace.metric}, {trace.yscale} axis):', '']
    for panel in panels(experiment, results, trace):
      if not panel.lines:
        lines.append(f'- {panel.group}: not run (no such group, or no counted cell yet).')
        continue
      shown = []
      for role, value in panel.lines:
        cells = [
          f'{spec_lib.Cell(r, panel.seed).name} '
          f'({_status(by_point, trace.metric, g, value, panel.seed)})'
          for g in (panel.group, panel.beside)
          if g
          for r in rows.get(g, [])
          if experiment.sweep.value(r) == value
        ]
        shown.append(f'{role} {sweep_lib.rate_label(value)}: ' + ', '.join(cells))
      if not any(role == UNSTABLE for role, _ in panel.lines):
        top = sweep_lib.rate_label(panel.lines[-1][1])
        done = sum(1 for p in found[panel.group].points if panel.seed in p.counted)
        planned = len(found[panel.group].points)
        so_far = '' if done == planned else f' of the {done} of {planned} counted so far'
        shown.append(
          f'no cell{so_far} diverged at seed {panel.seed}, so the highest rate ({top}) is shown'
        )
      lines.append(f'- {panel.group}: ' + '; '.join(shown) + '.')
    lines.append('')
  return lines
