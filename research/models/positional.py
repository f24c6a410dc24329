"""How the Transformer knows where a token is: `POSITIONAL`, by name.

A kind (a `Positional`) may add a table to the token embeddings, rotate
queries and keys by their positions, add a bias to the attention logits that
falls with distance, or do nothing (causal masking alone, which still leaks
position, Haviv et al. 2022). A kind whose parameters have the context length
as their shape (`fixed_length`) cannot score a context longer than it was
trained on. A new kind is one entry of `POSITIONAL`; the rules that relate it
to other keys ask its fields (`rotates`, `fixed_length`), never its name.

Shape letters as in research/models/transformer.py; L is a table's length.
"""

import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INIT_STDDEV = 0.02
ROPE_BASE = 10000.0  # Su et al. 2021, as in Vaswani et al.'s sinusoids.


class Positional(NamedTuple):
  """One kind of positional information; a field is None where the kind does
  not act there. Rules ask a kind these fields and properties, never its name.

  Attributes:
    table: `table(module, d_model, length) -> LxD`, row t added to the
      embedding at position t (parameters made with `module.param`).
    rotate: `rotate(x_BxTxNxK, positions_BxT) -> x_BxTxNxK`, applied to the
      queries and to the keys; it turns pairs of a head's features, so a kind
      with one needs an even head width (`rotates`).
    bias: `bias(num_heads, q_positions_BxT, k_positions_BxS) -> BxNxTxS`
      (float32), added to the attention logits; a leading 1 broadcasts.
    fixed_length: True when the parameters' shape is the context length (a
      longer context cannot be scored).
  """

  table: Callable | None = None
  rotate: Callable | None = None
  bias: Callable | None = None
  fixed_length: bool = False

  @property
  def rotates(self) -> bool:
    """True when it rotates pairs of features: the head width must be even."""
    return self.rotate is not None


def sinusoidal_positions(num_positions: int, d_model: int) -> np.ndarray:
  """Fixed sin/cos position table of Vaswani et al. (2017), shape TxD.

  Even columns 2i hold sin(t / 10000^(2i/D)), odd columns the matching cos.
  """
  t_Tx1 = np.arange(num_positions, dtype=np.float64)[:, None]
  inv_freq = np.exp(np.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
  table_TxD = np.zeros((num_positions, d_model), dtype=np.float32)
  table_TxD[:, 0::2] = np.sin(t_Tx1 * inv_freq)
  table_TxD[:, 1::2] = np.cos(t_Tx1 * inv_freq[: d_model // 2])
  return table_TxD


def learned_positions(module: nn.Module, d_model: int, length: int):
  return module.param('pos_embed', nn.initializers.normal(INIT_STDDEV), (length, d_model))


def rope(x_BxTxNxK: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """Rotary position embedding (Su et al. 2021, RoFormer, eq. 34).

  Each pair of features (2i, 2i+1) of a head is a complex number rotated by
  the angle t * base^(-2i/K) at position t, so the product of a query at t
  and a key at s depends on t - s only. K must be even.
  """
  K = x_BxTxNxK.shape[-1]  # pylint: disable=invalid-name
  if K % 2:
    raise ValueError(f'RoPE rotates pairs of features; the head width {K} is odd.')
  inv_freq_H = ROPE_BASE ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)
  angle_BxTxH = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_H
  cos_BxTx1xH = jnp.cos(angle_BxTxH)[:, :, None, :]
  sin_BxTx1xH = jnp.sin(angle_BxTxH)[:, :, None, :]
  x = x_BxTxNxK.astype(jnp.float32)
  even, odd = x[..., 0::2], x[..., 1::2]
  rotated = jnp.stack(
    [even * cos_BxTx1xH - odd * sin_BxTx1xH, even * sin_BxTx1xH + odd * cos_BxTx1xH], axis=-1
  )
  return rotated.reshape(x_BxTxNxK.shape).astype(x_BxTxNxK.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi's head-specific slopes (Press et al. 2022, section 3).

  For n heads, n a power of two, the geometric sequence starting at
  2^(-8/n) with that ratio (8 heads: 1/2, 1/4, ..., 1/256). Otherwise the
  slopes of the largest power of two below n, then every other slope of
  twice that power for the remaining heads (the authors' code).
  """

  def power_of_two(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  below = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = power_of_two(below)
  if below < num_heads:
    slopes += power_of_two(2 * below)[0::2][: num_heads - below]
  return np.asarray(slopes, np.float32)


def alibi_bias(num_heads: int, q_positions_BxT: jax.Array, k_positions_BxS: jax.Array) -> jax.Array:
  """-slope_n * (t - s): a key d positions back costs d times the head's
  slope (keys after the query are masked anyway)."""
  distance_BxTxS = q_positions_BxT[:, :, None] - k_positions_BxS[:, None, :]
  slopes_N = jnp.asarray(alibi_slopes(num_heads))
  return -slopes_N[None, :, None, None] * distance_BxTxS[:, None].astype(jnp.float32)


POSITIONAL: dict[str, Positional] = {
  'learned': Positional(table=learned_positions, fixed_length=True),
  'sinusoidal': Positional(table=lambda _, d_model, length: sinusoidal_positions(length, d_model)),
  'rope': Positional(rotate=rope),
  'alibi': Positional(bias=alibi_bias),
  'none': Positional(),
}
