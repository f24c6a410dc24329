"""Ghost clipping: one row's gradient norm for a model's layers without
forming that row's gradient of them (Goodfellow 2015, "Efficient
Per-Example Gradient Computations"; Li, Tramer, Liang and Hashimoto 2022,
"Large Language Models Can Be Strong Differentially Private Learners").

DP-SGD (research/privacy/dp_sgd.py) needs each row's gradient norm and the
sum of the clipped gradients. A layer applied at the N positions of one row
has a gradient that is a sum of N outer products, so its squared norm
follows from two NxN Gram matrices of what the layer read and the loss's
gradient with respect to what it wrote (dy):

  affine  y_n = x_n W + b:  |dW|^2 + |db|^2 = sum_{n,m} (x_n.x_m + 1)(dy_n.dy_m)
  linear  y_n = x_n W:      |dW|^2 = sum_{n,m} (x_n.x_m)(dy_n.dy_m)
  lookup  y_n = E[id_n]:    |dE|^2 = sum_{n,m} [id_n = id_m] (dy_n.dy_m)
  lstm    gates_t = x_t W_in + h_{t-1} W_rec + b: affine in [x_t, h_{t-1}],
          dy_t the gradient of the gates (research/models/lstm.py)

and the sum of the clipped rows' gradients is one contraction over rows and
positions weighted by each row's clip factor c_i: sum_i c_i x_i^T dy_i (and
sum_i c_i sum_n dy_in for b), or a scatter-add of c_i dy_in into row id_in
of E. For PTB's 10,000-word embedding and softmax a row's gradient of these
two layers is 16 MB, against N^2 (H + V) multiply-adds here; for the LSTM's
layers, per-row gradients of the recurrent kernel would also be summed
inside the time loop, a (rows x H x 4H) buffer rewritten at every step.

A model names the layers this may be used for (`Model.ghost_layers`: pairs
of the module's name at the model's root and its kind). The kinds fix the
parameter names: an affine layer holds `kernel` (input x output) and `bias`,
a linear one `kernel` alone, a lookup `embedding` (rows x width), an lstm
layer `input_kernel`, `recurrent_kernel` and `bias`. Each such layer must be
called exactly once in a forward pass and its parameters used nowhere else
(a tied output head reuses the embedding and is not declared);
`row_gradients` raises if a layer is called another number of times or
through another method. Their calls are intercepted with
`flax.linen.intercept_methods`: what they read is recorded, and a zero
(the tap) is added to what they write (an lstm layer takes it as its
`gates_tap_TxBx4H` argument), so the gradient of the tap is dy.

Shape letters: M rows of a group, N positions of a row, D a layer's input
width, V its output width (the rows of a lookup's table).
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import losses

KINDS = ('affine', 'linear', 'lookup', 'lstm')


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f'Unknown ghost layer kind {kind!r}; known: {KINDS}.')


def _call(kind: str, next_fun: Callable, args, kwargs, tap):
  """The layer's call with `tap` added to what it writes (None: as it is),
  and what it read: its input, or for an lstm layer its input beside the
  state each step started from ([x_t, h_{t-1}], TxBx(D+H))."""
  if kind != 'lstm':
    out = next_fun(*args, **kwargs)
    return (out if tap is None else out + tap.astype(out.dtype)), args[0]
  out = next_fun(*args, gates_tap_TxBx4H=tap, **kwargs)
  x_TxBxD, (_, h0_BxH) = args[0], args[1]
  h_TxBxH = out[0]
  h_prev_TxBxH = jnp.concatenate([h0_BxH[None].astype(h_TxBxH.dtype), h_TxBxH[:-1]], axis=0)
  return out, jnp.concatenate([x_TxBxD.astype(h_TxBxH.dtype), h_prev_TxBxH], axis=-1)


def _tap_shape(kind: str, out) -> jax.ShapeDtypeStruct:
  """The shape of what a layer of `kind` writes, given its output."""
  if kind != 'lstm':
    return jax.ShapeDtypeStruct(out.shape, out.dtype)
  T, B, H = out[0].shape  # pylint: disable=invalid-name
  return jax.ShapeDtypeStruct((T, B, 4 * H), out[0].dtype)


def _interceptor(layers: dict, taps: dict | None, seen: dict) -> Callable:
  """Runs each named root-level module of `layers` ({name: kind}) with its
  tap (`taps[name]`; None: none) and records what it read in `seen`, or its
  output's shape when `taps` is None; other calls pass through."""

  def intercept(next_fun, args, kwargs, context):
    path, method = context.module.path, context.method_name
    if len(path) != 1 or path[0] not in layers or method == 'setup':
      return next_fun(*args, **kwargs)
    name = path[0]
    if method != '__call__':  # Such as a tied head's `attend`: its gradient would be lost.
      raise ValueError(
        f'Ghost clipping cannot take layer {name!r}: the model also calls its {method!r}. '
        "Set --config.privacy.ghost_clipping=False, or do not declare it in the model's "
        'ghost_layers.'
      )
    if name in seen:
      raise ValueError(
        f'Ghost clipping needs layer {name!r} called once per forward pass; it was called '
        'again. Set --config.privacy.ghost_clipping=False, or do not declare it in the '
        "model's ghost_layers."
      )
    out, read = _call(layers[name], next_fun, args, kwargs, None if taps is None else taps[name])
    seen[name] = _tap_shape(layers[name], out) if taps is None else read
    return out

  return intercept


