"""Layers shared by the model families."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix

# Random draws are 16-bit: the keep probability is rounded to a multiple of
# 2**-16 (0.8 becomes 0.800003), and kept values are scaled by the inverse of
# that rounded probability, so the expected output is exactly the input.
_LEVELS = 1 << 16


class Dropout(nn.Module):
  """Inverted dropout drawing two 16-bit uniforms from each 32-bit random word.

  Same contract as flax.linen.Dropout (the 'dropout' rng stream, a no-op when
  deterministic or at rate 0), at half the random bits: generating them is
  most of dropout's cost on a CPU. A 64x6x256x256 attention mask took 414 ms
  with jax.random.bernoulli and 258 ms this way on a 2-core CPU, and the full
  shakespeare_char step (dropout 0.2 on attention weights and residual
  branches) went from 20.4 to 17.9 s, measured interleaved in one process.
  The masks differ from flax's, so runs with dropout draw other masks than
  they did before this layer (same distribution).
  """

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    if not 0.0 < self.rate < 1.0:
      raise ValueError(f'Dropout rate must be in [0, 1), got {self.rate}.')
    keep_levels = round((1.0 - self.rate) * _LEVELS)
    *lead, last = x.shape
    bits = jax.random.bits(self.make_rng('dropout'), (*lead, (last + 1) // 2), jnp.uint32)
    uniform16 = jnp.concatenate([bits & 0xFFFF, bits >> 16], axis=-1)
    keep = uniform16[..., :last] < keep_levels
    scale = jnp.asarray(_LEVELS / keep_levels, x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))


@flax.struct.dataclass
class Int8:
  """A weight matrix stored in int8 (post-training quantisation, research/compress.py).

  `q` is a qwix `QArray`: int8 values and a float32 scale per output channel
  (per row for an embedding table, which is both looked up by row and, when
  tied, the output head's rows), absmax-calibrated, so w ≈ q.qvalue * q.scale.
  With `quantize_inputs` (w8a8) every matmul with it also quantises its input
  to int8 per row, dynamically, and multiplies int8 by int8 with an int32 sum
  (qwix's fast path); without it (weight-only int8) qwix dequantises the
  weight and multiplies in float: it saves memory, not time.

  A parameter tree may hold these in place of float matrices: the layers
  below (`Dense`, `Embed`, `matmul`) compute with either, so a family's
  modules run quantised parameters unchanged.
  """

  q: qwix.QArray
  quantize_inputs: bool = flax.struct.field(pytree_node=False, default=False)

  shape = property(lambda self: self.q.shape)  # The float matrix's.
  ndim = property(lambda self: self.q.ndim)
  size = property(lambda self: self.q.qvalue.size)


def is_int8(x) -> bool:
  """For `is_leaf=`: a quantised weight counts as one matrix."""
  return isinstance(x, Int8)


def matmul(x_NxD: jax.Array, w_DxF: jax.Array | Int8) -> jax.Array:
  """x @ w over the last axis of x and the first of w; `w` float or `Int8`.

  The float case is the one dot_general that `x @ w` and `nn.Dense` lower to,
  so a float model computes exactly what it did before this seam existed.
  """
  dims = (((x_NxD.ndim - 1,), (0,)), ((), ()))
  if not isinstance(w_DxF, Int8):
    return jax.lax.dot_general(x_NxD, w_DxF, dims)
  return _int8_dot(x_NxD, w_DxF, dims)


def _int8_dot(x: jax.Array, w: Int8, dims) -> jax.Array:
  if w.quantize_inputs:
    # Dynamic per-row (per-token) scales: every axis but the contracted one.
    x = qwix.quantize(x, jnp.int8, channelwise_axes=tuple(range(x.ndim - 1)))
  return qwix.dot_general(x, w.q, dims).astype(w.q.scale.dtype)


def param(module: nn.Module, name: str, init, shape: tuple[int, ...]):
  """`module.param(name, init, shape)`, or the `Int8` stored under `name`
  (flax would compare its leaves' shapes with `shape`, which a quantised
  weight's scale does not have)."""
  if module.has_variable('params', name):
    stored = module.get_variable('params', name)
    if isinstance(stored, Int8):
      return stored
  return module.param(name, init, shape)


class Dense(nn.Module):
  """flax.linen.Dense on 2-D inputs (the same parameters, initialisers and
  float computation) whose kernel may be `Int8`."""

  features: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x_NxD: jax.Array) -> jax.Array:
    kernel = param(self, 'kernel', self.kernel_init, (x_NxD.shape[-1], self.features))
    y_NxF = matmul(x_NxD, kernel)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
      y_NxF = y_NxF + jnp.reshape(bias, (1,) * (y_NxF.ndim - 1) + (-1,))
    return y_NxF


class Embed(nn.Module):
  """flax.linen.Embed (the same parameter and lookup) whose table may be
  `Int8`, quantised per row: a lookup then dequantises only its rows."""

  num_embeddings: int
  features: int
  embedding_init: nn.initializers.Initializer

  def setup(self):
    self.embedding = param(
      self, 'embedding', self.embedding_init, (self.num_embeddings, self.features)
    )

  def __call__(self, ids: jax.Array) -> jax.Array:
    table = self.embedding
    if not isinstance(table, Int8):
      return jnp.take(table, ids, axis=0)
    rows = jnp.take(table.q.qvalue, ids, axis=0).astype(table.q.scale.dtype)
    return rows * jnp.take(table.q.scale, ids, axis=0)

  def attend(self, x_NxD: jax.Array) -> jax.Array:
    """x @ table.T: the tied output head (per-row scales are its per-output
    channel ones)."""
    table = self.embedding
    if not isinstance(table, Int8):
      return jnp.dot(x_NxD, table.T)
    return _int8_dot(x_NxD, table, (((x_NxD.ndim - 1,), (1,)), ((), ())))
