"""Checkpoints: the only module that touches Orbax.

A checkpoint holds three items, committed atomically by Orbax's
CheckpointManager: `state` (step, parameters, optimizer state and the LSTM
carry, as sharded arrays), `data` (the grain iterator position) and `config`
(the config the run was trained with, as JSON). Saves are asynchronous: the
arrays are copied off the devices before `save` returns, so the caller can
donate its state to the next step while the files are written.
"""

import os
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp

_ITEMS = ('state', 'data', 'config')


def make_manager(directory: str, *, max_to_keep: int,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """Opens (creating if needed) the checkpoint directory of a run."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=_ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Any, config: ml_collections.ConfigDict) -> None:
  """Starts saving the train state, data position and config at `step`.

  The grain position is written synchronously, so advancing the iterator
  afterwards does not change what this checkpoint holds.
  """
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config.to_dict())), force=True)


def latest_step(manager: ocp.CheckpointManager) -> int | None:
  return manager.latest_step()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: Any | None = None) -> Any:
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
  restored = manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return restored['config']


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until pending asynchronous saves are committed."""
  manager.wait_until_finished()
