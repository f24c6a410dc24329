"""DP-SGD's gradient (Abadi et al. 2016): per-sequence clipping and Gaussian
noise, as a gradient function of research/gradients.py.

The unit of privacy is one training sequence, one row of a batch. Each row's
gradient g_i is taken through `jax.vmap` of the objective's own loss on that
row alone, scaled to norm at most C (`l2_clip_norm`): g_i min(1, C / |g_i|).
The clipped gradients are summed, noise N(0, (sigma C)^2) is added to every
coordinate, and the result is divided by a constant: the expected number of
rows times the objective's per-row scale, so that neither the number of rows
sampled nor their content changes the scale. Padded rows (weight 0) have a
zero gradient and add nothing. `microbatch_size` rows are vmapped at a time
(a `lax.scan` over contiguous groups), which bounds the memory of the per-row
gradients; a group of padding alone is skipped (`lax.cond`), and the sampler
puts the sampled rows first, so a step costs about its sampled rows, not the
padded maximum. With `ghost_layers` (a model's `Model.ghost_layers`), those
layers' part of each row's norm and of the clipped sum comes from what they
read and the gradient of what they wrote (research/privacy/ghost.py), not
from per-row gradients of their parameters.

When the ghost layers hold every parameter (the LSTM) and the run has one
device, no row's gradient is formed at all and a row costs only its
activations, so the rows are not grouped: one vmapped pass takes the first
S rows of the batch, S the smallest of a few static sizes (`row_buckets`,
multiples of microbatch_size around the expected rows) that holds every
sampled row, picked at run time by `lax.switch`. Groups of 4 rows made the
vmapped matmuls small and paid each group's fixed work (the head's
concatenated kernel, the sums' adds) again: on PTB's small LSTM a step of
about 20 sampled rows took 4.7 ms a row in groups of 4 against 3.3 ms in
one pass of 28 (2-core AMD EPYC, BENCHMARKS.md).

Shape letters: B rows of the padded batch, K groups of M = microbatch_size,
S the rows of a bucket.
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from research import losses
from research import metrics
from research.privacy import ghost


def global_norm(tree: Any) -> jax.Array:
  """The L2 norm of all of `tree`'s leaves together, in float32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def clip(tree: Any, l2_clip_norm: float) -> tuple[Any, jax.Array]:
  """`tree` scaled to global L2 norm at most `l2_clip_norm`, and its norm."""
  norm = global_norm(tree)
  scale = jnp.minimum(1.0, l2_clip_norm / jnp.maximum(norm, 1e-12))
  return jax.tree.map(lambda x: (x * scale).astype(x.dtype), tree), norm


def row_buckets(rows: int, expected: float, multiple: int) -> tuple[int, ...]:
  """The static row counts a step of `rows` padded rows may compute (module
  docstring): multiples of `multiple` from about `expected` - 2 sqrt(expected)
  to `expected` + 2.5 sqrt(expected) (a Poisson count of mean `expected`
  falls outside with probability about 1 %), at most 7 of them, then `rows`."""
  spread = math.sqrt(max(expected, 1.0))
  low = max(multiple, math.ceil((expected - 2 * spread) / multiple) * multiple)
  high = expected + 2.5 * spread
  step = multiple * max(1, math.ceil((high - low) / (6 * multiple)))
  sizes = []
  while low < rows and len(sizes) < 7:
    sizes.append(low)
    if low >= high:
      break
    low += step
  return (*sizes, rows)


