"""Decoder-only Transformer language model (GPT-2 / nanoGPT style).

Pre-norm blocks of causal multi-head self-attention and an MLP, a final norm
and an output head that is either the transposed token embedding (tied) or a
separate bias-free Dense, as in GPT-2. The options are named functions in
small registries, chosen by `Config`: `NORMS` (LayerNorm), `POSITIONAL`
(learned or sinusoidal tables) and `MLPS` (GELU). A new option is one field
of `Config` (where it is a new key) plus one registered function.

Shape letters (a joined pair such as BT is one flattened axis of size B*T):
  B: batch size
  T: query positions of this call (T <= P)
  S: key positions (the same positions as T, named apart for the einsums)
  P: context length, `seq_len` (rows of the position table)
  D: model width, `d_model`
  F: MLP hidden width, `d_ff`
  N: number of attention heads
  K: width of one head, D // N
  V: vocabulary size

Parameter tree (`Model.init` output; the norms' as for norm='layernorm'):
  embed/embedding           VxD
  pos_embed                 PxD   (only for positional='learned')
  block_{i}/ln_1, ln_2      scale D, bias D (bias only if use_bias)
  block_{i}/attn/qkv        kernel Dx3D, bias 3D; columns head-major (N, 3, K):
                            head n's q, k, v side by side, so a contiguous
                            split over `tensor` hands out whole heads
  block_{i}/attn/out        kernel DxD, bias D
  block_{i}/mlp/fc          kernel DxF, bias F
  block_{i}/mlp/proj        kernel FxD, bias D
  ln_f                      scale D, bias D
  head/kernel               DxV   (only if not tie_embeddings)

With scan_layers=True the L blocks are one `lax.scan` over stacked weights:
`blocks/...` replaces `block_{i}/...`, every leaf with a leading axis of L
(`blocks/attn/qkv/kernel` is LxDx3D). The function computed is the same; XLA
compiles one block instead of L, so compile time stops growing with depth.

Sharding (`PARTITION_RULES`): tensor parallelism splits qkv and mlp/fc by
output column (whole heads, hidden units), attn/out and mlp/proj by input
row; vocabulary and position dimensions are never split (they rarely divide).
"""

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import models
from research import rules
from research import sharding
from research.models import layers
from research.sharding import BATCH

ATTENTION_KINDS = ('xla', 'dot_product')
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# GPT-2 and nanoGPT use 1e-5; Flax's default is 1e-6.
_LAYER_NORM_EPSILON = 1e-5
_INIT_STDDEV = 0.02
# From this context length on, the XLA attention path works on heads-major
# (B, N, T, K) operands; below it on (B, T, N, K) as the projection yields
# them. Measured on a 2-core Intel Xeon VM (research.bench, float32):
# heads-major took the shakespeare_char step at context 256 from 13.1 to
# 10.7 s (batch 64), 2.57 to 2.38 s (batch 16) and 0.68 to 0.60 s (batch 4):
# the backward products then write plain batched matmul outputs, where on
# (B, T, N, K) operands XLA's CPU dots wrote transposed ones at a tenth of
# the matmul rate. At the cpu recipe's context 64 the two transposes cost
# more than they save (four paired runs: 37-43 against 41-47 ms). Same
# math either way.
_HEADS_MAJOR_MIN_CONTEXT = 128


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), as nanoGPT's nn.GELU() (GPT-2 used tanh).

  Written with erf rather than jax.nn.gelu's erfc: XLA's erf is one rational
  polynomial while erfc branches on the range and needs exp, and on a 2-core
  CPU this cut the shakespeare_char:cpu step by 3 ms (about 6%). The two
  agree to float32 rounding wherever the value is not ~0 (erfc keeps more
  relative precision deep in the negative tail, where GELU is below 1e-7).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _residual_init(config: 'Config') -> nn.initializers.Initializer:
  """GPT-2: projections into the residual stream start at std 0.02 / sqrt(2 L),
  so its variance does not grow with depth (two such writes per block)."""
  return nn.initializers.normal(_INIT_STDDEV / math.sqrt(2 * config.num_layers))


