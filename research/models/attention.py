"""Causal multi-head self-attention of the Transformer, with a decoding cache.

Shape letters as in research/models/transformer.py; here also S, the key
positions (the same positions as T in training, the cache's slots when
decoding).

The N query heads may share G <= N key/value heads (`num_kv_heads`; G = N is
multi-head attention, G = 1 multi-query attention, Shazeer 2019, and values
between grouped-query attention, Ainslie et al. 2023): query head n reads
key/value head n // R, R = N / G, as `jax.nn.dot_product_attention` groups
them. The XLA path and the cache then split the query heads into G groups of
R ('btgrk,bsgk->bgrts') rather than repeat the keys and values R times; with
G = N they run the einsums of multi-head attention, unchanged.

Training and evaluation read a whole segment: position t attends to the
segment's positions <= t. Decoding (`cache` given) writes the new tokens' keys
and values into the cache at their positions and attends over every slot at
or before each query's position, so a prompt is read in one pass and then one
token per call; the logits equal the full pass's at every position.

Queries and keys go through the config's qk-norm first (`qk_norm`, a name in
transformer_options.QK_NORMS), then the positional kind's rotation; the cache
holds keys as they enter the dot product (normalised, rotated).

When the flax collection `intermediates` is mutable (the model's `stats`, never
the train step), the layer also sows `logit_max`: its largest pre-softmax
logit over the batch, the heads and the visible (query, key) pairs.
"""

import functools
from typing import NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import sharding
from research.models import layers
from research.models import transformer_options as options
from research.models.positional import POSITIONAL
from research.sharding import BATCH


class Attention(NamedTuple):
  """How attention is computed (the same function either way).

  Attributes:
    fused: one `jax.nn.dot_product_attention` call (cuDNN flash attention on
      GPU where it applies, XLA elsewhere) instead of explicit einsums.
    weight_dropout: whether it can drop attention weights (model.dropout_rate).
  """

  fused: bool
  weight_dropout: bool


ATTENTION_KINDS: dict[str, Attention] = {
  'xla': Attention(fused=False, weight_dropout=True),
  'dot_product': Attention(fused=True, weight_dropout=False),
}


class AttentionConfig(options.OptionConfig, Protocol):
  """The fields of `transformer.Config` that attention reads."""

  num_heads: int
  num_kv_heads: int  # G, or 0 for num_heads (`kv_heads`).
  positional: str  # A name in POSITIONAL.
  attention: str  # A name in ATTENTION_KINDS.
  qk_norm: str  # A name in transformer_options.QK_NORMS.


def kv_heads(config: AttentionConfig) -> int:
  """G, the key/value heads: `num_kv_heads`, or N where it is 0."""
  return config.num_kv_heads or config.num_heads


# (logits spec, mixing spec) of the XLA einsums, by (heads_major, grouped):
# heads-major operands are (B, N, T, K); grouped ones have the query heads
# split into G groups of R that share one key/value head.
_SPECS = {
  (False, False): ('btnk,bsnk->bnts', 'bnts,bsnk->btnk'),
  (True, False): ('bntk,bnsk->bnts', 'bnts,bnsk->bntk'),
  (False, True): ('btgrk,bsgk->bgrts', 'bgrts,bsgk->btgrk'),
  (True, True): ('bgrtk,bgsk->bgrts', 'bgrts,bgsk->bgrtk'),
}


