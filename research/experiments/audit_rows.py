"""Audit rows: an experiment's probes of another row's finished models.

A row with `audit` set (spec.Row) trains nothing. `audit` names probes of
research.audits.PROBES ('occupations,crows_pairs', 'membership'), `audit_from`
the row whose cell at the same seed they read, and `audit_reference` (optional)
the row whose cell at that seed calibrates the membership attack. Its cell runs

  python -m research.audit --workdir=SOURCE --probe=AUDIT --out=CELL [--reference=REF]

once those cells have finished (research/experiments/runner.py): the results
go to CELL/audit/PROBE.json, CELL/runs.jsonl records the audit's start and end,
and the audited workdir is only read. The cell is then finished, failed (a
probe that cannot apply exits with status 2; its `error:` line is the reason)
or not run, as any cell.

Its figures (`figures`): every number of a result file's `result`, as the
record whose metric is the probe and whose split is the number's key path in
`result` joined with '.' (a list's items by index). Occupations' Pearson r is
(split 'model.pearson', metric 'occupations'), the lower end of its interval
('model.pearson_interval.0', 'occupations'), membership's AUC ('auc',
'membership'), TPR at 1% FPR ('tpr_at_fpr.0.01', 'membership'). A spec.Table
whose metric is a probe therefore shows one probe's figures side by side, a
column per figure, each row's mean and 95% interval over its seeds.
"""

import glob
import json
import math
import os

# Row fields that make a row train something; an audit row sets none of them.
_TRAINING_FIELDS = (
  'config',
  'overrides',
  'compress',
  'finetune_steps',
  'from_cells',
  'published',
  'group',
  'baseline',
)


def probes(row) -> list[str]:
  """The probes an audit row runs ([] : not an audit row)."""
  return [n.strip() for n in row.audit.split(',')] if row.audit else []


def earlier(row) -> dict[str, str]:
  """'audit_from' and 'audit_reference' -> the row each names ('' : none)."""
  return {'audit_from': row.audit_from, 'audit_reference': row.audit_reference}


def check(experiment) -> None:
  """Raises ValueError for an audit row that cannot run, or one named as a baseline."""
  audit_names = [r.name for r in experiment.rows if r.audit]
  for base in {experiment.baseline} | {r.baseline for r in experiment.rows}:
    if base in audit_names:
      raise ValueError(f'baseline={base!r} is an audit row, which has no figure of the metric.')
  for row in experiment.rows:
    if not (row.audit or row.audit_from or row.audit_reference):
      continue
    if not row.audit or not row.audit_from:
      raise ValueError(
        f'Row {row.name!r}: an audit row names both audit (its probes) and audit_from (the '
        'row whose model it audits).'
      )
    trains = [f for f in _TRAINING_FIELDS if getattr(row, f)]
    if trains:
      raise ValueError(f'Row {row.name!r}: an audit row trains nothing; drop its {trains}.')
    # Here, not at the top: the probes import JAX, which a spec without audit rows never needs.
    from research import audits  # pylint: disable=g-import-not-at-top

    unknown = [n for n in probes(row) if n not in audits.PROBES]
    if unknown:
      raise ValueError(
        f'Row {row.name!r}: audit={row.audit!r} names unknown probes {unknown}; probes: '
        f"{', '.join(audits.PROBES)} (several: audit='occupations,crows_pairs')."
      )
    if row.audit_reference and 'membership' not in probes(row):
      raise ValueError(
        f'Row {row.name!r}: audit_reference calibrates the membership probe, which '
        f'audit={row.audit!r} does not run.'
      )


def _numbers(value, path: str):
  """(key path, number) of every finite number in `value` (module docstring)."""
  if isinstance(value, dict):
    items = value.items()
  elif isinstance(value, list):
    items = enumerate(value)
  else:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      yield path, float(value)
    return
  for key, item in items:
    yield from _numbers(item, f'{path}.{key}' if path else str(key))


def figures(workdir: str) -> dict[tuple[str, str], float]:
  """(split, metric) -> value of every number in WORKDIR/audit/*.json (module docstring)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'audit', '*.json'))):
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    out.update({(k, record['probe']): v for k, v in _numbers(record['result'], '')})
  return out


def shown(row, metric: str, rows) -> bool:
  """Whether a further table of `metric` lists `row`: an audit row in the tables
  of its probes, any other row in the tables of metrics that no audit row of
  `rows` has as a probe (its own are never there)."""
  if row.audit:
    return metric in probes(row)
  return not any(metric in probes(r) for r in rows)
