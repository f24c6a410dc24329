"""`python -m research.audit --workdir=DIR --probe=NAME[,NAME...] [--reference=DIR]`.

Audits a finished run with the probes of research.audits.PROBES
(docs/audit.md): the latest checkpoint of DIR, with the config it was saved
with. Each probe writes WORKDIR/audit/NAME.json (its figures and intervals,
coverage, the sha256 of the data it read, the checkpoint step, the code
revision and the time) and prints a short table; MODEL_CARD.md's probe
sections are then regenerated from every file in WORKDIR/audit/.

  --reference   another run on the same tokenizer, for the membership
                attack calibrated by a reference model (Watson et al. 2022).
  --data_path, --tfds_dir  where the run's data lies on this machine, when not
                where it was trained (as research.generate).

An unknown probe, a workdir that holds no run, or a probe that cannot apply to
this model (e.g. `weat` without a word vocabulary) is one `error:` line, exit
status 2; the probes that did apply have written their files by then.
"""

import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from research import audits
from research import cli
from research import distributed
from research import faults
from research import host
from research import metrics
from research import model_card
from research import provenance
from research import workdir as workdir_lib
from research.audits import context

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run: its checkpoints and data.')
_PROBE = flags.DEFINE_list(
  'probe', None, f'Probes to run, comma-separated: {", ".join(audits.PROBES)}.'
)
_REFERENCE = flags.DEFINE_string(
  'reference', None, 'A reference run (same tokenizer) for the calibrated membership attack.'
)
_DATA_PATH = flags.DEFINE_string('data_path', '', "config.data.path here ('' : as trained).")
_TFDS_DIR = flags.DEFINE_string('tfds_dir', '', "config.data.tfds_dir here ('' : as trained).")
flags.mark_flags_as_required(['workdir', 'probe'])


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


def main(argv):
  del argv  # cli.flags_parser refuses stray arguments.
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  host.tune_allocator()
  try:
    run_audit(
      _WORKDIR.value,
      [n.strip() for n in _PROBE.value],
      reference=_REFERENCE.value,
      locations={'path': _DATA_PATH.value, 'tfds_dir': _TFDS_DIR.value},
    )
  except (faults.RunError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  return 0


if __name__ == '__main__':
  host.reexec_with_huge_pages()
  app.run(main, flags_parser=cli.flags_parser(None))