# Norms: norm(config, name) -> a module mapping x_BxTxD to x_BxTxD, at the
# three sites ln_1, ln_2 (each block) and ln_f (the output).
def layernorm(config: 'Config', name: str) -> nn.Module:
  return nn.LayerNorm(epsilon=_LAYER_NORM_EPSILON, use_bias=config.use_bias,
                      name=name)


NORMS: dict[str, Callable[..., nn.Module]] = {'layernorm': layernorm}


def sinusoidal_positions(num_positions: int, d_model: int) -> np.ndarray:
  """Fixed sin/cos position table of Vaswani et al. (2017), shape TxD.

  Even columns 2i hold sin(t / 10000^(2i/D)), odd columns the matching cos.
  """
  t_Tx1 = np.arange(num_positions, dtype=np.float64)[:, None]
  inv_freq = np.exp(np.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
  table_TxD = np.zeros((num_positions, d_model), dtype=np.float32)
  table_TxD[:, 0::2] = np.sin(t_Tx1 * inv_freq)
  table_TxD[:, 1::2] = np.cos(t_Tx1 * inv_freq[:d_model // 2])
  return table_TxD


# Positional encodings: positional(module, config, seq_len) -> the PxD table
# whose row t is added at position t (parameters made with `module.param`).
def learned_positions(module: nn.Module, config: 'Config', seq_len: int):
  return module.param('pos_embed', nn.initializers.normal(_INIT_STDDEV),
                      (seq_len, config.d_model))


POSITIONAL: dict[str, Callable] = {
    'learned': learned_positions,
    'sinusoidal': lambda _, config, seq_len: sinusoidal_positions(
        seq_len, config.d_model),
}


class GeluMlp(nn.Module):
  """GELU MLP, D -> F -> D, with dropout on its output."""
  config: 'Config'

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool) -> jax.Array:
    c = self.config
    B, T, D = x_BxTxD.shape  # pylint: disable=invalid-name
    h_BTxF = nn.Dense(
        c.d_ff, use_bias=c.use_bias,
        kernel_init=nn.initializers.normal(_INIT_STDDEV),
        name='fc')(x_BxTxD.reshape(B * T, D))
    h_BTxF = sharding.constrain(gelu(h_BTxF), BATCH, 'tensor')
    out_BTxD = nn.Dense(
        D, use_bias=c.use_bias, kernel_init=_residual_init(c),
        name='proj')(h_BTxF)
    out_BTxD = layers.Dropout(c.dropout_rate)(out_BTxD, deterministic=not train)
    return out_BTxD.reshape(B, T, D)


# MLPs: mlp(config, name=...) -> a module mapping (x_BxTxD, train) to x_BxTxD.
MLPS: dict[str, Callable[..., nn.Module]] = {'gelu': GeluMlp}


@dataclasses.dataclass(frozen=True)
class Config:
  """The Transformer's `config.model` keys (configs/common.py says what each
  means), checked when built; passed whole to the modules."""
  num_layers: int = rules.field(rules.at_least(1))
  num_heads: int = rules.field(rules.at_least(1))
  d_model: int = rules.field(rules.at_least(1))
  d_ff: int = rules.field(rules.at_least(1))
  dropout_rate: float = rules.field(rules.in_range(0, 1))
  positional: str = rules.field(rules.registered(POSITIONAL, 'positional encoding'))
  norm: str = rules.field(rules.registered(NORMS, 'norm'))
  mlp: str = rules.field(rules.registered(MLPS, 'MLP'))
  tie_embeddings: bool = rules.field(rules.boolean())
  use_bias: bool = rules.field(rules.boolean())
  compute_dtype: str = rules.field(rules.one_of(*COMPUTE_DTYPES))
  attention: str = rules.field(rules.one_of(*ATTENTION_KINDS))
  remat: bool = rules.field(rules.boolean())
  scan_layers: bool = rules.field(rules.boolean())

  def __post_init__(self):
    rules.check_fields(self, 'model')
    if self.attention == 'dot_product' and self.dropout_rate:
      raise ValueError(
          "config.model.attention='dot_product' has no dropout on the attention"
          f' weights but model.dropout_rate={self.dropout_rate}; set '
          '--config.model.dropout_rate=0 or --config.model.attention=xla.')
    if self.d_model % self.num_heads:
      raise ValueError(
          f'config.model.d_model={self.d_model} is not divisible by '
          f'config.model.num_heads={self.num_heads}; heads split the width.')


def _causal_attention(q, k, v, dropout, heads_major: bool):
  """Softmax attention of each position over itself and earlier ones.

  q, k, v are BxTxNxK, or BxNxTxK where `heads_major`; the output has the
  same layout as q.
  """
  if heads_major:
    qk_spec, pv_spec = 'bntk,bnsk->bnts', 'bnts,bnsk->bntk'
  else:
    qk_spec, pv_spec = 'btnk,bsnk->bnts', 'bnts,bsnk->btnk'
  T = q.shape[2 if heads_major else 1]  # pylint: disable=invalid-name

  # Softmax in float32 whatever the compute dtype, so that low-precision
  # activations do not lose the small attention weights.
  logits_BxNxTxS = jnp.einsum(qk_spec, q, k).astype(jnp.float32)
  causal_TxS = jnp.tril(jnp.ones((T, T), dtype=bool))
  # The finite minimum (not -inf) keeps gradients NaN-free; exp underflows
  # to exactly 0, so later positions get exactly zero weight and gradient.
  logits_BxNxTxS = jnp.where(
      causal_TxS, logits_BxNxTxS, jnp.finfo(jnp.float32).min)
  probs_BxNxTxS = jax.nn.softmax(logits_BxNxTxS, axis=-1).astype(v.dtype)
  probs_BxNxTxS = dropout(probs_BxNxTxS)

  return jnp.einsum(pv_spec, probs_BxNxTxS, v)


class CausalSelfAttention(nn.Module):
  """Multi-head self-attention where position t sees positions <= t."""
  config: Config

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool) -> jax.Array:
    c = self.config
    B, T, D = x_BxTxD.shape  # pylint: disable=invalid-name
    N = c.num_heads  # pylint: disable=invalid-name
    K = D // N  # pylint: disable=invalid-name
    # Dense layers act on the flattened (B*T, D) array: the backward pass of a
    # plain matmul is measurably faster on CPU than a batched dot_general.
    qkv_BTx3D = nn.Dense(
        3 * D, use_bias=c.use_bias,
        kernel_init=nn.initializers.normal(_INIT_STDDEV),
        name='qkv')(x_BxTxD.reshape(B * T, D))
    qkv_BxTxNx3xK = sharding.constrain(
        qkv_BTx3D.reshape(B, T, N, 3, K), BATCH, None, 'tensor', None, None)
    if c.attention == 'dot_product':
      # One fused op: cuDNN flash attention on GPU where it applies, XLA
      # elsewhere. Same math; no dropout on the attention weights.
      q_BxTxNxK, k_BxSxNxK, v_BxSxNxK = (
          qkv_BxTxNx3xK[:, :, :, j] for j in range(3))
      out_BxTxNxK = jax.nn.dot_product_attention(
          q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, is_causal=True)
    else:
      dropout = layers.Dropout(c.dropout_rate)
      heads_major = T >= _HEADS_MAJOR_MIN_CONTEXT
      # One transpose of the fused projection gives heads-major q, k, v.
      q, k, v = (qkv_BxTxNx3xK.transpose(3, 0, 2, 1, 4) if heads_major else
                 (qkv_BxTxNx3xK[:, :, :, j] for j in range(3)))
      out = _causal_attention(q * K**-0.5, k, v,
                              lambda p: dropout(p, deterministic=not train),
                              heads_major)
      out_BxTxNxK = out.transpose(0, 2, 1, 3) if heads_major else out
    out_BTxD = nn.Dense(
        D, use_bias=c.use_bias, kernel_init=_residual_init(c),
        name='out')(sharding.constrain(out_BxTxNxK.reshape(B * T, D),
                                       BATCH, 'tensor'))
    out_BTxD = layers.Dropout(c.dropout_rate)(out_BTxD, deterministic=not train)
    return out_BTxD.reshape(B, T, D)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)).

  As a step of `nn.scan` (scan_step=True) it maps (x, None) -> (x, None).
  """
  config: Config
  scan_step: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool):
    c = self.config
    norm = NORMS[c.norm]
    x_BxTxD = x_BxTxD + CausalSelfAttention(c, name='attn')(
        norm(c, 'ln_1')(x_BxTxD), train)
    x_BxTxD = x_BxTxD + MLPS[c.mlp](c, name='mlp')(
        norm(c, 'ln_2')(x_BxTxD), train)
    # The residual stream is split by batch only, whole features per device.
    x_BxTxD = sharding.constrain(x_BxTxD, BATCH, None, None)
    return (x_BxTxD, None) if self.scan_step else x_BxTxD


class Transformer(nn.Module):
  """Token ids BxT (at positions BxT, default 0..T-1) -> logits BxTxV."""
  config: Config
  vocab_size: int
  seq_len: int

  @nn.compact
  def __call__(self, inputs_BxT: jax.Array, train: bool,
               positions_BxT: jax.Array | None = None) -> jax.Array:
    c = self.config
    B, T = inputs_BxT.shape  # pylint: disable=invalid-name
    D, V = c.d_model, self.vocab_size  # pylint: disable=invalid-name
    if T > self.seq_len:
      raise ValueError(
          f'Input length {T} exceeds the context length {self.seq_len}.')
    embed = nn.Embed(V, D, embedding_init=nn.initializers.normal(_INIT_STDDEV),
                     name='embed')
    x_BxTxD = embed(inputs_BxT)
    table_PxD = POSITIONAL[c.positional](self, c, self.seq_len)
    if positions_BxT is None:  # Rows 0..T-1, a static slice.
      x_BxTxD = x_BxTxD + table_PxD[:T].astype(x_BxTxD.dtype)
    else:
      # A position outside the table reads NaN rather than a clamped row.
      pos_BxTxD = jnp.asarray(table_PxD).at[positions_BxT].get(
          mode='fill', fill_value=jnp.nan)
      x_BxTxD = x_BxTxD + pos_BxTxD.astype(x_BxTxD.dtype)
    x_BxTxD = layers.Dropout(c.dropout_rate)(x_BxTxD, deterministic=not train)

    # Rematerialised blocks keep only their inputs for the backward pass.
    block = nn.remat(Block, static_argnums=(2,)) if c.remat else Block
    if c.scan_layers:
      # `train` is broadcast (static inside the body); every layer gets its
      # own slice of the stacked parameters and its own dropout key.
      stack = nn.scan(block, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=nn.broadcast, length=c.num_layers)
      x_BxTxD, _ = stack(c, scan_step=True, name=models.STACKED_BLOCKS)(
          x_BxTxD, train)
    else:
      for i in range(c.num_layers):
        x_BxTxD = block(c, name=f'block_{i}')(x_BxTxD, train)
    x_BxTxD = NORMS[c.norm](c, 'ln_f')(x_BxTxD)

    x_BTxD = x_BxTxD.reshape(B * T, D)
    if c.tie_embeddings:
      logits_BTxV = embed.attend(x_BTxD)
    else:
      logits_BTxV = nn.Dense(
          V, use_bias=False, kernel_init=nn.initializers.normal(_INIT_STDDEV),
          name='head')(x_BTxD)
    return logits_BTxV.reshape(B, T, V).astype(jnp.float32)


# Specs inside a block, by the parameter's path there.
_BLOCK_RULES = (
    ('attn/qkv/kernel', ('fsdp', 'tensor')),   # Dx(N*3*K), head-major
    ('attn/out/kernel', ('tensor', 'fsdp')),   # (N*K)xD
    ('mlp/fc/kernel', ('fsdp', 'tensor')),     # DxF
    ('(attn/qkv|mlp/fc)/bias', ('tensor',)),
    ('mlp/proj/kernel', ('tensor', 'fsdp')),   # FxD
    # Vectors of D: the outputs of reduced matmul pairs, and the norms'.
    ('(attn/out|mlp/proj)/bias', ()),
    ('ln_[12]/(scale|bias)', ()),
)

# (path regex, spec), first match wins (research/sharding.py); no catch-all:
# a parameter of a new option needs its rule here.
PARTITION_RULES = (
    ('embed/embedding', (None, 'fsdp')),                   # VxD
    ('pos_embed', (None, 'fsdp')),                         # PxD
    *((rf'block_\d+/{name}', spec) for name, spec in _BLOCK_RULES),
    # scan_layers=True: the same weights stacked on a leading layer axis.
    *((rf'{models.STACKED_BLOCKS}/{name}', (None, *spec))
      for name, spec in _BLOCK_RULES),
    ('ln_f/(scale|bias)', ()),
    ('head/kernel', ('fsdp', None)),                       # DxV
)


def build(config: Config, vocab_size: int, seq_len: int) -> models.Model:
  """The Transformer of `config` over V = `vocab_size` token ids with
  context length P = `seq_len` (`apply` takes any T <= P); its carry is
  always the empty dict `{}`."""
  module = Transformer(config, vocab_size=vocab_size, seq_len=seq_len)
  compute_dtype = COMPUTE_DTYPES[config.compute_dtype]

  def init(rng: jax.Array) -> dict:
    # Parameter shapes do not depend on T, so one position is enough.
    variables = module.init({'params': rng}, jnp.zeros((1, 1), jnp.int32),
                            train=False)
    return variables['params']

  def apply(params: dict, carry: dict, inputs_BxT: jax.Array, *, train: bool,
            rng: jax.Array | None, positions_BxT: jax.Array | None = None,
            ) -> tuple[jax.Array, dict]:
    rngs = models.dropout_rngs(train, config.dropout_rate, rng)
    if compute_dtype != jnp.float32:
      # Mixed precision: the float32 parameters (and so the optimizer state)
      # are cast on the way in, so gradients come back in float32; the
      # attention softmax and the logits are float32 (see above).
      params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
    logits_BxTxV = module.apply({'params': params}, inputs_BxT, train=train,
                                positions_BxT=positions_BxT, rngs=rngs)
    return logits_BxTxV, carry

  def init_carry(batch_size: int) -> dict:
    del batch_size  # Attention sees only the current segment: no state.
    return {}

  def flops_per_token(params) -> float:
    """6 N (the embedding counts once, as the output layer, when tied) plus
    12 L P D for QK^T and AV forward and backward (PaLM, Chowdhery et al.
    2022, App. B), all of it though the causal mask wastes half."""
    lookups = ('pos_embed',) + (() if config.tie_embeddings
                                else ('embed/embedding',))
    flops = 6.0 * models.matmul_params(params, lookups)
    flops += 12.0 * config.num_layers * seq_len * config.d_model
    return flops

  return models.Model(init=init, apply=apply, init_carry=init_carry,
                      stateful=False, partition_rules=PARTITION_RULES,
                      flops_per_token=flops_per_token)
