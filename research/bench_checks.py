"""The correctness checks of the accelerator check (research/bench_suite.py).

On one fixed batch, the logits and the loss of a Transformer under each
variant of `CHECKS` (bf16 compute, the fused `dot_product` attention, both)
against the same parameters under its float32 `xla` path, each within stated
tolerances. Shape letters as in research/models/transformer.py.
"""

from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from research import components
from research import metrics
from research import models
from research import sharding
from research import train


class Check(NamedTuple):
  """A variant of the model checked against the float32 `xla` reference.

  Both tolerances are relative, so one value holds for a model at any
  scale: the logits' to the reference's largest |logit|, the loss's to the
  reference loss. The JSON holds the absolute differences and bounds.
  """

  overrides: dict[str, str]  # config.model keys changed from the reference.
  logits_rtol: float  # Allowed max |logit - reference|, over max |reference logit|.
  loss_rtol: float  # Allowed |loss - reference loss|, over the reference loss.


# bfloat16 keeps 8 significant bits: one rounding is off by up to 2^-8 of the
# value. A logit is the end of a chain of such roundings (every matmul input,
# attention's probabilities, the residual stream of each layer), partly
# cancelling; 8 of them in a row, 2^-5 = 3.1%, is the bound. Measured on CPU
# (AMD EPYC): 0.73% for the cpu recipe after 300 steps on tiny-shakespeare
# (0.061 of a largest logit of 8.3; the loss moved by 1e-4 of itself), 0.4%
# for tiny mode's one layer at init.
BF16_LOGITS_RTOL = 2**-5
# The loss is a float32 mean over every token of the batch (B T of them), whose
# independent rounding errors average out: one bf16 rounding, 2^-8 = 0.39%.
BF16_LOSS_RTOL = 2**-8
# dot_product in float32 computes the same sums as the einsums in another
# order (a fused softmax, the mask applied differently): float32's rounding,
# 2^-24, times a few per operation over the layers and the widths summed.
# 2^-16 (1.5e-5) leaves that 256x and still catches any real difference,
# which would show at the size of a logit. Measured on CPU: 3.4e-7 (the cpu
# recipe after 300 steps), the loss equal. Matmuls run at float32 precision
# for these checks (`jax.default_matmul_precision('float32')`): on GPUs a
# float32 matmul otherwise may use TF32 (10 significant bits).
F32_LOGITS_RTOL = 2**-16
F32_LOSS_RTOL = 2**-16

# Name -> the variant checked; the reference is the config's own float32 `xla`.
CHECKS: dict[str, Check] = {
  'bfloat16': Check({'compute_dtype': 'bfloat16'}, BF16_LOGITS_RTOL, BF16_LOSS_RTOL),
  'dot_product': Check({'attention': 'dot_product'}, F32_LOGITS_RTOL, F32_LOSS_RTOL),
  # gpt2_small's combination: cuDNN's fused attention in bf16 on GPUs.
  'bfloat16_dot_product': Check(
    {'compute_dtype': 'bfloat16', 'attention': 'dot_product'}, BF16_LOGITS_RTOL, BF16_LOSS_RTOL
  ),
}


class Forward(NamedTuple):
  logits_BxTxV: np.ndarray  # float32, whatever the compute dtype.
  loss: float  # Mean nats per token of the batch.


def forward(model_config, vocab_size: int, seq_len: int, params, batch: dict) -> Forward:
  """The model of `model_config` on `batch` (train=False), float32 matmuls."""
  model = models.get_model(model_config, vocab_size=vocab_size, seq_len=seq_len)

  def run(params, inputs_BxT, targets_BxT, weights_BxT):
    carry = model.init_carry(inputs_BxT.shape[0])
    logits_BxTxV, _ = model.apply(params, carry, inputs_BxT, train=False, rng=None)
    sums = metrics.cross_entropy_token_sums(logits_BxTxV, targets_BxT, weights_BxT)
    return logits_BxTxV.astype(np.float32), sums.loss / sums.weight

  with jax.default_matmul_precision('float32'):
    logits_BxTxV, loss = jax.jit(run)(params, batch['inputs'], batch['targets'], batch['weights'])
  return Forward(np.asarray(logits_BxTxV), float(loss))


def compare(name: str, check: Check, reference: Forward, other: Forward) -> dict:
  """The figures of one check; `passed` only when both differences are
  finite and within their bounds."""
  logits_diff = float(np.max(np.abs(other.logits_BxTxV - reference.logits_BxTxV)))
  logits_bound = check.logits_rtol * float(np.max(np.abs(reference.logits_BxTxV)))
  loss_diff = abs(other.loss - reference.loss)
  loss_bound = check.loss_rtol * abs(reference.loss)
  return {
    'check': name,
    'overrides': check.overrides,
    'loss': other.loss,
    'logits_max_abs_diff': logits_diff,
    'logits_bound': logits_bound,
    'logits_rtol': check.logits_rtol,
    'loss_abs_diff': loss_diff,
    'loss_bound': loss_bound,
    'loss_rtol': check.loss_rtol,
    # `<=` is False for NaN: a non-finite result fails.
    'passed': bool(logits_diff <= logits_bound and loss_diff <= loss_bound),
  }


def correctness(config, config_name: str, train_steps: int, checks=CHECKS) -> dict:
  """Trains `config` (float32, `xla`) `train_steps` steps, then runs each
  of `checks` and the reference on the first batch of its data order."""
  # One device: this checks arithmetic, not sharding (and the cpu recipe's 12 rows need not
  # split over every device of the machine).
  parts = components.build(config, devices=jax.devices()[:1])
  state, shardings = components.create_state(parts, jax.random.key(config.seed), parts.train_rows)
  it = components.train_iterator(parts, config)
  batch = next(it)  # The fixed batch: the first of the config's seeded order.
  if train_steps:
    step_fn = train.make_train_step(parts, shardings, config)
    for _ in range(train_steps):
      state, m = step_fn(state, sharding.global_batch(next(it), parts.mesh), jax.random.key(0))
    jax.block_until_ready(m)
  params = jax.device_get(state.params)
  shape = (parts.corpus.tokenizer.vocab_size, config.data.seq_len)
  reference = forward(config.model, *shape, params, batch)
  results = []
  for name, check in checks.items():
    variant = ml_collections.ConfigDict(dict(config.model, **check.overrides))
    results.append(compare(name, check, reference, forward(variant, *shape, params, batch)))
  return {
    'config': config_name,
    'batch': f'{config.data.batch_size}x{config.data.seq_len}',
    'trained_steps': train_steps,
    'reference_loss': reference.loss,
    'reference_max_abs_logit': float(np.max(np.abs(reference.logits_BxTxV))),
    'checks': results,
    'passed': all(r['passed'] for r in results),
  }
