"""The README's main job: a small LSTM language model on the Penn Treebank.

Two layers of 200 units (Zaremba et al.'s small size) trained for one epoch
with Adam in larger batches, so that it finishes on a 2-core CPU in a few
minutes, then scored on the whole validation and test splits with the state
carried through each split, and sampled.

Run:
  python -m research.main --config=configs/default.py --workdir=/tmp/research_default

Expected: see README.md's results table (measured there on a 2-core CPU).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'Unknown config variant {arg!r}; configs/default.py has '
                     'no variants.')
  c = common.base_config()
  c.data.name = 'ptb'
  c.data.seq_len = 35
  c.data.batch_size = 32
  c.data.eval_batch_size = 8
  c.model = common.lstm_model()
  c.model.hidden_size = 200
  c.model.init_scale = 0.1
  c.model.dropout_rate = 0.0
  c.num_epochs = 1
  c.num_train_steps = -1  # Derived: one epoch.
  c.log_every_steps = 100
  c.eval_every_steps = -1  # Once per epoch (here: at the end).
  c.checkpoint_every_steps = 200
  c.optim.name = 'adamw'
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 20
  c.optim.min_learning_rate = 3e-4
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0
  c.optim.loss = 'token_mean'
  c.sample.num_tokens = 60
  return c
