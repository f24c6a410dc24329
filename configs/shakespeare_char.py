"""Character-level Transformer on tiny-shakespeare (nanoGPT's shakespeare_char).

`full` (the default) carries nanoGPT's config/train_shakespeare_char.py: 6
layers, 6 heads, width 384, context 256, dropout 0.2, batch 64, AdamW at 1e-3
with 100 warmup steps and a cosine to 1e-4 over 5,000 steps, beta2 0.99,
weight decay 0.1, clip 1.0, no biases, tied embeddings. `cpu` is nanoGPT's
README CPU recipe: 4 layers, 4 heads, width 128, context 64, batch 12, 2,000
steps (cosine over 2,000), dropout 0. `gpt2_small` is a speed config for
accelerators at GPT-2 small's size (see its docstring).

The split is nanoGPT's (first 90% train, last 10% validation). Evaluation
differs from nanoGPT's: we score the whole validation split in non-overlapping
windows of the context length, where nanoGPT averages 200 (cpu: 20) random
batches; our figure therefore includes tokens with little context at the start
of each window and runs slightly higher (by 0.0014 on average, measured with
experiments/nanogpt_shakespeare_char/torch_reference.py).

Run:
  python -m research.main --config=configs/shakespeare_char.py:cpu \
      --workdir=/tmp/shakespeare_cpu --config.data.path=../shared/data/tinyshakespeare/input.txt

Published: nanoGPT README, validation loss 1.4697 (full, 5,000 steps on an
A100, about 3 minutes) and 1.88 (cpu recipe).
Measured here: see README.md's results table.
"""

import ml_collections

from configs import common


def full() -> ml_collections.ConfigDict:
  c = common.base_config()
  c.data.name = 'tiny_shakespeare'
  # Stated, not inherited: pointed at another file (data.name='text_file',
  # data.path=...) this config still trains on characters with nanoGPT's split.
  c.data.level = 'char'
  c.data.split = '0.9,0.1'
  c.data.seq_len = 256
  c.data.batch_size = 64
  c.data.eval_batch_size = 64
  c.model = common.transformer_model()
  c.num_train_steps = 5000
  c.log_every_steps = 10
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 1000
  c.optim.name = 'adamw'
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.min_learning_rate = 1e-4
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.1
  c.optim.grad_clip_norm = 1.0
  c.sample.num_tokens = 300
  c.sample.prompt = '\n'
  return c


def cpu() -> ml_collections.ConfigDict:
  c = full()
  c.data.seq_len = 64
  c.data.batch_size = 12
  c.data.eval_batch_size = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.d_ff = 512
  c.model.dropout_rate = 0.0
  c.num_train_steps = 2000
  c.log_every_steps = 100
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 500
  return c


def gpt2_small() -> ml_collections.ConfigDict:
  """GPT-2-small-size speed config for accelerators (issue 6's MFU target).

  GPT-2 small's body (12 layers and width 768: Radford et al. 2019, Table 2;
  context 1024: its Section 2.3; 12 heads as in the released model) on the
  same characters, with the speed options on:
  bf16 compute, fused attention, one scanned block. 85M parameters on 1M
  characters overfit, so this measures speed, not a recipe; the optimizer
  follows nanoGPT's GPT-2 config (lr 6e-4 to 6e-5, beta2 0.95).
  """
  c = full()
  c.data.seq_len = 1024
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.d_model = 768
  c.model.d_ff = 3072
  c.model.dropout_rate = 0.0  # Fused attention has no dropout.
  c.model.compute_dtype = 'bfloat16'
  c.model.attention = 'dot_product'
  c.model.scan_layers = True
  c.optim.learning_rate = 6e-4
  c.optim.min_learning_rate = 6e-5
  c.optim.b2 = 0.95
  c.num_train_steps = 2000
  c.eval_every_steps = 500
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.select_variant({'full': full, 'cpu': cpu, 'gpt2_small': gpt2_small}, arg, 'full')
