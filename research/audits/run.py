"""Runs probes on a finished workdir (the library behind `python -m
research.audit`, research/audit.py, which adds the flags): each probe's
result goes to WORKDIR/audit/NAME.json and MODEL_CARD.md's probe sections are
regenerated from those files (docs/audit.md). With `out` (an experiment's
audit cell) they go to OUT/audit/NAME.json instead, OUT/runs.jsonl records
the audit's start and end, and WORKDIR is only read."""

import json
import math
import os
import time

import numpy as np

from research import audits
from research import distributed
from research import metrics
from research import model_card
from research import provenance
from research import workdir as workdir_lib
from research.audits import context


def _jsonable(value):
  """`value` with numpy scalars and arrays as Python ones, NaN and infinities as None."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_result(
  ctx: context.Context, probe: audits.Probe, result: dict, folder: str | None = None
) -> str:
  """Writes FOLDER/NAME.json atomically (default WORKDIR/audit); returns its path."""
  folder = folder or os.path.join(ctx.workdir, model_card.AUDIT_DIR)
  os.makedirs(folder, exist_ok=True)
  record = {
    'probe': probe.name,
    'workdir': ctx.workdir,
    'step': ctx.step,
    'revision': provenance.revision(),
    'time': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
    'data': result.get('data', {}),
    'result': _jsonable(result),
    'card': probe.card(result),
  }
  path = os.path.join(folder, f'{probe.name}.json')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1, allow_nan=False)
  os.replace(path + '.tmp', path)
  return path


def run_audit(
  workdir: str,
  names: list[str],
  *,
  reference: str | None = None,
  locations: dict | None = None,
  out: str | None = None,
) -> dict[str, dict]:
  """Runs the probes `names` on `workdir` (module docstring); returns
  {name: result} of those that applied.

  `out`: the audit's own folder (None: `workdir`). `workdir` (and `reference`)
  must then hold finished runs. OUT's lock is held instead of WORKDIR's, so
  that audits of one finished run in several folders run at once; its
  runs.jsonl gets a start and an end, 'finished' when every probe applied,
  else 'failed'; WORKDIR's MODEL_CARD.md is left as it is.

  Raises:
    ValueError: an unknown probe, or a workdir that holds no readable run (with
      `out`: no finished run), one line each.
    context.NotApplicable: after the others ran, naming every probe that could
      not apply and why.
  """
  probes = audits.get(names)
  workdir_lib.readable_workdir(workdir)
  if reference is not None:
    workdir_lib.readable_workdir(reference, flag='--reference')
  # An audit cell's figures must not depend on when it ran: a Slurm task may start before
  # the training it reads has finished.
  for path in [p for p in (workdir, reference) if p and out is not None]:
    runs = provenance.read_runs(path)
    if not (runs and runs[-1]['event'] == 'end' and runs[-1]['status'] == 'finished'):
      raise ValueError(f'{path} holds no finished run (runs.jsonl); --out audits only those.')
  results, refused, status = {}, [], 'failed'
  with distributed.workdir_held(out or workdir):
    if out is not None:
      provenance.record_start(out)
    try:
      ctx = context.load(workdir, locations)
      options = {} if reference is None else {'reference': context.load(reference, locations)}
      folder = os.path.join(out or workdir, model_card.AUDIT_DIR)
      for probe in probes:
        try:
          result = probe.run(ctx, options)
        except context.NotApplicable as e:
          refused.append(str(e))
          continue
        path = write_result(ctx, probe, result, folder)
        metrics.console('%s\n  (written to %s)', probe.table(result), path)
        results[probe.name] = result
      if out is None and results and model_card.update_probe_sections(workdir) is None:
        metrics.console(
          'note: %s has no %s to add the probe sections to.', workdir, model_card.FILE
        )
      status = 'failed' if refused else 'finished'
    finally:
      if out is not None:
        provenance.record_end(out, status)
  if refused:
    raise context.NotApplicable(
      f'{"; ".join(r.rstrip(".") for r in refused)} ({len(results)} of {len(probes)} probes '
      f'ran on {workdir}).'
    )
  return results
