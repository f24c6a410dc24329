"""The Transformer's options: registries of named functions (or small
modules) that `transformer.Config` chooses from by name.

A new option is one function registered here (and, where it is a new kind of
choice, one field of `Config`): `NORMS` (`norm(config, name)`), `POSITIONAL`
(`positional(module, config, seq_len)`) and `MLPS` (`mlp(config, name=...)`).
Shape letters as in research/models/transformer.py.
"""

import math
from typing import TYPE_CHECKING, Callable

import flax.linen as nn
import jax
import numpy as np

from research import sharding
from research.models import layers
from research.sharding import BATCH

if TYPE_CHECKING:  # Annotations only: transformer.py imports this module.
  from research.models import transformer

# GPT-2 and nanoGPT use 1e-5; Flax's default is 1e-6.
_LAYER_NORM_EPSILON = 1e-5
INIT_STDDEV = 0.02


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), as nanoGPT's nn.GELU() (GPT-2 used tanh).

  Written with erf rather than jax.nn.gelu's erfc: XLA's erf is one rational
  polynomial while erfc branches on the range and needs exp, and on a 2-core
  CPU this cut the shakespeare_char:cpu step by 3 ms (about 6%). The two
  agree to float32 rounding wherever the value is not ~0 (erfc keeps more
  relative precision deep in the negative tail, where GELU is below 1e-7).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def residual_init(config: 'transformer.Config') -> nn.initializers.Initializer:
  """GPT-2: projections into the residual stream start at std 0.02 / sqrt(2 L),
  so its variance does not grow with depth (two such writes per block)."""
  return nn.initializers.normal(INIT_STDDEV / math.sqrt(2 * config.num_layers))


# Norms: norm(config, name) -> a module mapping x_BxTxD to x_BxTxD, at the
# three sites ln_1, ln_2 (each block) and ln_f (the output).
def layernorm(config: 'transformer.Config', name: str) -> nn.Module:
  return nn.LayerNorm(epsilon=_LAYER_NORM_EPSILON, use_bias=config.use_bias, name=name)


NORMS: dict[str, Callable[..., nn.Module]] = {'layernorm': layernorm}


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


# Positional encodings: positional(module, config, seq_len) -> the PxD table
# whose row t is added at position t (parameters made with `module.param`).
def learned_positions(module: nn.Module, config: 'transformer.Config', seq_len: int):
  return module.param('pos_embed', nn.initializers.normal(INIT_STDDEV), (seq_len, config.d_model))


POSITIONAL: dict[str, Callable] = {
  'learned': learned_positions,
  'sinusoidal': lambda _, config, seq_len: sinusoidal_positions(seq_len, config.d_model),
}


class GeluMlp(nn.Module):
  """GELU MLP, D -> F -> D, with dropout on its output."""

  config: 'transformer.Config'

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool) -> jax.Array:
    c = self.config
    B, T, D = x_BxTxD.shape  # pylint: disable=invalid-name
    h_BTxF = nn.Dense(
      c.d_ff, use_bias=c.use_bias, kernel_init=nn.initializers.normal(INIT_STDDEV), name='fc'
    )(x_BxTxD.reshape(B * T, D))
    h_BTxF = sharding.constrain(gelu(h_BTxF), BATCH, 'tensor')
    out_BTxD = nn.Dense(D, use_bias=c.use_bias, kernel_init=residual_init(c), name='proj')(h_BTxF)
    out_BTxD = layers.Dropout(c.dropout_rate)(out_BTxD, deterministic=not train)
    return out_BTxD.reshape(B, T, D)


# MLPs: mlp(config, name=...) -> a module mapping (x_BxTxD, train) to x_BxTxD.
MLPS: dict[str, Callable[..., nn.Module]] = {'gelu': GeluMlp}
