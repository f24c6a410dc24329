"""The run's folder: made writable before any work, an old run moved aside
for `--fresh`, the config written beside the checkpoints, and checkpoints
saved so that a full disk stops the run with the good ones intact."""

import errno
import os
import time

import ml_collections

from research import checkpoint
from research import faults


def check_writable(workdir: str) -> None:
  """Fails before any work when the workdir cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise faults.RunError(
      f'Cannot write to the workdir {workdir!r} ({e.strerror or e}). Choose '
      'a writable --workdir or fix its permissions.'
    ) from e


def move_aside(workdir: str) -> str | None:
  """Moves a previous run's files to WORKDIR/previous/TIME/ (for --fresh);
  returns that folder, or None when there was nothing to move."""
  names = [
    n
    for n in (
      'checkpoints',
      'unreadable_checkpoints',
      'metrics.jsonl',
      'tensorboard',
      'runs.jsonl',
      'config.json',
    )
    if os.path.exists(os.path.join(workdir, n))
  ]
  if not names:
    return None
  target = os.path.join(workdir, 'previous', time.strftime('%Y%m%d-%H%M%S'))
  os.makedirs(target, exist_ok=True)
  for name in names:
    os.replace(os.path.join(workdir, name), os.path.join(target, name))
  return target


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))


def _disk_full(error: BaseException) -> bool:
  while error is not None:
    if (
      isinstance(error, OSError) and error.errno == errno.ENOSPC
    ) or 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def save(manager, step, state, data_iterator, config, tokenizer) -> None:
  try:
    checkpoint.check_for_errors(manager)  # A failed earlier async save.
    if checkpoint.latest_step(manager) != step:
      checkpoint.save(manager, step, state, data_iterator, config, tokenizer)
  except Exception as e:  # pylint: disable=broad-except
    _raise_save_error(e, manager, step)


def wait(manager, step) -> None:
  try:
    checkpoint.wait(manager)
  except Exception as e:  # pylint: disable=broad-except
    _raise_save_error(e, manager, step)


def _raise_save_error(error, manager, step):
  if not _disk_full(error):
    raise error
  good = [s for s in manager.all_steps() if s < step]
  raise faults.RunError(
    f'No space left on device while writing a checkpoint to '
    f'{manager.directory} (at or before step {step}). The checkpoints '
    f'already there ({good or "none"}) are intact. Free some space (or set '
    'keep_checkpoints lower) and run the same command to continue.'
  ) from error


def _tuples(value):
  """Lists (JSON's sequences) back to the tuples configs hold."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def saved_config(
  workdir: str, step: int | None, locations: dict | None = None
) -> tuple[ml_collections.ConfigDict, int]:
  """(the config checkpoint `step` (default: the latest) was saved with, step).

  `locations`: config.data keys ('path', 'tfds_dir') giving where the data lies
  on this machine; they replace the saved ones ('' or None: kept).

  Raises:
    FileNotFoundError: the workdir has no checkpoint, or not that step.
  """
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=None)
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(
      f'No checkpoint in {workdir}/checkpoints: train first (python -m research.main '
      f'--config=... --workdir={workdir}).'
    )
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f'--step={step} is not a checkpoint of {workdir}; it has {steps}.')
  saved = _tuples(checkpoint.restore_config(manager, step))
  manager.close()
  config = ml_collections.ConfigDict(with_defaults(saved))
  config.data.update({k: v for k, v in (locations or {}).items() if v})
  return config, step


def with_defaults(saved: dict) -> dict:
  """`saved` with the keys added to the code since it was written, at their
  defaults (what that run used): configs/common.py's, the model family's."""
  from configs import common  # pylint: disable=g-import-not-at-top

  defaults = common.base_config().to_dict()
  family = saved.get('model', {}).get('name')
  if family in ('lstm', 'transformer'):
    defaults['model'] = getattr(common, f'{family}_model')().to_dict()

  def merge(into: dict, default: dict) -> dict:
    out = dict(into)
    for key, value in default.items():
      if key not in out:
        out[key] = _tuples(value)
      elif isinstance(value, dict) and isinstance(out[key], dict):
        out[key] = merge(out[key], value)
    return out

  return merge(saved, defaults)
