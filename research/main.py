"""Entry point: `python -m research.main --config=configs/x.py --workdir=DIR`.

Flags only; the work is in research.train and research.evaluate. --mode=eval
and --mode=audit read a finished run: without --config, with the config it
was trained with (its checkpoint holds it), where only the keys of
workdir.READ_ONLY_KEYS may be set (--config.eval.seq_len=N, ...).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow_datasets as tfds

from configs import common
from research import cli
from research import config_checks
from research import distributed
from research import evaluate
from research import faults
from research import host
from research import metrics
from research import train
from research import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'Experiment config file, optionally with :variant. --mode=eval and --mode=audit read the '
  'one the run was trained with from the workdir when it is not given.',
  lock_config=True,
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
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv  # cli.flags_parser refuses stray arguments.
  config = _CONFIG.value
  if config is None:
    if _MODE.value == 'train':
      cli.fail(
        cli.required_message('--config').rstrip('.')
        + '; --mode=eval and --mode=audit read it from the workdir.'
      )
    # The distributed settings are needed before Orbax reads the saved config (it starts
    # JAX): the defaults and --config.distributed.*, not those of the machines it trained on.
    try:
      config = cli.override_config(common.base_config(), cli.held_overrides())
    except ValueError as e:
      cli.fail(str(e))
  # Orbax and TFDS log every file operation at INFO; keep the console for
  # the run's own lines (research.metrics.console).
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  allocator = host.tune_allocator()
  host.unroll_threefry()
  try:
    results = _run(config, _CONFIG.value is None, _WORKDIR.value, allocator)
  except faults.Preempted as e:
    metrics.warn('preempted: %s', e)
    return faults.EXIT_PREEMPTED
  except faults.NonFiniteError as e:
    metrics.warn('error: %s', e)
    return faults.EXIT_NONFINITE
  except (faults.RunError, ValueError, FileNotFoundError) as e:
    # Bad config, data or workdir (or one in use): the message names the problem and the fix.
    metrics.warn('error: %s', e)
    return faults.EXIT_BAD_INPUT
  for split, figures in results.items():
    metrics.console(f'{split}: ' + ', '.join(f'{k} {v:.4f}' for k, v in figures.items()))
  return 0


def _run(config, from_workdir: bool, workdir, allocator):
  """`from_workdir`: `config` holds the defaults and the overrides given; the
  run's own config is read from the workdir."""
  distributed.initialize(config.distributed)
  metrics.console(
    'JAX devices: %s (process %d of %d); host allocator %s',
    jax.devices(),
    jax.process_index(),
    jax.process_count(),
    allocator,
  )
  if _MODE.value in ('eval', 'audit'):
    if from_workdir:  # saved_config checks the workdir first.
      config, _ = workdir_lib.saved_config(workdir, None)
      config = cli.override_config(config, cli.held_overrides())
      config_checks.check(config)
    else:
      workdir_lib.readable_workdir(workdir)
    # They write metrics and the model card: one process per workdir, like training.
    with distributed.workdir_held(workdir):
      if _MODE.value == 'eval':
        return evaluate.evaluate_checkpoint(config, workdir)
      return evaluate.audit_checkpoint(config, workdir)
  with distributed.workdir_held(workdir):
    if _FRESH.value and jax.process_index() == 0:
      moved = workdir_lib.move_aside(workdir)
      if moved:
        metrics.console('--fresh: moved the previous run to %s.', moved)
    return train.train_and_evaluate(config, workdir)


if __name__ == '__main__':
  host.reexec_with_huge_pages()
  app.run(
    main, flags_parser=cli.flags_parser('config', optional_config_keys=workdir_lib.READ_ONLY_KEYS)
  )