def private(
  *,
  l2_clip_norm: float,
  noise_multiplier: float,
  denominator: float,
  row_scale: float,
  microbatch_size: int = 0,
  ghost_layers: tuple[tuple[str, str], ...] = (),
) -> Callable:
  """The DP-SGD gradient function (module docstring).

  Args:
    l2_clip_norm: C, the bound on one row's gradient norm.
    noise_multiplier: sigma; the noise's standard deviation is sigma * C.
    denominator: what the noisy sum is divided by (expected rows x row_scale).
    row_scale: what one row's summed token losses are divided by before its
      gradient is taken (the sequence length for a per-token objective, 1
      for a per-sequence one), so that C bounds a per-row mean.
    microbatch_size: rows vmapped at once; 0 for the whole batch.
    ghost_layers: (module name, kind) of the layers to clip by their
      inputs and output gradients (research/privacy/ghost.py); () for none.

  Returns:
    `gradient_fn(loss_fn, params, batch, rng) -> (grads, aux)` for a
    `losses.Batch` (whose `denominator` it does not read: a row's is
    `row_scale`, the sum's `denominator`), `aux` a `losses.Aux` with
    `clipped_fraction` set.
  """

  def dp_gradient(loss_fn: Callable, params: Any, batch: losses.Batch, rng: jax.Array):
    per_row = batch.rows
    rows = per_row['inputs'].shape[0]
    dropout_rng, noise_rng = jax.random.split(rng)
    grad_fn = jax.grad(loss_fn, has_aux=True)

    def single(row):  # A batch of one row: the objective's loss on this sequence alone.
      one = jax.tree.map(lambda x: x[None], row)
      return losses.Batch(rows=one, denominator=jnp.asarray(row_scale, jnp.float32))

    if ghost_layers:
      first = jax.tree.map(lambda x: x[0], per_row)
      shapes = ghost.output_shapes(loss_fn, params, ghost_layers, single(first), dropout_rng)

    def ghost_squares_M(reads_M) -> jax.Array:
      """The ghost layers' squared norms of a group's rows, summed over layers: on
      one device row after another (ghost.squared_norms: the same values, faster on
      CPU), otherwise vmapped, where the rows may be split over devices."""

      def vmapped(kind, x_M, dy_M):
        return jax.vmap(functools.partial(ghost.squared_norm, kind))(x_M, dy_M)

      per_row = ghost.squared_norms if jax.device_count() == 1 else vmapped
      return sum(per_row(kind, *reads_M[name]) for name, kind in ghost_layers)

    def one_row(row, index):  # -> (grads, reads, squared norm of `grads`, aux, real)
      rng = jax.random.fold_in(dropout_rng, index)
      if ghost_layers:
        grads, reads, aux = ghost.row_gradients(
          loss_fn, params, ghost_layers, shapes, single(row), rng
        )
      else:
        grads, aux = grad_fn(params, single(row), rng)
        reads = {}
      square = jnp.square(global_norm(grads))
      real = jnp.sum(row['weights']) > 0
      aux = jax.tree.map(lambda x: x[0] if x.ndim else x, aux)  # Drop the row axis of one.
      return grads, reads, square, aux, real

    size = microbatch_size or rows
    if rows % size:
      raise ValueError(
        f'privacy.microbatch_size={microbatch_size} does not divide the {rows} rows of a '
        'padded DP batch.'
      )
    groups = rows // size

    def compute(total, group, indices):  # total + the group's clipped rows.
      grads_M, reads_M, square_M, aux_M, real_M = jax.vmap(one_row)(group, indices)
      norm_M = jnp.sqrt(square_M + ghost_squares_M(reads_M) if ghost_layers else square_M)
      scale_M = jnp.minimum(1.0, l2_clip_norm / jnp.maximum(norm_M, 1e-12))
      # The clipped rows' sum as one contraction over the row axis: scaling
      # and summing the M gradients elementwise made XLA's CPU backend take
      # 22 s for 8 rows of PTB's LSTM (its 10,000-word embedding and softmax)
      # against 0.4 s this way.
      total = dict(total)
      for name, grads in grads_M.items():
        total[name] = jax.tree.map(
          lambda t, g: t + jnp.tensordot(scale_M, g.astype(jnp.float32), axes=(0, 0)),
          total[name],
          grads,
        )
      for name, kind in ghost_layers:
        total[name] = ghost.add_clipped(kind, total[name], *reads_M[name], scale_M)
      return total, aux_M, jnp.sum((norm_M > l2_clip_norm) & real_M), jnp.sum(real_M)

    def group_step(total, xs):
      # A group of padding alone passes the sum through untouched.
      group, indices = xs
      shapes = jax.eval_shape(compute, total, group, indices)[1:]
      skip = lambda total, group, indices: (  # noqa: E731
        total,
        *jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
      )
      total, aux_M, over, real = jax.lax.cond(
        jnp.any(group['weights'] > 0), compute, skip, total, group, indices
      )
      return total, (aux_M, over, real)

    def contiguous(x_B):  # (B, ...) -> (K, M, ...): group k is rows kM..kM+M-1.
      return x_B.reshape((groups, size) + x_B.shape[1:])

    def first_rows(count, total):  # total + the first `count` rows, per-row outputs padded to B.
      head = jax.tree.map(lambda x: x[:count], per_row)
      total, aux_S, over, real = compute(total, head, jnp.arange(count))
      pad = lambda x: jnp.pad(x, [(0, rows - count)] + [(0, 0)] * (x.ndim - 1))  # noqa: E731
      return total, jax.tree.map(pad, aux_S), over, real

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    ghosted = {name for name, _ in ghost_layers}
    # No per-row gradient: buckets. On one device only, where a bucket's rows need
    # not divide among the devices' shards of the batch.
    if ghost_layers and set(params) <= ghosted and jax.device_count() == 1:
      sizes = row_buckets(rows, denominator / row_scale, microbatch_size or 1)
      metrics.console(  # At tracing, once per compilation.
        'DP-SGD rows: every parameter is ghost-clipped, so each step takes its first S rows in '
        'one pass, S the smallest of %s holding every sampled row.',
        sizes,
      )
      sampled = jnp.max(jnp.where(jnp.any(per_row['weights'] > 0, axis=1), jnp.arange(rows) + 1, 0))
      branches = [lambda total, count=count: first_rows(count, total) for count in sizes]
      bucket = jnp.searchsorted(jnp.asarray(sizes), sampled)
      total, aux_B, over, real = jax.lax.switch(bucket, branches, zeros)
      aux_KxM, over_K, real_K = jax.tree.map(lambda x: x[None], (aux_B, over, real))
    else:
      total, (aux_KxM, over_K, real_K) = jax.lax.scan(
        group_step, zeros, (jax.tree.map(contiguous, per_row), contiguous(jnp.arange(rows)))
      )
    leaves, treedef = jax.tree.flatten(total)
    keys = jax.random.split(noise_rng, len(leaves))
    # JAX's default threefry (partitionable) lets each device draw only its
    # shard of a sharded array; with one device the other form is faster: 20
    # against 47 ms for the 4.65M coordinates of PTB's small LSTM on a 2-core
    # Xeon, where the whole plain step takes about 50 ms.
    with jax.threefry_partitionable(jax.device_count() > 1):
      noisy = [
        (g + noise_multiplier * l2_clip_norm * jax.random.normal(k, g.shape, jnp.float32))
        / denominator
        for g, k in zip(leaves, keys)
      ]
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), jax.tree.unflatten(treedef, noisy), params)
    # Per-row scalars summed; per-row arrays (the carry) back in batch order.
    aux = jax.tree.map(
      lambda x: jnp.sum(x) if x.ndim == 2 else x.reshape((rows,) + x.shape[2:]), aux_KxM
    )
    clipped_fraction = jnp.sum(over_K) / jnp.maximum(jnp.sum(real_K), 1)
    return grads, aux._replace(clipped_fraction=clipped_fraction)

  def gradient_fn(loss_fn: Callable, params: Any, batch: losses.Batch, rng: jax.Array):
    # The scope names these ops in the compiled module (research/profile.py); nothing else.
    with jax.named_scope('dp_sgd'):
      return dp_gradient(loss_fn, params, batch, rng)

  return gradient_fn


def for_run(parts, config) -> Callable | None:
  """DP-SGD's gradient function for a DP run (`parts.privacy` set: see
  research/components.py), else None. The noisy sum is divided by the
  expected rows of a step times the objective's row scale."""
  if parts.privacy is None:
    return None
  row_scale = losses.reduction(config.optim.loss).row_scale(config.data.seq_len)
  ghost_layers = parts.model.ghost_layers if config.privacy.ghost_clipping else ()
  metrics.console(
    'DP-SGD per-row norms: %s.',
    'ghost clipping of %s, per-row gradients of any other parameter'
    % ', '.join(name for name, _ in ghost_layers)
    if ghost_layers
    else 'per-row gradients of every parameter',
  )
  return private(
    l2_clip_norm=config.privacy.l2_clip_norm,
    noise_multiplier=parts.privacy.noise_multiplier,
    denominator=config.data.batch_size * row_scale,
    row_scale=row_scale,
    microbatch_size=config.privacy.microbatch_size,
    ghost_layers=ghost_layers,
  )
