"""The Transformer's options: registries of named functions (or small
modules) that `transformer.Config` chooses from by name.

A new option is one function registered here (and, where it is a new kind of
choice, one field of `Config`): `NORMS` (`norm(config, name)`; also the
choices of `QK_NORMS`) and `MLPS` (`mlp(config, name=...)`); positional
information is research/models/positional.py's `POSITIONAL`. An option reads
the fields of `OptionConfig` (`transformer.Config` has them); this module
does not import the family. Shape letters as in research/models/transformer.py.
"""

import collections
import functools
import math
from typing import Callable, Protocol

import flax.linen as nn
import jax

from research import sharding
from research.models import layers
from research.sharding import BATCH

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


class OptionConfig(Protocol):
  """The fields of `transformer.Config` that the options here read."""

  num_layers: int
  d_ff: int
  dropout_rate: float
  use_bias: bool


def residual_init(config: OptionConfig) -> nn.initializers.Initializer:
  """GPT-2: projections into the residual stream start at std 0.02 / sqrt(2 L),
  so its variance does not grow with depth (two such writes per block)."""
  return nn.initializers.normal(INIT_STDDEV / math.sqrt(2 * config.num_layers))


# Norms: norm(config, name) -> a module mapping x_BxTxD to x_BxTxD, at the
# three sites ln_1, ln_2 (each block) and ln_f (the output).
def layernorm(config: OptionConfig, name: str) -> nn.Module:
  return nn.LayerNorm(epsilon=_LAYER_NORM_EPSILON, use_bias=config.use_bias, name=name)


def rmsnorm(config: OptionConfig, name: str) -> nn.Module:
  """Zhang and Sennrich 2019: x / sqrt(mean(x^2) + eps) * g; no mean
  subtraction and no bias whatever use_bias says."""
  del config
  return nn.RMSNorm(epsilon=_LAYER_NORM_EPSILON, name=name)


NORMS: dict[str, Callable[..., nn.Module]] = {'layernorm': layernorm, 'rmsnorm': rmsnorm}
NORM_POSITIONS = ('pre', 'post')

# qk-norm (Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion
# Parameters", its architecture's "QK Normalization"; Wortsman et al. 2024,
# section 3.1.1, "qk-layernorm"): 'none', or a norm of NORMS applied over the
# K features of each head's queries and keys (research/models/attention.py).
# A live view of NORMS, not a copy, so that a norm registered there later (a
# user's, a test's) is a qk-norm too.
QK_NORMS: collections.ChainMap = collections.ChainMap({'none': None}, NORMS)


class Mlp(nn.Module):
  """D -> F -> D with dropout on its output: act(x W) W2, or, gated (Shazeer
  2020, "GLU Variants Improve Transformer", eq. 5-6), (act(x W) * x V) W2.

  W is `fc` when ungated and `gate` when gated, where V is `fc`; W2 is
  `proj`. A gated MLP has two input projections of width F = `d_ff` each, so
  at equal F it has 1.5x the parameters: a comparison at equal size sets its
  d_ff to 2/3 of the ungated one's (as Shazeer does).
  """

  config: OptionConfig
  activation: Callable[[jax.Array], jax.Array]
  gated: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool) -> jax.Array:
    c = self.config
    B, T, D = x_BxTxD.shape  # pylint: disable=invalid-name
    x_BTxD = x_BxTxD.reshape(B * T, D)

    def project(name):
      kernel_init = nn.initializers.normal(INIT_STDDEV)
      return layers.Dense(c.d_ff, use_bias=c.use_bias, kernel_init=kernel_init, name=name)(x_BTxD)

    if self.gated:
      h_BTxF = self.activation(project('gate')) * project('fc')
    else:
      h_BTxF = self.activation(project('fc'))
    h_BTxF = sharding.constrain(h_BTxF, BATCH, 'tensor')
    out_BTxD = layers.Dense(D, use_bias=c.use_bias, kernel_init=residual_init(c), name='proj')(
      h_BTxF
    )
    out_BTxD = layers.Dropout(c.dropout_rate)(out_BTxD, deterministic=not train)
    return out_BTxD.reshape(B, T, D)


def _mlp(activation: Callable, gated: bool = False) -> Callable[..., nn.Module]:
  return functools.partial(Mlp, activation=activation, gated=gated)


def _identity(x: jax.Array) -> jax.Array:
  return x


# MLPs: mlp(config, name=...) -> a module mapping (x_BxTxD, train) to x_BxTxD.
# Swish is x * sigmoid(x) (beta = 1, as Shazeer's Swish_1).
MLPS: dict[str, Callable[..., nn.Module]] = {
  'gelu': _mlp(gelu),
  'relu': _mlp(jax.nn.relu),
  'swish': _mlp(jax.nn.silu),
  'glu': _mlp(jax.nn.sigmoid, gated=True),
  'bilinear': _mlp(_identity, gated=True),
  'reglu': _mlp(jax.nn.relu, gated=True),
  'geglu': _mlp(gelu, gated=True),
  'swiglu': _mlp(jax.nn.silu, gated=True),
}
