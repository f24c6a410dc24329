"""A Transformer on the Penn Treebank beside Zaremba et al.'s small LSTM
(experiments/ptb_lstm_vs_transformer).

`small` matches configs/ptb_lstm.py:small where a comparison needs it and
takes nanoGPT's Transformer recipe everywhere else, set once, not tuned:

- Size: about the LSTM's non-embedding parameters. The small LSTM has
  2 x 4H(D + H) = 640,000 gate weights (H = D = 200); 2 blocks of width 160
  with a 640-wide MLP have 2 x (4 x 160^2 + 2 x 160 x 640) = 614,400.
  Embeddings are tied (the LSTM's 10,000 x 200 input and output tables are
  separate; neither counts as non-embedding).
- Budget: the LSTM's 13 epochs of the training split, in tokens (13 x
  929,589); 32 windows of 128 tokens a step.
- Data and evaluation: the same PTB splits and 10,000-word vocabulary. The
  Transformer scores non-overlapping windows of 128 tokens; the LSTM carries
  its state through the whole split. Each family's standard protocol, so
  the LSTM sees more context at evaluation.
- Optimizer: nanoGPT's shakespeare_char recipe (AdamW 1e-3, warmup 100,
  cosine to 1e-4, beta2 0.99, weight decay 0.1, clip 1.0, dropout 0.2).

Run:
  python -m research.main --config=configs/ptb_transformer.py:small --workdir=/tmp/ptb_transformer
"""

import ml_collections

from configs import common


def small() -> ml_collections.ConfigDict:
  c = common.base_config()
  c.data.name = 'ptb'
  c.data.level = 'word'
  c.data.seq_len = 128
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.model = common.transformer_model()
  c.model.num_layers = 2
  c.model.num_heads = 5
  c.model.d_model = 160
  c.model.d_ff = 640
  c.model.dropout_rate = 0.2
  c.num_epochs = 13  # As configs/ptb_lstm.py:small, in tokens of the training split.
  c.num_train_steps = -1  # Derived: num_epochs * steps per epoch.
  c.log_every_steps = 50
  c.eval_every_steps = -1  # Once per epoch.
  c.checkpoint_every_steps = -1  # Once per epoch.
  c.optim.name = 'adamw'
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.min_learning_rate = 1e-4
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.1
  c.optim.grad_clip_norm = 1.0
  c.sample.num_tokens = 30
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.select_variant({'small': small}, arg, 'small')
