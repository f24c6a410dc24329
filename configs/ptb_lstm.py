"""Zaremba et al. 2014 LSTM language models on the Penn Treebank.

Variants carry the paper's hyperparameters exactly (Zaremba, Sutskever and
Vinyals, "Recurrent Neural Network Regularization", Section 4.1): 2 layers;
200/650/1500 units; unroll 20/35/35; batch 20; uniform init 0.1/0.05/0.04;
dropout 0/0.5/0.65; SGD at rate 1, multiplied by 0.5 per epoch after epoch 4
(small), by 1/1.2 after epoch 6 (medium), by 1/1.15 after epoch 14 (large);
13/39/55 epochs; gradient norm clipped at 5/5/10. The objective is the sum of
the per-token losses over the unroll averaged over the batch, as in the
paper's code (and TensorFlow's ptb_word_lm), which is what makes rate 1 right.

Evaluation carries the LSTM state through the whole split in one row
(eval_batch_size 1), the protocol of the paper's test pass.

Run:
  python -m research.main --config=configs/ptb_lstm.py:small --workdir=/tmp/ptb_small

Published (Table 1, non-regularized / medium / large regularized LSTM):
validation/test perplexity 120.7/114.5, 86.2/82.7, 82.2/78.4.
Measured here (2-core CPU, experiments/zaremba2014/RESULTS.md): small, 13
epochs, seed 0, valid/test perplexity 120.3/115.0. Medium and large need a
GPU; `python -m research.experiments run experiments/zaremba2014` runs them.
"""

import ml_collections

from configs import common


def _base(
  hidden: int,
  seq_len: int,
  init: float,
  dropout: float,
  decay_after: int,
  decay: float,
  epochs: int,
  clip: float,
):
  c = common.base_config()
  c.data.name = 'ptb'
  c.data.level = 'word'  # Stated: a text_file run from this config stays word level.
  c.data.seq_len = seq_len
  c.data.batch_size = 20
  c.data.eval_batch_size = 1
  c.model = common.lstm_model()
  c.model.hidden_size = hidden
  c.model.init_scale = init
  c.model.dropout_rate = dropout
  c.num_epochs = epochs
  c.num_train_steps = -1  # Derived: num_epochs * steps per epoch.
  c.log_every_steps = 200
  c.eval_every_steps = -1  # Once per epoch.
  c.checkpoint_every_steps = -1  # Once per epoch.
  c.optim.name = 'sgd'
  c.optim.learning_rate = 1.0
  c.optim.decay_after_epochs = decay_after
  c.optim.decay_factor = decay
  c.optim.grad_clip_norm = clip
  c.optim.loss = 'sequence_sum'
  return c


def small() -> ml_collections.ConfigDict:
  return _base(200, 20, 0.1, 0.0, 4, 0.5, 13, 5.0)


def medium() -> ml_collections.ConfigDict:
  return _base(650, 35, 0.05, 0.5, 6, 1 / 1.2, 39, 5.0)


def large() -> ml_collections.ConfigDict:
  return _base(1500, 35, 0.04, 0.65, 14, 1 / 1.15, 55, 10.0)


def audit() -> ml_collections.ConfigDict:
  """The small model for a canary audit (experiments/carlini2019_secret_sharer):
  2 epochs instead of 13 (the CPU budget of 9 runs; the learning rate is 1
  throughout, its decay starts after epoch 4), canaries inserted and scored:
  three per repetition count (1, 4, 16, 64) and three held out."""
  c = small()
  c.num_epochs = 2
  c.audit.enabled = True
  c.audit.canaries_per_count = 3
  return c


def audit_dp() -> ml_collections.ConfigDict:
  """`audit` trained with DP-SGD to epsilon 8 (delta: the largest power of ten
  below 1 / N, 1e-5 for the 46,594 training sequences of 20 tokens, canaries
  included).

  DP-SGD's noise is sigma C on the sum of a step's clipped gradients, so its
  share of the mean falls with the rows of a step: the expected batch is 256
  sequences (sampling rate 256 / 46,594), the usual large-batch choice of
  DP-SGD, not Zaremba's 20. Each sequence's summed-loss gradient is clipped to
  norm 1; SGD at rate 1 as the small model. Set once, not tuned.
  """
  c = audit()
  c.privacy.enabled = True
  c.privacy.target_epsilon = 8.0
  c.privacy.l2_clip_norm = 1.0
  c.data.batch_size = 256
  c.log_every_steps = 20
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.select_variant(
    {'small': small, 'medium': medium, 'large': large, 'audit': audit, 'audit_dp': audit_dp},
    arg,
    'small',
  )
