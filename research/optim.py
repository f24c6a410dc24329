"""Optimizers and learning-rate schedules built from the config.

Two recipes:
  * `sgd`: constant rate for `decay_after_epochs` epochs, then multiplied by
    `decay_factor` once per epoch (Zaremba et al. 2014).
  * `adamw`: linear warmup to the peak, cosine decay to `min_learning_rate`
    (nanoGPT / GPT-2), weight decay on matrices only.
Both clip the global gradient norm first when `grad_clip_norm > 0`.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from research import models

OPTIMIZERS = ('adamw', 'sgd')


def validate(optim_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an unknown optimizer name (objectives: research/losses.py)."""
  if optim_config.name not in OPTIMIZERS:
    raise ValueError(
      f'Unknown optimizer {optim_config.name!r} (config key '
      f'optim.name); valid names: {list(OPTIMIZERS)}.'
    )


def epoch_decay_schedule(
  learning_rate: float, steps_per_epoch: int, decay_after_epochs: int, decay_factor: float
) -> optax.Schedule:
  """Zaremba's schedule: lr * factor ** max(0, epoch + 1 - decay_after_epochs).

  Epochs count from 0, so with decay_after_epochs=4 epochs 0..3 run at the
  full rate and epoch 4 at lr * factor.
  """

  def schedule(step):
    epoch = jnp.asarray(step) // steps_per_epoch
    exponent = jnp.maximum(0, epoch + 1 - decay_after_epochs)
    return learning_rate * jnp.power(decay_factor, exponent.astype(jnp.float32))

  return schedule


def make_schedule(
  optim_config: ml_collections.ConfigDict, *, num_train_steps: int, steps_per_epoch: int
) -> optax.Schedule:
  """Returns the learning rate as a function of the step."""
  c = optim_config
  if c.name == 'sgd':
    return epoch_decay_schedule(
      c.learning_rate, steps_per_epoch, c.decay_after_epochs, c.decay_factor
    )
  decay_steps = c.decay_steps if c.decay_steps > 0 else num_train_steps
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=c.learning_rate,
    warmup_steps=c.warmup_steps,
    decay_steps=max(decay_steps, c.warmup_steps + 1),
    end_value=c.min_learning_rate,
  )


def _matrices_only(params):
  """Weight-decay mask: decay kernels and embeddings, not biases or scales.

  Weights stacked by scan_layers (under `blocks`) have one more axis: their
  biases and LayerNorm scales are LxD, still not decayed.
  """
  return jax.tree_util.tree_map_with_path(
    lambda path, p: p.ndim - models.layer_axes(path) >= 2, params
  )


def make_optimizer(
  optim_config: ml_collections.ConfigDict, schedule: Callable
) -> optax.GradientTransformation:
  """Returns the optax chain: clipping, then the update rule."""
  c = optim_config
  validate(c)
  if c.name == 'sgd':
    rule = optax.sgd(schedule)
  else:
    rule = optax.adamw(schedule, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=_matrices_only)
  if c.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), rule)
  return rule