def output_shapes(loss_fn: Callable, params: Any, layers: tuple, batch: losses.Batch, rng) -> dict:
  """{name: shape struct of the layer's tap} for a `batch` of one row."""
  for _, kind in layers:
    _check_kind(kind)
  shapes = {}

  def run(params, batch, rng):
    with nn.intercept_methods(_interceptor(dict(layers), None, shapes)):
      loss_fn(params, batch, rng)

  jax.eval_shape(run, params, batch, rng)
  missing = sorted({name for name, _ in layers} - set(shapes))
  if missing:
    raise ValueError(f'Ghost clipping: the model never called its declared layers {missing}.')
  return shapes


def row_gradients(
  loss_fn: Callable, params: Any, layers: tuple, shapes: dict, batch: losses.Batch, rng: jax.Array
):
  """For a `batch` of one row: the gradient of the parameters outside
  `layers`, and {name: (what the layer read, dy)} for each layer in it.

  Returns:
    (grads of the other parameters, {name: (x or ids, dy)}, the loss's
    `losses.Aux`).
  """
  names = tuple(name for name, _ in layers)
  rest = {k: v for k, v in params.items() if k not in names}
  fixed = {k: v for k, v in params.items() if k in names}

  def loss(rest, taps):
    seen = {}
    with nn.intercept_methods(_interceptor(dict(layers), taps, seen)):
      value, aux = loss_fn({**rest, **fixed}, batch, rng)
    return value, (aux, seen)

  taps = {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}
  (grads, dys), (aux, inputs) = jax.grad(loss, argnums=(0, 1), has_aux=True)(rest, taps)
  return grads, {name: (inputs[name], dys[name]) for name in names}, aux


def _flat(dy: jax.Array) -> jax.Array:
  """(..., V) -> (N, V) in float32."""
  return dy.reshape(-1, dy.shape[-1]).astype(jnp.float32)


def squared_norm(kind: str, x: jax.Array, dy: jax.Array) -> jax.Array:
  """One row's squared gradient norm of a layer of `kind` (module docstring)
  from what it read (`x`: ...xD inputs, or ... ids for a lookup) and dy."""
  _check_kind(kind)
  dy_NxV = _flat(dy)
  gram_dy_NxN = dy_NxV @ dy_NxV.T
  if kind == 'lookup':
    ids_N = x.reshape(-1)
    gram_x_NxN = (ids_N[:, None] == ids_N[None, :]).astype(jnp.float32)
  else:
    x_NxD = _flat(x)
    gram_x_NxN = x_NxD @ x_NxD.T + (0.0 if kind == 'linear' else 1.0)
  return jnp.sum(gram_x_NxN * gram_dy_NxN)


def squared_norms(kind: str, x_M: jax.Array, dy_M: jax.Array) -> jax.Array:
  """`squared_norm` of each of M rows (the leading axis of `x_M` and `dy_M`),
  one row after another: the same values as vmapping it, faster on CPU, where
  XLA ran the batched Gram matrices of PTB's softmax gradient (32 rows of
  20 x 10,000) at about 30 GFLOP/s: 8.3 ms against 5.9 ms row by row on a
  2-core AMD EPYC."""
  return jax.lax.map(lambda row: squared_norm(kind, *row), (x_M, dy_M))


def add_clipped(kind: str, total: dict, x_M: jax.Array, dy_M: jax.Array, scale_M: jax.Array):
  """`total` (the layer's parameter tree, float32) plus sum_i scale_i g_i
  over a group of M rows, without any row's g_i.

  The scales go on what the layers read, not on dy, and a bias's sum comes
  out of the same contraction as its kernel's, through a column of ones
  appended to x (as the LSTM's softmax layer folds its bias): for PTB's
  softmax, dy is M x 20 x 10,000 and x M x 20 x 200, and scaling dy and
  summing it apart cost the ptb_lstm:small DP step 90.2 against 81.8 ms
  (interleaved rounds, 2-core AMD EPYC). The sums differ only in float32
  rounding order.
  """
  _check_kind(kind)
  M = scale_M.shape[0]  # pylint: disable=invalid-name
  dy_MxNxV = dy_M.reshape(M, -1, dy_M.shape[-1]).astype(jnp.float32)
  if kind == 'lookup':
    weighted_MxNxV = dy_MxNxV * scale_M[:, None, None]
    table = total['embedding']
    return {'embedding': table.at[x_M.reshape(-1)].add(weighted_MxNxV.reshape(-1, table.shape[1]))}
  x_MxNxD = x_M.reshape(M, -1, x_M.shape[-1]).astype(jnp.float32)
  if kind != 'linear':  # [x, 1]: the last row of the product is the bias's sum.
    x_MxNxD = jnp.concatenate([x_MxNxD, jnp.ones((*x_MxNxD.shape[:2], 1), jnp.float32)], axis=-1)
  summed = jnp.einsum('mnd,mnv->dv', x_MxNxD * scale_M[:, None, None], dy_MxNxV)
  if kind == 'linear':
    return {'kernel': total['kernel'] + summed}
  kernel, bias = summed[:-1], summed[-1]
  if kind == 'affine':
    return {'kernel': total['kernel'] + kernel, 'bias': total['bias'] + bias}
  d = total['input_kernel'].shape[0]  # lstm: the rows of [x, h_prev] split back.
  return {
    'input_kernel': total['input_kernel'] + kernel[:d],
    'recurrent_kernel': total['recurrent_kernel'] + kernel[d:],
    'bias': total['bias'] + bias,
  }
