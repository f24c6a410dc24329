"""Published claims tested on a learning-rate sweep (spec.Claim), for the
"Published claims" section of RESULTS.md.

A claim compares a treated side with a comparison side in matched pairs (sweep
groups, one pair per width; or rows, paired by seed) on one quantity
(spec.CLAIM_QUANTITIES), per unit:

- `sensitivity`: a group's LR sensitivity at one seed (sweep.py: the mean over
  the swept values of the counted figure minus the best one); units (pair, seed).
- `peak`: a cell's peak of a train metric, the largest |value| over its finite
  train values (a diverged cell's: the lines it wrote before it stopped), at
  every swept value >= `Claim.above`; units (pair, seed, value).
- `best_shift`: at one seed, a group's best value is the one with the lowest
  counted figure (the lower value on a tie; only seeds with every value's cell,
  as for the sensitivity); the shift is |log10 best(pair 2's group) - log10
  best(pair 1's group)|, in decades, the treated groups' against the
  comparison groups'; units: seeds.

The difference is treated minus comparison over the units both have
(stats.paired_difference: mean, 95% Student-t interval, p, and the smallest
difference the design detects four times out of five). Verdict: 'reproduced'
when the interval excludes 0 on the expected side (`Claim.direction`), 'not
reproduced' when it excludes 0 on the other, 'not significant' otherwise (and
with one unit, which has no interval), 'not run' without a unit.
"""

import dataclasses
import math

from research.experiments import runner
from research.experiments import spec as spec_lib
from research.experiments import speedup
from research.experiments import stats
from research.experiments import sweep as sweep_lib


@dataclasses.dataclass(frozen=True)
class Outcome:
  """One claim, tested."""

  claim: spec_lib.Claim
  label: str
  paired: stats.Paired | None
  verdict: str
  planned: int  # Units the spec's cells make.
  missing: tuple  # Cells the claim reads that have no usable result yet.
  needed: int  # Cells the claim reads.
  absent: tuple  # Groups the claim names that the spec does not have.


_TINY = 1e-30  # A zero peak's stand-in under log10.


def peak(series: list) -> float | None:
  """The largest |value| of [(step, value)] over its finite values; None: none."""
  finite = [abs(v) for _, v in series if math.isfinite(v)]
  return max(finite) if finite else None


def best_by_seed(group: sweep_lib.Group) -> dict:
  """seed -> the group's best swept value at that seed, for the seeds with
  every value's cell: the lowest counted figure, the lower value on a tie."""
  return {s: group.best_at(s) for s in group.sensitivity}


def _sensitivity(claim, found, by_point) -> tuple[dict, dict]:
  del by_point
  treated, comparison = {}, {}
  for i, pair in enumerate(claim.pairs):
    for side, name in zip((treated, comparison), pair):
      side.update({(i, s): v for s, v in found[name].sensitivity.items()})
  return treated, comparison


def _peak(claim, found, by_point) -> tuple[dict, dict]:
  del found
  treated, comparison = {}, {}
  for i, pair in enumerate(claim.pairs):
    for side, name in zip((treated, comparison), pair):
      for (group, value, seed), result in by_point.items():
        if group != name or not _at_or_above(value, claim.above):
          continue
        top = peak(result.train.get(claim.metric, []))
        if result.status in runner.RESULTS and top is not None:
          side[(i, seed, value)] = math.log10(max(top, _TINY)) if claim.log10 else top
  return treated, comparison


def _best_shift(claim, found, by_point) -> tuple[dict, dict]:
  del by_point
  (treated_1, comparison_1), (treated_2, comparison_2) = claim.pairs
  out = []
  for first, second in ((treated_1, treated_2), (comparison_1, comparison_2)):
    one, two = best_by_seed(found[first]), best_by_seed(found[second])
    out.append({s: abs(math.log10(two[s]) - math.log10(one[s])) for s in set(one) & set(two)})
  return out[0], out[1]


def _finished(experiment, results) -> dict:
  """(row name, seed) -> its finished cell's result."""
  return {(r.cell.row.name, r.cell.seed): r for r in results if r.status == 'finished'}


def _final(claim, experiment, results) -> tuple[dict, dict]:
  split, done = experiment.splits[0], _finished(experiment, results)
  treated, comparison = {}, {}
  for i, pair in enumerate(claim.pairs):
    for side, name in zip((treated, comparison), pair):
      side.update({(i, s): r.final[split] for (n, s), r in done.items() if n == name})
  return treated, comparison


def _step_ratio(claim, experiment, results) -> tuple[dict, dict]:
  done, treated = _finished(experiment, results), {}
  for i, (row, base) in enumerate(claim.pairs):
    for (name, seed), result in done.items():
      if name == row and (base, seed) in done:
        found = speedup.per_seed(result, done[(base, seed)])
        if found is not None and 0 < found.ratio < math.inf:
          treated[(i, seed)] = math.log(found.ratio)
  return treated, dict.fromkeys(treated, 0.0)


