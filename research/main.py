"""Entry point: `python -m research.main --config=configs/x.py --workdir=DIR`.

Flags only; the work is in research.train and research.evaluate.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow_datasets as tfds

from research import cli
from research import distributed
from research import evaluate
from research import faults
from research import host
from research import metrics
from research import train
from research import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file, optionally with :variant.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Directory for checkpoints, logs and metrics; a run in '
  'an existing workdir resumes from its latest checkpoint.',
)
_MODE = flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'eval', 'audit'],
  'train: train (resuming) and evaluate; eval: score the latest checkpoint '
  'on the valid and test splits; audit: the exposure of its canaries (config.audit).',
)
_FRESH = flags.DEFINE_boolean(
  'fresh',
  False,
  'Start over in an existing workdir: its checkpoints, '
  'metrics and logs are moved to WORKDIR/previous/TIME/ (nothing is deleted).',
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv  # cli.flags_parser refuses stray arguments.
  # Orbax and TFDS log every file operation at INFO; keep the console for
  # the run's own lines (research.metrics.console).
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  allocator = host.tune_allocator()
  try:
    results = _run(_CONFIG.value, _WORKDIR.value, allocator)
  except faults.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    return faults.EXIT_PREEMPTED
  except faults.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return faults.EXIT_NONFINITE
  except (faults.RunError, ValueError, FileNotFoundError) as e:
    # Bad config, data or workdir: the message names the problem and the fix.
    print(f'error: {e}', file=sys.stderr, flush=True)
    return faults.EXIT_BAD_INPUT
  for split, figures in results.items():
    print(f'{split}: ' + ', '.join(f'{k} {v:.4f}' for k, v in figures.items()), flush=True)
  return 0


def _run(config, workdir, allocator):
  distributed.initialize(config.distributed)
  metrics.console(
    'JAX devices: %s (process %d of %d); host allocator %s',
    jax.devices(),
    jax.process_index(),
    jax.process_count(),
    allocator,
  )
  if _MODE.value == 'eval':
    return evaluate.evaluate_checkpoint(config, workdir)
  if _MODE.value == 'audit':
    return evaluate.audit_checkpoint(config, workdir)
  if _FRESH.value and jax.process_index() == 0:
    moved = workdir_lib.move_aside(workdir)
    if moved:
      metrics.console('--fresh: moved the previous run to %s.', moved)
  return train.train_and_evaluate(config, workdir)


if __name__ == '__main__':
  host.reexec_with_huge_pages()
  app.run(main, flags_parser=cli.flags_parser('config'))
