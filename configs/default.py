"""The README's main job: a small LSTM language model on the Penn Treebank.

Two layers of 128 units trained for one epoch with Zaremba et al.'s SGD recipe
(rate 1, loss summed over the 35-step unroll, gradient norm clipped at 5), so
that it finishes on a 2-core CPU in a few minutes, then scored on the whole
validation and test splits (10 rows, state carried along each) and sampled.

Run:
  python -m research.main --config=configs/default.py --workdir=/tmp/research_default

Expected: see README.md's results table (measured there on a 2-core CPU).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'Unknown config variant {arg!r}; configs/default.py has no variants.')
  c = common.base_config()
  c.data.name = 'ptb'
  c.data.level = 'word'  # Stated: a text_file run from this config stays word level.
  c.data.seq_len = 35
  c.data.batch_size = 20
  c.data.eval_batch_size = 10
  c.model = common.lstm_model()
  c.model.hidden_size = 128
  c.model.init_scale = 0.1
  c.model.dropout_rate = 0.0
  c.num_epochs = 1
  c.num_train_steps = -1  # Derived: one epoch, 1,327 steps.
  c.log_every_steps = 100
  c.eval_every_steps = -1  # Once per epoch (here: only at the end).
  c.checkpoint_every_steps = 200
  c.optim.name = 'sgd'  # Zaremba et al.'s recipe; it needs no tuning here.
  c.optim.learning_rate = 1.0
  c.optim.decay_after_epochs = 4
  c.optim.decay_factor = 0.5
  c.optim.grad_clip_norm = 5.0
  c.optim.loss = 'sequence_sum'
  c.sample.num_tokens = 60
  return c
