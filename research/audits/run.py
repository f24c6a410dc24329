"""Runs probes on a finished workdir (the library behind `python -m
research.audit`, research/audit.py, which adds the flags): each probe's
result goes to WORKDIR/audit/NAME.json and MODEL_CARD.md's probe sections are
regenerated from those files (docs/audit.md)."""

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


def write_result(ctx: context.Context, probe: audits.Probe, result: dict) -> str:
  """Writes WORKDIR/audit/NAME.json atomically; returns its path."""
  folder = os.path.join(ctx.workdir, model_card.AUDIT_DIR)
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
  workdir: str, names: list[str], *, reference: str | None = None, locations: dict | None = None
) -> dict[str, dict]:
  """Runs the probes `names` on `workdir` (module docstring); returns
  {name: result} of those that applied.

  Raises:
    ValueError: an unknown probe, or a workdir that holds no readable run
      (one line each).
    context.NotApplicable: after the others ran, naming every probe that could
      not apply and why.
  """
  probes = audits.get(names)
  workdir_lib.readable_workdir(workdir)
  if reference is not None:
    workdir_lib.readable_workdir(reference, flag='--reference')
  results, refused = {}, []
  with distributed.workdir_held(workdir):
    ctx = context.load(workdir, locations)
    options = {} if reference is None else {'reference': context.load(reference, locations)}
    for probe in probes:
      try:
        result = probe.run(ctx, options)
      except context.NotApplicable as e:
        refused.append(str(e))
        continue
      path = write_result(ctx, probe, result)
      metrics.console('%s\n  (written to %s)', probe.table(result), path)
      results[probe.name] = result
    if results and model_card.update_probe_sections(workdir) is None:
      metrics.console('note: %s has no %s to add the probe sections to.', workdir, model_card.FILE)
  if refused:
    raise context.NotApplicable(
      f'{"; ".join(r.rstrip(".") for r in refused)} ({len(results)} of {len(probes)} probes '
      f'ran on {workdir}).'
    )
  return results
