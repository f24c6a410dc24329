"""Rows whose setting is chosen on sweep groups (`Row.tuned_from`): the
protocol of a fair comparison (Wen et al. 2025, "Fantastic pretraining
optimizers and where to find them": every contender tuned by the same sweep,
then run on fresh seeds at its chosen setting).

A tuned row names sweep groups of the experiment (`Experiment.sweep`). Its
tuned keys are the sweep's key and every config key whose value differs
between the rows of those groups (a learning rate, a weight decay); its own
overrides give everything else (its budget, its optimizer) and may not set a
tuned key. Its cells start once every cell of those groups' rows has a result
(finished or diverged), with the tuned keys of the chosen row: the one whose
counted figure, averaged over its seeds, is the lowest (the lower swept value
on a tie). A cell's counted figure is the sweep's (research/experiments/
sweep.py, stats.counted_loss): the experiment's metric on its first split at
the cell's last step, and a diverged cell at its figure at initialisation
(its own evaluation at step 0, else `Sweep.initial`; without either,
infinity, so a diverged setting is never chosen). The test split plays no
part in the choice.

The choice is a function of the tuning cells' results, so the runner
computes a tuned cell's command when it starts it; before its tuning cells
have results, `choose` raises `NotTuned`, and the status, the dry run and the
Slurm script say so instead of a command.
"""

import dataclasses
import math
import os
import statistics
from typing import Callable

from research import provenance
from research.experiments import spec as spec_lib
from research.experiments import stats

# The runner states a tuning cell may end in for the choice to read it (runner.RESULTS).
ENDED = ('finished', 'diverged')


class NotTuned(Exception):
  """A tuned row's setting is not chosen yet: some tuning cells have no result."""


@dataclasses.dataclass(frozen=True)
class Choice:
  row: spec_lib.Row  # The chosen tuning row.
  overrides: dict  # Tuned key -> the chosen row's value.
  # (tuning row, its mean counted figure, seeds counted, seeds diverged), in spec order.
  scores: tuple


PROTOCOL = (
  "Each tuned row's setting is chosen on its tuning groups' cells alone (the sweep section "
  'above shows them): the setting with the lowest counted figure on the first split, '
  'averaged over its tuning seeds, a diverged cell counting at its figure at initialisation; '
  "then the row's own seeds run at it. The test split plays no part in the choice "
  '(Wen et al. 2025: every contender tuned by the same protocol).'
)


def read_outcome(path: str, experiment: spec_lib.Experiment) -> tuple:
  """(final figure or None, figure at step 0 or None) of the workdir's first
  split, from its metrics.jsonl."""
  split = experiment.splits[0]
  records = [
    r
    for r in provenance.read_jsonl(os.path.join(path, 'metrics.jsonl'))
    if r.get('split') == split and experiment.metric in r
  ]
  at_start = [r[experiment.metric] for r in records if r['step'] == 0]
  final = max(records, key=lambda r: r['step'])[experiment.metric] if records else None
  return final, (at_start[0] if at_start else None)


def choose(
  experiment: spec_lib.Experiment, row: spec_lib.Row, outcome_of: Callable[[spec_lib.Cell], tuple]
) -> Choice:
  """The chosen setting of tuned `row` (the module's docstring);
  `outcome_of(cell)` gives (runner state, final figure or None, figure at step
  0 or None). Raises NotTuned naming the tuning cells without a result yet."""
  cells = spec_lib.tuning_cells(experiment, row)
  outcomes = {c.name: outcome_of(c) for c in cells}
  waiting = [n for n, o in outcomes.items() if o[0] not in ENDED]
  if waiting:
    raise NotTuned(f'{row.name} is tuned once {", ".join(waiting)} have results')
  scores = []
  for tuning_row in spec_lib.tuning_rows(experiment, row):
    counted, diverged = [], 0
    for cell in (c for c in cells if c.row == tuning_row):
      status, final, initial = outcomes[cell.name]
      initial = initial if initial is not None else experiment.sweep.initial
      final = final if status == 'finished' else None
      value, diverged_here = stats.counted_loss(final, math.inf if initial is None else initial)
      counted.append(value)
      diverged += diverged_here
    scores.append((tuning_row, statistics.fmean(counted), len(counted), diverged))
  best = min(scores, key=lambda s: (s[1], experiment.sweep.value(s[0])))[0]
  keys = spec_lib.tuned_keys(experiment, row)
  return Choice(best, {k: best.overrides[k] for k in keys if k in best.overrides}, tuple(scores))


def markdown(experiment: spec_lib.Experiment, results: list) -> list[str]:
  """The 'Tuning' section: each tuned row's chosen setting (`cell_results.CellResult`s)."""
  tuned = [r for r in experiment.rows if r.tuned_from]
  if not tuned:
    return []
  split = experiment.splits[0]
  by_name = {r.cell.name: r for r in results}

  def outcome(cell):
    r = by_name.get(cell.name)
    return (
      ('not run', None, None) if r is None else (r.status, r.final.get(split), r.initial.get(split))
    )

  lines = [
    '## Tuning',
    '',
    PROTOCOL,
    '',
    f'| row | tuned on | chosen | its {experiment.splits[0]} {experiment.metric} '
    '(mean over tuning seeds) | settings tried | diverged cells |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  for row in tuned:
    try:
      choice = choose(experiment, row, outcome)
    except NotTuned as e:
      lines.append(f'| {row.name} | {", ".join(row.tuned_from)} | not yet: {e} | | | |')
      continue
    chosen = ', '.join(
      f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in choice.overrides.items()
    )
    score = next(s for s in choice.scores if s[0] == choice.row)[1]
    swept = [experiment.sweep.value(r) for r in spec_lib.tuning_rows(experiment, row)]
    if experiment.sweep.value(choice.row) in (min(swept), max(swept)):
      chosen += ' (at the edge of the swept range: a wider sweep may do better)'
    lines.append(
      f'| {row.name} | {", ".join(row.tuned_from)} | {chosen} | {score:.4f} | '
      f'{len(choice.scores)} | {sum(s[3] for s in choice.scores)} |'
    )
  return lines + ['']
