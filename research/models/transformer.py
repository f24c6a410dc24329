"""Decoder-only Transformer language model (GPT-2 / nanoGPT style).

Pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP, a
final LayerNorm and an output head that is either the transposed token
embedding (tied) or a separate bias-free Dense, as in GPT-2.

Shape letters (a joined pair such as BT is one flattened axis of size B*T):
  B: batch size
  T: query positions of this call (T <= P)
  S: key positions (the same positions as T, named apart for the einsums)
  P: context length, `seq_len` (rows of the learned position table)
  D: model width, `d_model`
  F: MLP hidden width, `d_ff`
  N: number of attention heads
  K: width of one head, D // N
  V: vocabulary size

Parameter tree (`Model.init` output):
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
(`blocks/attn/qkv/kernel` is LxDx3D). `stack_blocks`/`unstack_blocks`
convert between the two trees. The function computed is the same; XLA
compiles one block instead of L, so compile time stops growing with depth.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import models
from research.models import layers
from research import sharding
from research.sharding import BATCH

POSITIONAL_KINDS = ('learned', 'sinusoidal')
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
  num_heads: int
  dropout_rate: float
  use_bias: bool
  out_kernel_init: nn.initializers.Initializer
  attention: str = 'xla'

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool) -> jax.Array:
    B, T, D = x_BxTxD.shape  # pylint: disable=invalid-name
    N = self.num_heads  # pylint: disable=invalid-name
    K = D // N  # pylint: disable=invalid-name
    # Dense layers act on the flattened (B*T, D) array: the backward pass of a
    # plain matmul is measurably faster on CPU than a batched dot_general.
    qkv_BTx3D = nn.Dense(
        3 * D, use_bias=self.use_bias,
        kernel_init=nn.initializers.normal(_INIT_STDDEV),
        name='qkv')(x_BxTxD.reshape(B * T, D))
    qkv_BxTxNx3xK = sharding.constrain(
        qkv_BTx3D.reshape(B, T, N, 3, K), BATCH, None, 'tensor', None, None)
    if self.attention == 'dot_product':
      # One fused op: cuDNN flash attention on GPU where it applies, XLA
      # elsewhere. Same math; no dropout on the attention weights.
      q_BxTxNxK, k_BxSxNxK, v_BxSxNxK = (
          qkv_BxTxNx3xK[:, :, :, j] for j in range(3))
      out_BxTxNxK = jax.nn.dot_product_attention(
          q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, is_causal=True)
    else:
      dropout = layers.Dropout(self.dropout_rate)
      heads_major = T >= _HEADS_MAJOR_MIN_CONTEXT
      # One transpose of the fused projection gives heads-major q, k, v.
      q, k, v = (qkv_BxTxNx3xK.transpose(3, 0, 2, 1, 4) if heads_major else
                 (qkv_BxTxNx3xK[:, :, :, j] for j in range(3)))
      out = _causal_attention(q * K**-0.5, k, v,
                              lambda p: dropout(p, deterministic=not train),
                              heads_major)
      out_BxTxNxK = out.transpose(0, 2, 1, 3) if heads_major else out
    out_BTxD = nn.Dense(
        D, use_bias=self.use_bias, kernel_init=self.out_kernel_init,
        name='out')(sharding.constrain(out_BxTxNxK.reshape(B * T, D),
                                       BATCH, 'tensor'))
    out_BTxD = layers.Dropout(self.dropout_rate)(out_BTxD, deterministic=not train)
    return out_BTxD.reshape(B, T, D)


class Mlp(nn.Module):
  """GELU MLP, D -> F -> D, with dropout on its output."""
  d_ff: int
  dropout_rate: float
  use_bias: bool
  out_kernel_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool) -> jax.Array:
    B, T, D = x_BxTxD.shape  # pylint: disable=invalid-name
    h_BTxF = nn.Dense(
        self.d_ff, use_bias=self.use_bias,
        kernel_init=nn.initializers.normal(_INIT_STDDEV),
        name='fc')(x_BxTxD.reshape(B * T, D))
    h_BTxF = sharding.constrain(gelu(h_BTxF), BATCH, 'tensor')
    out_BTxD = nn.Dense(
        D, use_bias=self.use_bias, kernel_init=self.out_kernel_init,
        name='proj')(h_BTxF)
    out_BTxD = layers.Dropout(self.dropout_rate)(out_BTxD, deterministic=not train)
    return out_BTxD.reshape(B, T, D)


class Block(nn.Module):
  """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x)).

  As a step of `nn.scan` (scan_step=True) it maps (x, None) -> (x, None).
  """
  num_heads: int
  d_ff: int
  dropout_rate: float
  use_bias: bool
  out_kernel_init: nn.initializers.Initializer
  attention: str = 'xla'
  scan_step: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool):
    layer_norm = functools.partial(
        nn.LayerNorm, epsilon=_LAYER_NORM_EPSILON, use_bias=self.use_bias)
    x_BxTxD = x_BxTxD + CausalSelfAttention(
        self.num_heads, self.dropout_rate, self.use_bias,
        self.out_kernel_init, self.attention, name='attn')(
            layer_norm(name='ln_1')(x_BxTxD), train)
    x_BxTxD = x_BxTxD + Mlp(
        self.d_ff, self.dropout_rate, self.use_bias, self.out_kernel_init,
        name='mlp')(layer_norm(name='ln_2')(x_BxTxD), train)
    # The residual stream is split by batch only, whole features per device.
    x_BxTxD = sharding.constrain(x_BxTxD, BATCH, None, None)
    return (x_BxTxD, None) if self.scan_step else x_BxTxD


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


class Transformer(nn.Module):
  """Token ids BxT -> next-token logits BxTxV."""
  vocab_size: int
  seq_len: int
  num_layers: int
  num_heads: int
  d_model: int
  d_ff: int
  dropout_rate: float
  positional: str
  tie_embeddings: bool
  use_bias: bool
  attention: str = 'xla'
  remat: bool = False
  scan_layers: bool = False

  @nn.compact
  def __call__(self, inputs_BxT: jax.Array, train: bool) -> jax.Array:
    B, T = inputs_BxT.shape  # pylint: disable=invalid-name
    D, V = self.d_model, self.vocab_size  # pylint: disable=invalid-name
    if T > self.seq_len:
      raise ValueError(
          f'Input length {T} exceeds the context length {self.seq_len}.')
    embed = nn.Embed(V, D, embedding_init=nn.initializers.normal(_INIT_STDDEV),
                     name='embed')
    x_BxTxD = embed(inputs_BxT)
    if self.positional == 'learned':
      pos_PxD = self.param('pos_embed', nn.initializers.normal(_INIT_STDDEV),
                           (self.seq_len, D))
      x_BxTxD = x_BxTxD + pos_PxD[:T]
    else:
      x_BxTxD = x_BxTxD + sinusoidal_positions(T, D).astype(x_BxTxD.dtype)
    x_BxTxD = layers.Dropout(self.dropout_rate)(x_BxTxD, deterministic=not train)

    # GPT-2: scale the init of the projections that write into the residual
    # stream by 1/sqrt(2 * num_layers), so its variance does not grow with
    # depth (two such writes per block).
    out_kernel_init = nn.initializers.normal(
        _INIT_STDDEV / math.sqrt(2 * self.num_layers))
    # Rematerialised blocks keep only their inputs for the backward pass.
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    block_args = (self.num_heads, self.d_ff, self.dropout_rate, self.use_bias,
                  out_kernel_init, self.attention)
    if self.scan_layers:
      # `train` is broadcast (static inside the body); every layer gets its
      # own slice of the stacked parameters and its own dropout key.
      stack = nn.scan(block, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=nn.broadcast, length=self.num_layers)
      x_BxTxD, _ = stack(*block_args, scan_step=True,
                            name=models.STACKED_BLOCKS)(
          x_BxTxD, train)
    else:
      for i in range(self.num_layers):
        x_BxTxD = block(*block_args, name=f'block_{i}')(x_BxTxD, train)
    x_BxTxD = nn.LayerNorm(epsilon=_LAYER_NORM_EPSILON, use_bias=self.use_bias,
                           name='ln_f')(x_BxTxD)

    x_BTxD = x_BxTxD.reshape(B * T, D)
    if self.tie_embeddings:
      logits_BTxV = embed.attend(x_BTxD)
    else:
      logits_BTxV = nn.Dense(
          V, use_bias=False, kernel_init=nn.initializers.normal(_INIT_STDDEV),
          name='head')(x_BTxD)
    return logits_BTxV.reshape(B, T, V).astype(jnp.float32)


def build(model_config: ml_collections.ConfigDict, vocab_size: int,
          seq_len: int) -> models.Model:
  """Builds the Transformer family as pure functions.

  Args:
    model_config: fields name, num_layers, num_heads, d_model, d_ff,
      dropout_rate, positional ('learned' | 'sinusoidal'), tie_embeddings,
      use_bias (bias in every Dense and LayerNorm except the output head);
      speed options compute_dtype ('float32' | 'bfloat16'), attention
      ('xla' | 'dot_product'), remat and scan_layers (bools).
    vocab_size: V.
    seq_len: the context length P; `apply` accepts any T <= P.

  Returns:
    The model; its carry is always the empty dict `{}`.
  """
  if model_config.positional not in POSITIONAL_KINDS:
    raise ValueError(
        f'Unknown positional {model_config.positional!r}; known: '
        f'{list(POSITIONAL_KINDS)}')
  if model_config.attention not in ATTENTION_KINDS:
    raise ValueError(
        f'Unknown attention {model_config.attention!r} (config key '
        f'model.attention); known: {list(ATTENTION_KINDS)}')
  if model_config.attention == 'dot_product' and model_config.dropout_rate:
    raise ValueError(
        "config.model.attention='dot_product' has no dropout on the attention"
        f" weights but model.dropout_rate={model_config.dropout_rate}; set "
        "--config.model.dropout_rate=0 or --config.model.attention=xla.")
  if model_config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(
        f'Unknown compute_dtype {model_config.compute_dtype!r} (config key '
        f'model.compute_dtype); known: {list(COMPUTE_DTYPES)}')
  compute_dtype = COMPUTE_DTYPES[model_config.compute_dtype]
  if model_config.d_model % model_config.num_heads:
    raise ValueError(
        f'config.model.d_model={model_config.d_model} is not divisible by '
        f'config.model.num_heads={model_config.num_heads}; heads split the width.')
  module = Transformer(
      vocab_size=vocab_size,
      seq_len=seq_len,
      num_layers=model_config.num_layers,
      num_heads=model_config.num_heads,
      d_model=model_config.d_model,
      d_ff=model_config.d_ff,
      dropout_rate=model_config.dropout_rate,
      positional=model_config.positional,
      tie_embeddings=model_config.tie_embeddings,
      use_bias=model_config.use_bias,
      attention=model_config.attention,
      remat=model_config.remat,
      scan_layers=model_config.scan_layers)

  def init(rng: jax.Array) -> dict:
    # Parameter shapes do not depend on T, so one position is enough.
    variables = module.init({'params': rng}, jnp.zeros((1, 1), jnp.int32),
                            train=False)
    return variables['params']

  def apply(params: dict, carry: dict, inputs_BxT: jax.Array, *, train: bool,
            rng: jax.Array | None) -> tuple[jax.Array, dict]:
    rngs = models.dropout_rngs(train, module.dropout_rate, rng)
    if compute_dtype != jnp.float32:
      # Mixed precision: the float32 parameters (and so the optimizer state)
      # are cast on the way in, so gradients come back in float32; the
      # attention softmax and the logits are float32 (see above).
      params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
    logits_BxTxV = module.apply({'params': params}, inputs_BxT, train=train,
                                rngs=rngs)
    return logits_BxTxV, carry

  def init_carry(batch_size: int) -> dict:
    del batch_size  # Attention sees only the current segment: no state.
    return {}

  return models.Model(init=init, apply=apply, init_carry=init_carry,
                      stateful=False)


def stack_blocks(params: dict, num_layers: int) -> dict:
  """The scan_layers=True tree of an unrolled tree (`block_{i}` -> `blocks`)."""
  blocks = [params[f'block_{i}'] for i in range(num_layers)]
  rest = {k: v for k, v in params.items() if not k.startswith('block_')}
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *blocks)
  return {**rest, models.STACKED_BLOCKS: stacked}


def unstack_blocks(params: dict) -> dict:
  """The unrolled tree of a scan_layers=True tree (`blocks` -> `block_{i}`)."""
  stacked = params[models.STACKED_BLOCKS]
  rest = {k: v for k, v in params.items() if k != models.STACKED_BLOCKS}
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(num_layers):
    rest[f'block_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return rest
