"""How the train step makes a gradient from a loss function.

A gradient function is `gradient_fn(loss_fn, params, batch, rng) -> (grads,
aux)` for a `losses.Objective.loss_fn` and a `losses.Batch`; `aux` is the
loss function's `losses.Aux` for the whole batch: each leaf is a scalar that
sums over the batch's rows (`loss_sum`, `weight_sum`, `log_z_sum`) or has
the rows as its leading axis (`carry`). Three ways:

- `plain`: one `jax.value_and_grad` over the whole batch.
- `accumulated(K)`: the sum of the gradients of K micro-batches of M = B / K
  rows, in one `jax.lax.scan` whose carry is their float32 sum, so memory
  holds one micro-batch's activations, not K. Micro-batch j holds rows j,
  j + K, j + 2K, ... (interleaved, not contiguous blocks): batch rows are
  sharded contiguously over the data-parallel devices, so every device then
  holds an equal share of every micro-batch and the loop moves no data
  between devices. Each micro-batch divides by the whole batch's
  `denominator`, so the sum is the whole batch's gradient.
- DP-SGD's per-row clipped and noised sum (`research/privacy/dp_sgd.py`,
  `private`).

`make(grad_accum_steps)` gives one of the first two; `train.make_train_step`
takes DP-SGD's instead for a private run.

Shape letters: B batch rows, K micro-batches, M = B / K rows per micro-batch.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from research import losses
from research import sharding


def plain(loss_fn: Callable, params: Any, batch: losses.Batch, rng: jax.Array):
  """The gradient of `loss_fn` over the whole batch, and its aux."""
  (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
  return grads, aux


def split(tree: Any, num_micro_batches: int) -> Any:
  """Leaves (B, ...) -> (K, M, ...); [j] is micro-batch j: rows j, j+K, ..."""

  def one(x_B):
    x_MxK = x_B.reshape((-1, num_micro_batches) + x_B.shape[1:])
    x_KxM = jnp.swapaxes(x_MxK, 0, 1)
    return sharding.constrain(x_KxM, None, sharding.BATCH)

  return jax.tree.map(one, tree)


def merge(tree: Any) -> Any:
  """The inverse of `split`: leaves (K, M, ...) -> (B, ...) in row order."""
  return jax.tree.map(
    lambda x_KxM: jnp.swapaxes(x_KxM, 0, 1).reshape((-1,) + x_KxM.shape[2:]), tree
  )


def accumulated(num_micro_batches: int) -> Callable:
  """The gradient summed over K interleaved micro-batches (module docstring).

  Micro-batch j gets the key `fold_in(rng, j)`, so dropout masks differ
  between micro-batches (and from a whole-batch step's: with dropout the
  result is an equally distributed draw, not the same one).
  """

  def gradient_fn(loss_fn: Callable, params: Any, batch: losses.Batch, rng: jax.Array):
    num_rows = batch.rows['inputs'].shape[0]
    if num_micro_batches < 1 or num_rows % num_micro_batches:
      raise ValueError(
        f'optim.grad_accum_steps={num_micro_batches} must be a '
        f'positive divisor of the {num_rows} rows of the batch.'
      )
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_step(grads_sum, xs):
      micro_rows, index = xs
      micro_batch = batch._replace(rows=micro_rows)
      (_, aux), grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
      grads_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grads_sum, grads)
      return grads_sum, aux

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    grads, aux_K = jax.lax.scan(
      micro_step, zeros, (split(batch.rows, num_micro_batches), jnp.arange(num_micro_batches))
    )
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    # A scalar of each micro-batch (now K of them) is a sum over its rows;
    # anything else has a row axis (now K, M), put back in batch order.
    aux = jax.tree.map(lambda x_K: jnp.sum(x_K, axis=0) if x_K.ndim == 1 else merge(x_K), aux_K)
    return grads, aux

  return gradient_fn


def make(grad_accum_steps: int) -> Callable:
  """The gradient function for `optim.grad_accum_steps` (1: `plain`)."""
  return plain if grad_accum_steps == 1 else accumulated(grad_accum_steps)