# Quantity name (spec.CLAIM_QUANTITIES) -> (claim, groups by name, sweep.by_point) ->
# (treated, comparison), each unit -> value; the rows' quantities take (claim, experiment,
# results).
_MEASURES = {'sensitivity': _sensitivity, 'peak': _peak, 'best_shift': _best_shift}
_ROW_MEASURES = {'final': _final, 'step_ratio': _step_ratio}


def _at_or_above(value: float, above: float | None) -> bool:
  # A relative tolerance: 0.01 written as 1e-2 or reached as 10**-2 is the same value.
  return above is None or value >= above * (1 - 1e-9)


def _planned(claim: spec_lib.Claim, cells: dict) -> int:
  """The units the spec's cells make; `cells`: group -> {(value, seed)}."""
  if claim.quantity == 'best_shift':
    groups = [g for pair in claim.pairs for g in pair]
    return len(set.intersection(*({s for _, s in cells[g]} for g in groups)))
  count = 0
  for treated, comparison in claim.pairs:
    both = cells[treated] & cells[comparison]
    if claim.quantity == 'peak':
      count += sum(1 for v, _ in both if _at_or_above(v, claim.above))
    else:
      count += len({s for _, s in both})
  return count


def _missing(claim, experiment, found, by_point) -> tuple[list[str], int]:
  """(the cells the claim reads that have no usable result, the number it
  reads): not finished nor diverged, without a figure at initialisation
  (sweep.py), or, for a peak, without a finite value of the metric."""
  out, needed = [], 0
  groups = experiment.sweep.groups(experiment.rows)
  for name in dict.fromkeys(g for pair in claim.pairs for g in pair):
    for cell in (c for c in spec_lib.cells(experiment) if c.row in groups[name]):
      value = experiment.sweep.value(cell.row)
      if claim.quantity == 'peak' and not _at_or_above(value, claim.above):
        continue
      needed += 1
      result = by_point.get((name, value, cell.seed))
      if result is None or result.status not in runner.RESULTS:
        out.append(cell.name)
      elif claim.quantity == 'peak' and peak(result.train.get(claim.metric, [])) is None:
        out.append(cell.name)
      elif claim.quantity != 'peak' and cell.name in found[name].no_initial:
        out.append(cell.name)
  return out, needed


def verdict(paired: stats.Paired | None, direction: str, margin: float = 0.0) -> str:
  """'reproduced', 'not reproduced', 'not significant' or 'not run' (see the
  module docstring); `direction` 'lower': treated minus comparison expected < 0;
  'equal': expected within +-margin (reproduced when the interval lies inside,
  not reproduced when it excludes 0 and reaches past the margin)."""
  if paired is None:
    return 'not run'
  if paired.half is None:
    return 'not significant'
  low, high = paired.mean - paired.half, paired.mean + paired.half
  if direction == 'equal':
    if -margin < low and high < margin:
      return 'reproduced'
    return 'not reproduced' if (high < 0 or low > 0) else 'not significant'
  if high < 0 or low > 0:
    return 'reproduced' if (high < 0) == (direction == 'lower') else 'not reproduced'
  return 'not significant'


def outcomes(experiment: spec_lib.Experiment, results: list) -> list[Outcome]:
  """Each of the spec's claims tested on `results` (cell_results.CellResult)."""
  swept = experiment.sweep is not None
  found = {g.name: g for g in sweep_lib.groups(experiment, results)} if swept else {}
  by_point = sweep_lib.by_point(experiment, results) if swept else {}
  cells = {}
  for cell in spec_lib.cells(experiment):
    if cell.row.group and swept:
      cells.setdefault(cell.row.group, set()).add((experiment.sweep.value(cell.row), cell.seed))
  out = []
  for k, claim in enumerate(experiment.claims):
    label = claim.label or str(k + 1)
    if claim.quantity in spec_lib.ROW_CLAIM_QUANTITIES:
      out.append(_row_outcome(claim, label, experiment, results))
      continue
    named = list(dict.fromkeys(g for pair in claim.pairs for g in pair))
    absent = tuple(g for g in named if g not in found)
    if absent:
      out.append(Outcome(claim, label, None, 'not run', 0, (), 0, absent))
      continue
    treated, comparison = _MEASURES[claim.quantity](claim, found, by_point)
    paired = stats.paired_difference(treated, comparison)
    missing, needed = _missing(claim, experiment, found, by_point)
    planned = _planned(claim, cells)
    judged = verdict(paired, claim.direction)
    out.append(Outcome(claim, label, paired, judged, planned, tuple(missing), needed, ()))
  return out


def _row_outcome(claim, label, experiment, results) -> Outcome:
  """A claim on pairs of rows: units (pair, seed) with both rows' cells finished."""
  treated, comparison = _ROW_MEASURES[claim.quantity](claim, experiment, results)
  paired = stats.paired_difference(treated, comparison)
  cells, planned, missing = spec_lib.cells(experiment), 0, []
  done = _finished(experiment, results)
  for row, base in claim.pairs:
    seeds = {c.seed for c in cells if c.row.name == row} & {
      c.seed for c in cells if c.row.name == base
    }
    planned += len(seeds)
    missing += [f'{n}-s{s}' for s in sorted(seeds) for n in (row, base) if (n, s) not in done]
  missing = list(dict.fromkeys(missing))
  judged = verdict(paired, claim.direction, claim.margin)
  return Outcome(claim, label, paired, judged, planned, tuple(missing), 2 * planned, ())


