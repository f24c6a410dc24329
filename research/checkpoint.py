"""Checkpoints: the only module that touches Orbax.

A checkpoint holds four items, committed atomically by Orbax's
CheckpointManager: `state` (step, parameters, optimizer state and the LSTM
carry, as sharded arrays), `data` (the grain iterator position), `config`
(the config the run was trained with, as JSON) and `identity` (what else fixes
the meaning of the state, as JSON: {'tokenizer': its `identity`}; checkpoints
from before it was recorded lack it); a DP run's checkpoints add a fifth, `noise` (where
its noise and sampling come from, with its secret: research/privacy/noise.py;
checkpoints from before it lack it). Saves are asynchronous: the
arrays are copied off the devices before `save` returns, so the caller can
donate its state to the next step while the files are written.
"""

import json
import os
import time
from typing import Any

import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from research import faults
from research import metrics
from research import rules

_ITEMS = ('state', 'data', 'config', 'identity', 'noise')


def make_manager(
  directory: str, *, max_to_keep: int, async_save: bool = True
) -> ocp.CheckpointManager:
  """Opens (creating if needed) the checkpoint directory of a run."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=_ITEMS)


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  data_iterator: Any,
  config: ml_collections.ConfigDict,
  tokenizer: str,
  noise: dict | None = None,
) -> None:
  """Starts saving the train state, data position, config and the
  `tokenizer` identity ('kind:hash') at `step`, and a DP run's `noise` item
  (None: a run that is not private writes none).

  The grain position is written synchronously, so advancing the iterator
  afterwards does not change what this checkpoint holds.
  """
  items = dict(
    state=ocp.args.StandardSave(state),
    data=grain.checkpoint.CheckpointSave(data_iterator),
    config=ocp.args.JsonSave(config.to_dict()),
    identity=ocp.args.JsonSave({'tokenizer': tokenizer}),
  )
  if noise is not None:
    items['noise'] = ocp.args.JsonSave(noise)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def save_params(
  manager: ocp.CheckpointManager,
  step: int,
  params: Any,
  config: ml_collections.ConfigDict,
  tokenizer: str,
) -> None:
  """Saves parameters alone (a compressed model: research/compress.py) with
  the config and tokenizer identity, synchronously. Its `state` item is
  {'step', 'params'}: no optimizer state or data position, nothing to resume."""
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave({'step': np.asarray(step, np.int32), 'params': params}),
      config=ocp.args.JsonSave(config.to_dict()),
      identity=ocp.args.JsonSave({'tokenizer': tokenizer}),
    ),
    force=True,
  )
  manager.wait_until_finished()


def restore_params(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> Any:
  """The parameters of checkpoint `step` (a train state's or `save_params`'s)
  in the structure of `abstract_params`, which may hold custom nodes (int8
  weights) that the checkpoint holds as nested dicts, placed on their
  shardings."""
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  # Orbax keeps an absent optional field (a QArray's zero point) as None.
  saved = {k: v for k, v in rules.flatten(restored['state']['params']).items() if v is not None}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
  names = ['.'.join(_key_name(k) for k in path) for path, _ in leaves]
  missing = [n for n in names if n not in saved]
  if missing or len(saved) != len(names):
    raise ValueError(
      f'Checkpoint step {step} in {manager.directory} does not hold the parameters this config '
      f'describes (absent: {missing[:3]}; extra: {sorted(set(saved) - set(names))[:3]}); '
      'evaluate it with the config it was written with (its config.json).'
    )
  placed = [
    jax.device_put(np.asarray(saved[n], a.dtype), a.sharding) for n, (_, a) in zip(names, leaves)
  ]
  return jax.tree_util.tree_unflatten(treedef, placed)


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def latest_step(manager: ocp.CheckpointManager) -> int | None:
  return manager.latest_step()


def restore(
  manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator: Any | None = None
) -> Any:
  """Restores the state at `step` onto the shardings of `abstract_state`.

  `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: the
  arrays are read straight into that layout. When `data_iterator` is given,
  its position is restored in place.
  """
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored['state']


def restore_config(manager: ocp.CheckpointManager, step: int) -> dict:
  """Returns the config a checkpoint was saved with, as a plain dict."""
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return restored['config']


def restore_identity(manager: ocp.CheckpointManager, step: int) -> dict:
  """The identity a checkpoint recorded ({'tokenizer': ...}); {} for one
  saved before identities were recorded."""
  try:
    restored = manager.restore(step, args=ocp.args.Composite(identity=ocp.args.JsonRestore()))
  except KeyError:  # Orbax: the item is not in the checkpoint.
    return {}
  return restored['identity']


def restore_noise(manager: ocp.CheckpointManager, step: int) -> dict | None:
  """A DP run's `noise` item (it holds the run's secret: never print it);
  None for a checkpoint without one (not private, or saved before it existed)."""
  try:
    restored = manager.restore(step, args=ocp.args.Composite(noise=ocp.args.JsonRestore()))
  except KeyError:  # Orbax: the item is not in the checkpoint.
    return None
  return restored['noise']


def check_for_errors(manager: ocp.CheckpointManager) -> None:
  """Raises the error of a failed asynchronous save, if any."""
  manager.check_for_errors()


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until pending asynchronous saves are committed."""
  manager.wait_until_finished()


# Config keys that fix the shape of the state or the meaning of the token ids:
# a checkpoint trained with other values cannot continue under this config.
# (Everything else, e.g. the mesh, the learning rate or the logging cadence,
# may change between a save and a resume.)
IDENTITY_KEYS = (
  'model',
  'data.name',
  'data.level',
  'data.split',
  'data.vocab_size',
  'privacy',  # The mechanism the privacy spent so far was accounted for.
  'audit',  # The canaries in the training split.
  'compress.method',  # research.compress: the parameters' structure (int8 or float).
  'compress.prune_fraction',
)


def config_differences(saved: dict, current: dict) -> list[str]:
  """'key: saved -> current' for every identity key that differs.

  A key the saved config does not have was added to the code after the
  checkpoint was written (e.g. model.norm); its default is what that run
  used, so it is not compared. Values compare as JSON holds them (a saved
  tuple reads back as a list).
  """
  saved, current = rules.flatten(saved), rules.flatten(json.loads(json.dumps(current)))
  keys = sorted(k for k in saved if any(k == p or k.startswith(p + '.') for p in IDENTITY_KEYS))
  return [
    f'{k}: {saved.get(k, "(absent)")!r} -> {current.get(k, "(absent)")!r}'
    for k in keys
    if saved.get(k) != current.get(k)
  ]


def identity_differences(saved: dict, current: dict) -> list[str]:
  """'name: saved -> current' for every recorded identity that differs; one
  the checkpoint did not record is unknown, so it is not compared."""
  return [
    f'{k}: {saved[k]!r} -> {current[k]!r}'
    for k in sorted(current)
    if k in saved and saved[k] != current[k]
  ]


def check_compatible(
  manager: ocp.CheckpointManager,
  step: int,
  config: ml_collections.ConfigDict,
  tokenizer: str,
  *,
  remedy: str,
) -> None:
  """Raises ConfigMismatchError listing every identity key (and the
  tokenizer identity) where `config` differs from the checkpoint at `step`'s;
  `remedy` ends the message with what the user can do."""
  differences = config_differences(
    restore_config(manager, step), config.to_dict()
  ) + identity_differences(restore_identity(manager, step), {'tokenizer': tokenizer})
  if differences:
    raise faults.ConfigMismatchError(
      f'The config differs from the one the checkpoint at step {step} in '
      f'{manager.directory} was trained with:\n  ' + '\n  '.join(differences) + f'\n{remedy}'
    )


def _quarantine(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves an unreadable checkpoint out of the manager's sight (never
  deletes it) and returns where it went."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(os.path.dirname(str(manager.directory)), 'unreadable_checkpoints')
  target = os.path.join(target_dir, f'{step}-{int(time.time())}')
  if jax.process_index() == 0:
    os.makedirs(target_dir, exist_ok=True)
    os.replace(source, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'research: quarantined {step}')
  manager.reload()
  return target


def restore_latest_good(
  manager: ocp.CheckpointManager,
  abstract_state: Any,
  data_iterator: Any,
  config: ml_collections.ConfigDict,
  tokenizer: str,
) -> Any | None:
  """Restores the newest checkpoint that reads back whole; None if none exist.

  A checkpoint that fails to load (truncated or missing file, unreadable
  metadata) is moved to `unreadable_checkpoints/` with a warning naming it,
  and the next older one is tried, so the keep policy never deletes the last
  good checkpoint to make room for bad ones. Raises ConfigMismatchError when
  the checkpoint was trained with a different model or data, or another
  `tokenizer` (identity) where it recorded one, and
  CheckpointError when checkpoints exist but none can be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      check_compatible(
        manager,
        step,
        config,
        tokenizer,
        remedy='Use the original values (a tokenizer comes from the data), '
        'another --workdir, or --fresh to move the old run aside and start '
        'over.',
      )
      readable = True
    except faults.ConfigMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      readable, error = False, e  # Its config or identity does not read back.
    if readable:
      try:
        return restore(manager, step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except
        error = e
    moved = _quarantine(manager, step)
    reason = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'
    failures.append(f'step {step} ({reason})')
    metrics.warn(
      'warning: checkpoint at step %d is unreadable (%s); moved to %s.', step, reason, moved
    )
  if failures:
    raise faults.CheckpointError(
      f'No checkpoint in {manager.directory} could be read: '
      + '; '.join(failures)
      + '. They were moved to unreadable_checkpoints/ '
      'beside it. Restore them from a backup, or run with --fresh to start '
      'over (nothing is deleted).'
    )
  return None


_FINE_TUNING = (
  'Fine-tuning needs the same model shapes and tokenizer (the same data level and vocabulary).'
)


def load_params(
  source: str, abstract_params: Any, tokenizer: str, *, key: str = 'init_from', needs=_FINE_TUNING
) -> tuple[Any, str]:
  """config.init_from (or the config `key` naming `source`): the parameters
  of `source`, a workdir (its latest checkpoint) or a checkpoint step folder
  (WORKDIR/checkpoints/N), placed as `abstract_params` (shapes, dtypes,
  shardings); returns (them, what was read). `needs` ends a mismatch's message.

  Raises:
    ValueError: naming config.init_from when `source` is neither, holds no
      checkpoint, or its parameter shapes or tokenizer (identity) differ from
      this run's (every difference listed).
  """
  key = f'config.{key}={source!r}'
  if os.path.isdir(os.path.join(source, 'checkpoints')):
    directory, step = os.path.join(source, 'checkpoints'), None
  elif os.path.basename(os.path.normpath(source)).isdigit() and os.path.isdir(source):
    directory = os.path.dirname(os.path.normpath(source))
    step = int(os.path.basename(os.path.normpath(source)))
  else:
    raise ValueError(
      f'{key} is neither a workdir (a folder holding checkpoints/) nor a checkpoint step '
      'folder (WORKDIR/checkpoints/N); point it at one.'
    )
  manager = make_manager(directory, max_to_keep=None)
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise ValueError(f'{key} holds no checkpoint to start from; train it first.')
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  params = restored['state']['params']
  differences = identity_differences(restore_identity(manager, step), {'tokenizer': tokenizer})
  manager.close()
  saved = rules.flatten(jax.tree.map(lambda x: tuple(x.shape), params, is_leaf=_is_array))
  wanted = rules.flatten(jax.tree.map(lambda x: tuple(x.shape), abstract_params))
  for name in sorted(set(saved) | set(wanted)):
    if saved.get(name) != wanted.get(name):
      differences.append(f'{name}: {saved.get(name, "(absent)")} -> {wanted.get(name, "(absent)")}')
  if differences:
    raise ValueError(
      f'{key} (step {step}) does not fit this run: ' + '; '.join(differences) + f'. {needs}'
    )
  placed = jax.tree.map(
    lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), params, abstract_params
  )
  return placed, f'{directory} step {step}'


def _is_array(x) -> bool:
  return hasattr(x, 'shape')
