"""A small pre-norm Transformer for learning-rate sweeps after Wortsman et al.
2024 ("Small-scale proxies for large-scale Transformer training
instabilities", ICLR 2024): experiments/wortsman2024_stability.

Their recipe, scaled down to what a 2-core CPU trains in about a minute:
pre-norm LayerNorm blocks without biases, an untied output layer, AdamW with
beta2 = 0.95 (epsilon 1e-8, optax's default), global gradient clipping at 1, linear warmup
then a cosine to 1e-5 (their section 2.1 and appendix), on tiny-shakespeare's
characters (nanoGPT's split). Widths by variant: `w64` (2 heads) and `w128`
(4 heads), head width 32, 2 layers, d_ff = 4 x width, context 64, batch 32,
1,200 steps (about 2.5M tokens; 5% warmup). The paper's models are far
larger and train far longer; these have 0.1M and 0.4M parameters, so what
can transfer is the direction of each effect, not the learning rates at
which it appears.

Weight decay: coupled (optax's AdamW) with lambda = 0.1, except where a row
sets optim.weight_decay_mode='independent' with 1e-4 (the paper's value);
the two decay a weight equally at learning rate 1e-3 (docs/stability.md says
how to convert). The valid split is scored at step 0 (eval_at_start) so that a
diverged run counts at its own initial loss.
"""

import ml_collections

from configs import common
from configs import shakespeare_char


def base(width: int = 64) -> ml_collections.ConfigDict:
  c = shakespeare_char.full()
  c.data.seq_len = 64
  c.data.batch_size = 32
  c.data.eval_batch_size = 128
  c.model.num_layers = 2
  c.model.d_model = width
  c.model.num_heads = width // 32
  c.model.d_ff = 4 * width
  c.model.dropout_rate = 0.0
  c.model.tie_embeddings = False
  c.model.use_bias = False
  c.num_train_steps = 1200
  c.log_every_steps = 25
  c.eval_every_steps = 400
  c.checkpoint_every_steps = 400
  c.eval_at_start = True
  c.eval_on_test = False
  c.optim.warmup_steps = 60
  c.optim.min_learning_rate = 1e-5
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.1
  c.optim.grad_clip_norm = 1.0
  c.sample.num_tokens = 0
  return c


def w64() -> ml_collections.ConfigDict:
  return base(64)


def w128() -> ml_collections.ConfigDict:
  return base(128)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.select_variant({'w64': w64, 'w128': w128}, arg, 'w64')
