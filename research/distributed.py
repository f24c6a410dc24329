"""Multi-process start-up: `jax.distributed.initialize` from config or env.

One process per host (TPU pod slice) or per GPU/node (Slurm) runs the same
command; every process sees the global device list, and the mesh spans all
of them. JAX reads $JAX_COORDINATOR_ADDRESS itself and detects Slurm, Open
MPI and TPU pods; $JAX_NUM_PROCESSES and $JAX_PROCESS_ID (read here) cover
plain launches such as two processes on one machine.
"""

import contextlib
import logging
import os

from absl import logging as absl_logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from research import faults
from research import metrics
from research import workdir_lock


def _launcher_detected() -> bool:
  """True inside a multi-process launch JAX can configure by itself."""
  if (
    int(os.environ.get('SLURM_STEP_NUM_TASKS', os.environ.get('SLURM_NTASKS', '1'))) > 1
    and 'SLURM_STEP_ID' in os.environ
  ):
    return True
  if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return True
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def settings(config: ml_collections.ConfigDict) -> dict | None:
  """The arguments for jax.distributed.initialize, or None for one process."""
  if config.initialize not in ('auto', 'always', 'never'):
    raise ValueError(
      f"config.distributed.initialize={config.initialize!r}: use 'auto', 'always' or 'never'."
    )
  if config.initialize == 'never':
    return None
  address = config.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  num = config.num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0'))
  pid = config.process_id if config.process_id >= 0 else int(os.environ.get('JAX_PROCESS_ID', '-1'))
  if config.initialize == 'auto' and not (address or num > 1 or _launcher_detected()):
    return None
  return {
    'coordinator_address': address or None,
    'num_processes': num or None,
    'process_id': pid if pid >= 0 else None,
  }


def initialize(config: ml_collections.ConfigDict) -> None:
  """Joins the processes of a multi-process run; a no-op for one process.

  Must run before anything touches a JAX device.
  """
  args = settings(config)
  if args is None:
    return
  # Cross-process collectives on CPU (the same code on GPU/TPU uses the
  # accelerator's own interconnect).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**args)
  if jax.process_index():  # A follower's library warnings name it, like its own (metrics.warn).
    handler = absl_logging.get_absl_handler()
    handler.setFormatter(_Prefixed(handler.python_handler.formatter, metrics.process_prefix()))


class _Prefixed(logging.Formatter):
  """`formatter`'s lines, each after `prefix`."""

  def __init__(self, formatter: logging.Formatter, prefix: str):
    super().__init__()
    self._formatter, self._prefix = formatter, prefix

  def format(self, record: logging.LogRecord) -> str:
    return self._prefix + self._formatter.format(record)


@contextlib.contextmanager
def workdir_held(workdir: str):
  """`workdir`'s lock (research.workdir_lock), held by process 0 for every
  process of the run (they write one workdir together) during the body.

  Raises (in every process):
    faults.RunError: another run holds it (WorkdirInUse) or it cannot be
      written; process 0's message names the holder and the fix.
  """
  me, error = None, None
  if jax.process_index() == 0:
    try:
      me = workdir_lock.acquire(workdir, warn=metrics.warn)
    except faults.RunError as e:
      error = e
  if jax.process_count() > 1:  # The others learn whether process 0 holds it.
    held = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not held and error is None:
      error = workdir_lock.WorkdirInUse(f'process 0 could not lock {workdir}; its error says why.')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if me is not None:
      workdir_lock.release(workdir, me)