def _expected(claim: spec_lib.Claim) -> str:
  if claim.direction == 'equal':
    return f'within ±{claim.margin:g}'
  return '< 0' if claim.direction == 'lower' else '> 0'


def _quantity_text(claim: spec_lib.Claim, label: str) -> str:
  if claim.quantity == 'final':
    return 'final figure'
  if claim.quantity == 'step_ratio':
    return "log(comparison's steps / treated's) to the comparison's final figure"

  if claim.quantity == 'peak':
    text = f'peak \\|{claim.metric}\\| at {label} ≥ {sweep_lib.rate_label(claim.above)}'
    return f'log10 of the {text}' if claim.log10 else text
  if claim.quantity == 'best_shift':
    return 'shift of the best rate between widths (decades)'
  return 'LR sensitivity'


def _pairs_text(claim: spec_lib.Claim) -> str:
  if claim.quantity == 'best_shift':
    (a1, b1), (a2, b2) = claim.pairs
    return f'shift {a1} → {a2} − shift {b1} → {b2}'
  return ', '.join(f'{a} − {b}' for a, b in claim.pairs)


def _difference_text(paired: stats.Paired | None) -> tuple[str, str, str]:
  """(mean [95% interval], p, detectable)."""
  if paired is None:
    return '—', '', ''
  if paired.half is None:
    return f'{paired.mean:+.3g} (one unit: no interval)', '', ''
  low, high = paired.mean - paired.half, paired.mean + paired.half
  return (
    f'{paired.mean:+.3g} [{low:+.3g}, {high:+.3g}]',
    f'{paired.p_value:.3f}',
    f'{paired.detectable:.3g}',
  )


# What a unit of each quantity is, said on the page only for the quantities its claims use.
_UNITS = {
  'sensitivity': 'The LR sensitivity pairs a treated sweep group with a comparison group (one '
  'pair per width); units: (pair, seed). Diverged cells count as in the sweep table.',
  'peak': "A peak is the largest |value| of a train metric over a cell's train lines (a "
  "diverged cell's: those it wrote before it stopped) at the rates at or above the stated "
  'one, fixed in the spec before the runs; units: (pair, seed, rate).',
  'best_shift': 'The shift of the best rate is |log₁₀ best at the wide width − log₁₀ best at '
  'the narrow one| per seed; units: seeds. Shifts move in steps of the swept grid, so they '
  'can have no spread and an interval of width 0: read n before the verdict.',
  'final': "A final figure pairs one row's cell with another's at the same seed; units: seeds.",
  'step_ratio': 'The step ratio is the log of the steps-to-baseline ratio, per seed (the '
  'table above); units: seeds.',
}
_MATCH = (
  "; 'within ±m' claims a match: reproduced when the interval lies inside the margin fixed "
  'before the runs, not reproduced when it excludes 0 and reaches past it'
)


def markdown(experiment: spec_lib.Experiment, results: list) -> list[str]:
  """The 'Published claims' section of RESULTS.md."""
  if not experiment.claims:
    return []
  used = {c.quantity for c in experiment.claims}
  units = [text for quantity, text in _UNITS.items() if quantity in used]
  matches = any(c.direction == 'equal' for c in experiment.claims)
  lines = [
    '## Published claims',
    '',
    'Each claim pairs a treated side with a comparison side, treated minus comparison: the '
    'mean of the paired differences with its 95% Student-t interval, the paired t-test '
    'p-value, and the smallest true difference this design would find significant at 5% four '
    'times out of five (detectable). ' + ' '.join(units) + ' Verdict: reproduced when the '
    'interval excludes 0 on the published side, not reproduced when it excludes 0 on the '
    'other, not significant otherwise' + (_MATCH if matches else '') + '. n: units with both '
    'sides, of those the spec plans.',
    '',
    '| claim | published | source | quantity | treated − comparison | expected | ours: mean '
    '[95% interval] | p | detectable | n | verdict |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  notes = []
  for o in outcomes(experiment, results):
    claim = o.claim
    difference, p, detectable = _difference_text(o.paired)
    n = o.paired.n if o.paired else 0
    lines.append(
      f'| {o.label} | {claim.statement} | {claim.source} | '
      f'{_quantity_text(claim, experiment.sweep.label if experiment.sweep else "")} | '
      f'{_pairs_text(claim)} | '
      f'{_expected(claim)} | {difference} | {p} | {detectable} | '
      f'{n} of {o.planned} | {o.verdict} |'
    )
    if o.absent:
      notes.append(f'- ({o.label}) not run: the spec has no group {", ".join(o.absent)}.')
    elif o.missing:
      notes.append(
        f'- ({o.label}) lacks {len(o.missing)} of its {o.needed} cells (not run, failed, '
        f'without a figure at initialisation or without the metric): {", ".join(o.missing)}.'
      )
  return lines + [''] + (notes + [''] if notes else [])
