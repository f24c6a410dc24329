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


def save(manager, step, state, data_iterator, config, tokenizer, noise=None) -> None:
  try:
    checkpoint.check_for_errors(manager)  # A failed earlier async save.
    if checkpoint.latest_step(manager) != step:
      checkpoint.save(manager, step, state, data_iterator, config, tokenizer, noise)
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


# What a tool reading a finished run may set (--config.KEY=VALUE) without the run's config
# file: where the data lies on this machine, how the model is scored and sampled, and on which
# devices. Everything else is the config the run was trained with, read from its checkpoint.
READ_ONLY_KEYS = (
  'data.path',
  'data.tfds_dir',
  'data.eval_batch_size',
  'eval',
  'sample',
  'mesh',
  'distributed',
)


def readable_workdir(path: str, step: int | None = None, *, flag: str = '--workdir') -> int:
  """The checkpoint step that a tool reading the finished run in `path` reads:
  `step`, or the latest. The one check of every such tool (research.generate,
  research.compress, --mode=eval, --mode=audit); it creates nothing.

  Raises:
    ValueError: one line naming what makes `path` unusable and the fix: it does
      not exist, is not a folder, cannot be read, holds no checkpoint, or not `step`.
  """
  name = f'{flag}={path}'
  train = f'python -m research.main --config=... --workdir={path}'
  if not os.path.exists(path):
    raise ValueError(
      f'{name} does not exist. Point {flag} at the folder of a trained run (`{train}` trains one).'
    )
  if not os.path.isdir(path):
    raise ValueError(
      f"{name} is a file, not a run's folder. Point {flag} at the folder that --workdir "
      'named in training.'
    )
  checkpoints = os.path.join(path, 'checkpoints')
  for folder in (path, checkpoints):
    if os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
      raise ValueError(
        f'{name}: {folder} cannot be read (permissions). Fix them (e.g. chmod -R u+rX '
        f'{path}) or run as the user who trained it.'
      )
  steps = []
  if os.path.isdir(checkpoints):
    manager = checkpoint.make_manager(checkpoints, max_to_keep=None)
    steps = sorted(manager.all_steps())
    manager.close()
  if not steps:
    raise ValueError(
      f'{name} holds no checkpoint ({checkpoints} is missing or empty). Train first '
      f'(`{train}`) or point {flag} at a trained run.'
    )
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(
      f'--step={step} is not a checkpoint of {path}; it has steps '
      f'{", ".join(map(str, steps))}. Choose one of them, or leave --step out for the latest.'
    )
  return step


def saved_config(
  workdir: str, step: int | None, locations: dict | None = None
) -> tuple[ml_collections.ConfigDict, int]:
  """(the config checkpoint `step` (default: the latest) was saved with, step).

  `locations`: config.data keys ('path', 'tfds_dir') giving where the data lies
  on this machine; they replace the saved ones ('' or None: kept).

  Raises:
    ValueError: `readable_workdir`'s, or the checkpoint's config does not read back.
  """
  step = readable_workdir(workdir, step)
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=None)
  try:
    saved = _tuples(checkpoint.restore_config(manager, step))
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [''])[0]
    raise ValueError(
      f'The checkpoint at step {step} in {workdir} cannot be read ({type(e).__name__}: '
      f'{first}). Check its files and permissions, or choose another step (--step).'
    ) from e
  finally:
    manager.close()
  config = ml_collections.ConfigDict(with_defaults(saved))
  config.data.update({k: v for k, v in (locations or {}).items() if v})
  return config, step


# Keys whose default is not what a run saved before they existed did: a DP run
# drew its noise and sampling from config.seed before privacy.reproducible_noise.
_BEFORE_THEY_EXISTED = {('privacy', 'reproducible_noise'): True}


def with_defaults(saved: dict) -> dict:
  """`saved` with the keys added to the code since it was written, at their
  defaults (what that run used): configs/common.py's, the model family's
  (privacy.reproducible_noise at True: such a run's noise came from its seed)."""
  from configs import common  # pylint: disable=g-import-not-at-top

  defaults = common.base_config().to_dict()
  for (section, key), value in _BEFORE_THEY_EXISTED.items():
    defaults[section][key] = value
  model = common.model_defaults(saved.get('model', {}).get('name'))
  if model is not None:  # An unknown family is refused later, naming the known ones.
    defaults['model'] = model.to_dict()

  def merge(into: dict, default: dict) -> dict:
    out = dict(into)
    for key, value in default.items():
      if key not in out:
        out[key] = _tuples(value)
      elif isinstance(value, dict) and isinstance(out[key], dict):
        out[key] = merge(out[key], value)
    return out

  return merge(saved, defaults)
