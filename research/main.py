"""Entry point: `python -m research.main --config=configs/x.py --workdir=DIR`.

Flags only; the work is in research.train and research.evaluate.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow_datasets as tfds

from research import distributed
from research import evaluate
from research import metrics
from research import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally with :variant.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, logs and metrics; a run in '
    'an existing workdir resumes from its latest checkpoint.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval'],
    'train: train (resuming) and evaluate; eval: score the latest checkpoint '
    'on the valid and test splits.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Orbax and TFDS log every file operation at INFO; keep the console for
  # the run's own lines (research.metrics.console).
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  distributed.initialize(_CONFIG.value.distributed)
  metrics.console('JAX devices: %s (process %d of %d)', jax.devices(),
                  jax.process_index(), jax.process_count())
  if _MODE.value == 'train':
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  else:
    results = evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
  for split, figures in results.items():
    print(f'{split}: ' + ', '.join(f'{k} {v:.4f}' for k, v in figures.items()),
          flush=True)


if __name__ == '__main__':
  app.run(main)
