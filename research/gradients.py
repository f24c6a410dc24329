"""Gradient accumulation: one optimizer step's gradient from K micro-batches.

Shape letters: B batch rows, K micro-batches, M = B / K rows per micro-batch.

Micro-batch j holds rows j, j + K, j + 2K, ... (interleaved, not contiguous
blocks). Batch rows are sharded contiguously over the data-parallel devices,
so every device then holds an equal share of every micro-batch: splitting
moves no rows between devices, and no device idles in a micro-batch.

The micro-batches run in one `jax.lax.scan` whose carry is the float32 sum of
their gradients, so memory holds one micro-batch's activations, not K.
Summing gradients gives the whole batch's gradient only when every
micro-batch's objective divides by the whole batch's denominator; the loss
function given here must do so.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from research import sharding


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
      lambda x_KxM: jnp.swapaxes(x_KxM, 0, 1).reshape((-1,) + x_KxM.shape[2:]),
      tree)


def gradients(loss_fn: Callable, params: Any, carry: Any, batch: dict,
              key: jax.Array, num_micro_batches: int):
  """Sums the gradients of `loss_fn` over K interleaved micro-batches.

  Args:
    loss_fn: `loss_fn(params, carry, batch, key) -> (objective, (loss_sum,
      new_carry))` on M rows, its objective divided by the whole batch's
      denominator so that the K gradients add up to the whole batch's.
    params: the parameters to differentiate.
    carry: recurrent state with B rows on every leaf (`{}` for none); each
      micro-batch runs from its own rows' carry.
    batch: arrays with B leading rows.
    key: the step's key; micro-batch j gets `fold_in(key, j)`, so dropout
      masks differ between micro-batches (and from a whole-batch step's).
    num_micro_batches: K, which must divide B.

  Returns:
    (gradients summed in float32 and cast to the parameters' dtypes, the sum
    of the micro-batches' loss sums, the new carry with B rows in row order).
  """
  rows = jax.tree.leaves(batch)[0].shape[0]
  if num_micro_batches < 1 or rows % num_micro_batches:
    raise ValueError(f'optim.grad_accum_steps={num_micro_batches} must be a '
                     f'positive divisor of the {rows} rows of the batch.')
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro_step(grads_sum, xs):
    micro_batch, micro_carry, index = xs
    (_, (loss_sum, new_carry)), grads = grad_fn(
        params, micro_carry, micro_batch, jax.random.fold_in(key, index))
    grads_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32),
                             grads_sum, grads)
    return grads_sum, (loss_sum, new_carry)

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  xs = (split(batch, num_micro_batches), split(carry, num_micro_batches),
        jnp.arange(num_micro_batches))
  grads, (loss_sums_K, new_carry) = jax.lax.scan(micro_step, zeros, xs)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
  return grads, jnp.sum(loss_sums_K), merge(new_carry)