def _split_heads(x: jax.Array, groups: int, axis: int) -> jax.Array:
  """Axis `axis` of N heads as (G = `groups`, R): head n is group n // R."""
  shape = x.shape
  return x.reshape(*shape[:axis], groups, shape[axis] // groups, *shape[axis + 1 :])


def _merge_heads(x: jax.Array, axis: int) -> jax.Array:
  """The inverse of `_split_heads`: axes (axis, axis + 1) as one."""
  shape = x.shape
  return x.reshape(*shape[:axis], shape[axis] * shape[axis + 1], *shape[axis + 2 :])


def _grouped(q, k, bias, head_axis: int):
  """(q, bias, grouped): where k has fewer heads than q, q's heads and the
  bias's (axis 1, one per query head) split into k's G groups."""
  groups = k.shape[head_axis]
  if groups == q.shape[head_axis]:
    return q, bias, False
  bias = None if bias is None else _split_heads(bias, groups, 1)
  return _split_heads(q, groups, head_axis), bias, True


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
HEADS_MAJOR_MIN_CONTEXT = 128


def _masked_softmax(logits_BxNxTxS: jax.Array, visible_TxS: jax.Array, dtype) -> jax.Array:
  """Softmax over S where `visible` (broadcastable), in float32 whatever the
  compute dtype so that low-precision activations keep small weights.

  The finite minimum (not -inf) keeps gradients NaN-free; exp underflows to
  exactly 0, so hidden positions get exactly zero weight and gradient.
  """
  logits_BxNxTxS = jnp.where(
    visible_TxS, logits_BxNxTxS.astype(jnp.float32), jnp.finfo(jnp.float32).min
  )
  return jax.nn.softmax(logits_BxNxTxS, axis=-1).astype(dtype)


def logit_max(q_BxTxNxK, k_BxTxGxK, bias_BxNxTxS=None) -> jax.Array:
  """The largest logit q.k (+ bias) over every row, head and causal pair
  (s <= t): the attention-logit growth Wortsman et al. 2024 (section 3.1.1)
  watch. `q` already carries the 1/sqrt(K). Float32, forward only."""
  T = q_BxTxNxK.shape[1]  # pylint: disable=invalid-name
  q, bias, grouped = _grouped(q_BxTxNxK, k_BxTxGxK, bias_BxNxTxS, head_axis=2)
  logits = jnp.einsum(_SPECS[False, grouped][0], q, k_BxTxGxK).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias
  causal_TxS = jnp.tril(jnp.ones((T, T), dtype=bool))
  return jnp.max(jnp.where(causal_TxS, logits, -jnp.inf))


def causal_attention(q, k, v, dropout, heads_major: bool, bias_BxNxTxS=None):
  """Softmax attention of each position over itself and earlier ones.

  q is BxTxNxK and k, v BxTxGxK, or BxNxTxK and BxGxTxK where `heads_major`;
  the output has q's layout. `bias_BxNxTxS` (float32, broadcastable over
  B) is added to the logits.
  """
  head_axis = 1 if heads_major else 2
  q, bias, grouped = _grouped(q, k, bias_BxNxTxS, head_axis)
  qk_spec, pv_spec = _SPECS[heads_major, grouped]
  T = q.shape[-2 if heads_major else 1]  # pylint: disable=invalid-name
  causal_TxS = jnp.tril(jnp.ones((T, T), dtype=bool))
  logits = jnp.einsum(qk_spec, q, k)  # BxNxTxS, or BxGxRxTxS grouped.
  if bias is not None:
    logits = logits.astype(jnp.float32) + bias
  probs = _masked_softmax(logits, causal_TxS, v.dtype)
  out = jnp.einsum(pv_spec, dropout(probs), v)
  return _merge_heads(out, head_axis) if grouped else out


def cached_attention(
  q_BxTxNxK, k_BxTxGxK, v_BxTxGxK, positions_BxT, cache: dict, bias_fn=None
) -> tuple[jax.Array, dict]:
  """Writes k, v into `cache` (`k`, `v`: BxSxGxK) at `positions_BxT` and
  attends from each query over the slots at or before its position. Slot s
  holds position s; `bias_fn(q_positions_BxT, k_positions_1xS)` (BxNxTxS),
  if given, is added to the logits.

  Slots after a query's position are hidden whatever they hold, so a cache
  starts as zeros and is filled in order. A position outside the cache is
  dropped (decoding past the cache is refused before it gets here).
  """
  rows_Bx1 = jnp.arange(q_BxTxNxK.shape[0])[:, None]
  k_BxSxGxK = (
    cache['k'].at[rows_Bx1, positions_BxT].set(k_BxTxGxK.astype(cache['k'].dtype), mode='drop')
  )
  v_BxSxGxK = (
    cache['v'].at[rows_Bx1, positions_BxT].set(v_BxTxGxK.astype(cache['v'].dtype), mode='drop')
  )
  S = k_BxSxGxK.shape[1]  # pylint: disable=invalid-name
  visible_Bx1xTxS = jnp.arange(S)[None, None, None, :] <= positions_BxT[:, None, :, None]
  bias_BxNxTxS = None if bias_fn is None else bias_fn(positions_BxT, jnp.arange(S)[None])
  q, bias, grouped = _grouped(q_BxTxNxK, k_BxSxGxK, bias_BxNxTxS, head_axis=2)
  qk_spec, pv_spec = _SPECS[False, grouped]
  logits = jnp.einsum(qk_spec, q, k_BxSxGxK)  # BxNxTxS, or BxGxRxTxS grouped.
  if bias is not None:
    logits = logits.astype(jnp.float32) + bias
  visible = visible_Bx1xTxS[:, None] if grouped else visible_Bx1xTxS
  probs = _masked_softmax(logits, visible, v_BxSxGxK.dtype)
  out = jnp.einsum(pv_spec, probs, v_BxSxGxK)
  out_BxTxNxK = _merge_heads(out, 2) if grouped else out
  return out_BxTxNxK, {'k': k_BxSxGxK, 'v': v_BxSxGxK}


class CausalSelfAttention(nn.Module):
  """Multi-head self-attention where position t sees positions <= t.

  Returns (x_BxTxD, the updated cache, or None when not decoding).
  """

  config: AttentionConfig

  @nn.compact
  def __call__(
    self,
    x_BxTxD: jax.Array,
    train: bool,
    positions_BxT: jax.Array | None = None,
    cache: dict | None = None,
  ):
    c = self.config
    B, T, D = x_BxTxD.shape  # pylint: disable=invalid-name
    N, G = c.num_heads, kv_heads(c)  # pylint: disable=invalid-name
    K, R = D // N, N // G  # pylint: disable=invalid-name
    # Dense layers act on the flattened (B*T, D) array: the backward pass of a
    # plain matmul is measurably faster on CPU than a batched dot_general.
    qkv_BTxGCK = layers.Dense(
      G * (R + 2) * K,  # (N + 2 G) K; 3 D where G = N.
      use_bias=c.use_bias,
      kernel_init=nn.initializers.normal(options.INIT_STDDEV),
      name='qkv',
    )(x_BxTxD.reshape(B * T, D))
    # Per key/value head, its R queries, its key, its value: (N, 3, K) where
    # G = N, the layout of multi-head attention; `tensor` splits whole groups.
    qkv_BxTxGxCxK = sharding.constrain(
      qkv_BTxGCK.reshape(B, T, G, R + 2, K), BATCH, None, 'tensor', None, None
    )
    if R == 1:  # Indexed, not sliced and reshaped: multi-head attention's program, unchanged.
      q_BxTxNxK = qkv_BxTxGxCxK[:, :, :, 0]
    else:  # Query heads in group-major order: head n reads key/value head n // R.
      q_BxTxNxK = qkv_BxTxGxCxK[:, :, :, :R].reshape(B, T, N, K)
    k_BxTxGxK, v_BxTxGxK = qkv_BxTxGxCxK[:, :, :, R], qkv_BxTxGxCxK[:, :, :, R + 1]
    qk_norm = options.QK_NORMS[c.qk_norm]
    if qk_norm is not None:
      # Dehghani et al. 2023 (qk-layernorm, as Wortsman et al. 2024 section
      # 3.1.1): each head's query and key normalised over its K features,
      # before positions rotate them and before the 1/sqrt(K), so the logits
      # are bounded by the norms' gains rather than by the weights' growth.
      # One gain (and bias) of K per layer for all queries and one for all
      # keys, shared by the heads (as flax's MultiHeadDotProductAttention
      # `normalize_qk`); the cache below then holds normalised keys.
      q_BxTxNxK = qk_norm(c, 'q_norm')(q_BxTxNxK)
      k_BxTxGxK = qk_norm(c, 'k_norm')(k_BxTxGxK)

    def project_out(out_BxTxNxK):
      out_BTxD = layers.Dense(
        D, use_bias=c.use_bias, kernel_init=options.residual_init(c), name='out'
      )(sharding.constrain(out_BxTxNxK.reshape(B * T, D), BATCH, 'tensor'))
      out_BTxD = layers.Dropout(c.dropout_rate)(out_BTxD, deterministic=not train)
      return out_BTxD.reshape(B, T, D)

    positional = POSITIONAL[c.positional]
    if positions_BxT is None and (positional.rotate or positional.bias):
      positions_BxT = jnp.arange(T)[None]  # 1xT, the same in every row.
    if positional.rotate:
      q_BxTxNxK = positional.rotate(q_BxTxNxK, positions_BxT)
      k_BxTxGxK = positional.rotate(k_BxTxGxK, positions_BxT)
    bias_fn = positional.bias and functools.partial(positional.bias, N)
    if cache is not None:
      out_BxTxNxK, cache = cached_attention(
        q_BxTxNxK * K**-0.5, k_BxTxGxK, v_BxTxGxK, positions_BxT, cache, bias_fn
      )
      return project_out(out_BxTxNxK), cache
    # Keys are the segment's own positions.
    bias_BxNxTxS = bias_fn and bias_fn(positions_BxT, positions_BxT)
    if self.is_mutable_collection('intermediates'):
      # Statistics only (a separate forward pass): the logits once more, so
      # neither attention path changes for them.
      self.sow(
        'intermediates', 'logit_max', logit_max(q_BxTxNxK * K**-0.5, k_BxTxGxK, bias_BxNxTxS)
      )
    if ATTENTION_KINDS[c.attention].fused:
      # One fused op: cuDNN flash attention on GPU where it applies, XLA
      # elsewhere. Same math; no dropout on the attention weights.
      out_BxTxNxK = jax.nn.dot_product_attention(
        q_BxTxNxK,
        k_BxTxGxK,
        v_BxTxGxK,
        bias=None if bias_BxNxTxS is None else bias_BxNxTxS.astype(q_BxTxNxK.dtype),
        is_causal=True,
      )
    else:
      dropout = layers.Dropout(c.dropout_rate)
      heads_major = T >= HEADS_MAJOR_MIN_CONTEXT
      if not heads_major:
        q, k, v = q_BxTxNxK, k_BxTxGxK, v_BxTxGxK
      elif positional.rotate or qk_norm is not None or G < N:
        # q and k are no longer the projection's, or q is not one slice of it.
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q_BxTxNxK, k_BxTxGxK, v_BxTxGxK))
      else:  # One transpose of the fused projection gives heads-major q, k, v.
        q, k, v = qkv_BxTxGxCxK.transpose(3, 0, 2, 1, 4)
      out = causal_attention(
        q * K**-0.5, k, v, lambda p: dropout(p, deterministic=not train), heads_major, bias_BxNxTxS
      )
      out_BxTxNxK = out.transpose(0, 2, 1, 3) if heads_major else out
    return project_out(out_BxTxNxK), cache
