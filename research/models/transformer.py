"""Decoder-only Transformer language model (GPT-2 / nanoGPT style).

Blocks of causal multi-head self-attention and an MLP (pre-norm with a final
norm by default, as GPT-2; or post-norm, as Vaswani et al. 2017) and an
output head that is either the transposed token embedding (tied) or a
separate bias-free Dense. The options are named entries of small registries
chosen by `Config`, each documented where it is registered: `NORMS` and
`MLPS` in transformer_options.py, `POSITIONAL` in positional.py and
`ATTENTION_KINDS` in attention.py; `QK_NORMS` (transformer_options.py) are
'none' and the norms of `NORMS`. A new option is one registry entry (plus
one field of `Config` where it is a new key); the rules below ask an option's
properties, never its name. Attention, and its decoding cache, is
attention.py.

Shape letters (a joined pair such as BT is one flattened axis of size B*T):
  B: batch size
  T: query positions of this call (T <= P)
  S: key positions (the same positions as T, named apart for the einsums)
  P: context length, `seq_len` (rows of the position table)
  D: model width, `d_model`
  F: MLP hidden width, `d_ff`
  N: number of attention (query) heads
  G: number of key/value heads, `num_kv_heads` (0: N); G divides N
  R: query heads per key/value head, N // G
  C: R + 2, one key/value head's projections (its R queries, its key, its value)
  K: width of one head, D // N
  V: vocabulary size

Parameter tree (`Model.init` output; the norms' as for norm='layernorm'):
  embed/embedding           VxD
  pos_embed                 PxD   (only for a positional kind with a learned table)
  block_{i}/ln_1, ln_2      scale D, bias D (bias only if use_bias)
  block_{i}/attn/qkv        kernel Dx(GCK), bias GCK; columns group-major
                            (G, C, K): key/value head g's R queries, its key
                            and its value side by side, so a contiguous split
                            over `tensor` hands out whole groups. With G = N
                            (the default) that is Dx3D, (N, 3, K): head n's
                            q, k, v, the layout of multi-head attention
  block_{i}/attn/q_norm, k_norm  scale K, bias K (only for qk_norm other than
                            'none'; the bias as for ln_1): one of each per
                            layer, shared by the N heads
  block_{i}/attn/out        kernel DxD, bias D
  block_{i}/mlp/fc          kernel DxF, bias F
  block_{i}/mlp/gate        kernel DxF, bias F (only for a gated MLP)
  block_{i}/mlp/proj        kernel FxD, bias D
  ln_f                      scale D, bias D   (only for norm_position='pre')
  head/kernel               DxV   (only if not tie_embeddings)

With scan_layers=True the L blocks are one `lax.scan` over stacked weights:
`blocks/...` replaces `block_{i}/...`, every leaf with a leading axis of L
(`blocks/attn/qkv/kernel` is LxDx3D). The function computed is the same; XLA
compiles one block instead of L, so compile time stops growing with depth.

Sharding (`PARTITION_RULES`): tensor parallelism splits qkv and mlp/fc by
output column (whole heads, hidden units), attn/out and mlp/proj by input
row; vocabulary and position dimensions are never split (they rarely divide).
With grouped key/value heads the qkv columns split by whole groups where
`tensor` divides G; where it does not (multi-query attention on a 2-way
`tensor` axis) XLA splits the group axis unevenly and computes the same
function (checked on 8 fake devices), nothing is refused beyond the partition
rule's own check that `tensor` divides the (N + 2 G) K columns.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import rules
from research import sharding
from research.models import attention
from research.models import contract
from research.models import layers
from research.models import mup
from research.models import transformer_options as options
from research.models.attention import ATTENTION_KINDS
from research.models.positional import POSITIONAL
from research.models.transformer_options import MLPS, NORM_POSITIONS, NORMS, QK_NORMS
from research.sharding import BATCH

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Config:
  """The Transformer's `config.model` keys (configs/common.py says what each
  means), checked when built; passed whole to the modules."""

  num_layers: int = rules.field(rules.at_least(1))
  num_heads: int = rules.field(rules.at_least(1))
  num_kv_heads: int = rules.field(rules.at_least(0))
  d_model: int = rules.field(rules.at_least(1))
  d_ff: int = rules.field(rules.at_least(1))
  dropout_rate: float = rules.field(rules.in_range(0, 1))
  positional: str = rules.field(rules.registered(POSITIONAL, 'positional encoding'))
  norm: str = rules.field(rules.registered(NORMS, 'norm'))
  norm_position: str = rules.field(rules.one_of(*NORM_POSITIONS))
  qk_norm: str = rules.field(rules.registered(QK_NORMS, 'qk-norm'))
  mlp: str = rules.field(rules.registered(MLPS, 'MLP'))
  tie_embeddings: bool = rules.field(rules.boolean())
  scale_embeddings: bool = rules.field(rules.boolean())
  logit_softcap: float = rules.field(rules.at_least(0))
  use_bias: bool = rules.field(rules.boolean())
  compute_dtype: str = rules.field(rules.one_of(*COMPUTE_DTYPES))
  attention: str = rules.field(rules.registered(ATTENTION_KINDS, 'attention kind'))
  remat: bool = rules.field(rules.boolean())
  scan_layers: bool = rules.field(rules.boolean())
  parametrization: str = rules.field(rules.registered(mup.PARAMETRIZATIONS, 'parametrization'))
  mup_base_width: int = rules.field(rules.at_least(0))

  def __post_init__(self):
    rules.check_fields(self, 'model')
    mup.check(self)
    if not ATTENTION_KINDS[self.attention].weight_dropout and self.dropout_rate:
      dropping = [name for name, kind in ATTENTION_KINDS.items() if kind.weight_dropout]
      raise ValueError(
        f'config.model.attention={self.attention!r} has no dropout on the attention'
        f' weights but model.dropout_rate={self.dropout_rate}; set '
        '--config.model.dropout_rate=0 or '
        + ' or '.join(f'--config.model.attention={name}' for name in dropping)
        + '.'
      )
    groups = [0] + [g for g in range(1, self.num_heads + 1) if self.num_heads % g == 0]
    if self.num_kv_heads not in groups or isinstance(self.num_kv_heads, float):
      raise ValueError(
        f'config.model.num_kv_heads={self.num_kv_heads!r} must be one of {groups} (0: as many '
        f'as model.num_heads={self.num_heads}; otherwise a divisor of it, so that the query '
        'heads share the key/value heads in equal groups); set --config.model.num_kv_heads=... '
        '(configs/common.py says what it means).'
      )
    if self.d_model % self.num_heads:
      raise ValueError(
        f'config.model.d_model={self.d_model} is not divisible by '
        f'config.model.num_heads={self.num_heads}; heads split the width.'
      )
    if POSITIONAL[self.positional].rotates and (self.d_model // self.num_heads) % 2:
      raise ValueError(
        f'config.model.positional={self.positional!r} rotates pairs of features, but a head '
        f'is d_model / num_heads = {self.d_model // self.num_heads} wide (odd); choose '
        'model.d_model and model.num_heads that give an even head width.'
      )


def check_context(config: Config, trained: int, asked: int, key: str) -> None:
  """Refuses `config.KEY` asking to score contexts of `asked` positions when
  the positional kind's parameters have the `trained` length (a `Family`
  hook: research/config_checks.py calls it without knowing the family)."""
  if asked <= trained or not POSITIONAL[config.positional].fixed_length:
    return
  extrapolating = ', '.join(name for name, kind in POSITIONAL.items() if not kind.fixed_length)
  raise ValueError(
    f'config.{key} asks for context {asked}, longer than the context '
    f'model.positional={config.positional!r} was trained on (data.seq_len={trained}): its '
    f'position table has no rows beyond {trained}. Set --config.{key} to at most {trained}, '
    f'or train with positions that extrapolate ({extrapolating}).'
  )


class Block(nn.Module):
  """A residual block of attention and an MLP, normalised before each
  (norm_position='pre', GPT-2: x + attn(norm(x)), then x + mlp(norm(x))) or
  after each residual sum ('post', Vaswani et al. 2017: norm(x + attn(x)),
  then norm(x + mlp(x))).

  Maps (x, train, positions, cache) -> (x, cache): the layer's decoding cache
  updated, or None when not decoding. That is also its shape as a step of
  `nn.scan`, with x the scan's carry and the cache scanned over layers.
  """

  config: Config

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, train: bool, positions_BxT: jax.Array | None, cache: dict | None
  ):
    c = self.config
    norm_1, norm_2 = NORMS[c.norm](c, 'ln_1'), NORMS[c.norm](c, 'ln_2')
    attn = attention.CausalSelfAttention(c, name='attn')
    mlp = MLPS[c.mlp](c, name='mlp')
    if c.norm_position == 'pre':
      attn_BxTxD, cache = attn(norm_1(x_BxTxD), train, positions_BxT, cache)
      x_BxTxD = x_BxTxD + attn_BxTxD
      x_BxTxD = x_BxTxD + mlp(norm_2(x_BxTxD), train)
    else:
      attn_BxTxD, cache = attn(x_BxTxD, train, positions_BxT, cache)
      x_BxTxD = norm_1(x_BxTxD + attn_BxTxD)
      x_BxTxD = norm_2(x_BxTxD + mlp(x_BxTxD, train))
    # The residual stream is split by batch only, whole features per device.
    x_BxTxD = sharding.constrain(x_BxTxD, BATCH, None, None)
    if self.is_mutable_collection('intermediates'):  # The model's `stats` only.
      self.sow(
        'intermediates', 'out_rms', jnp.sqrt(jnp.mean(jnp.square(x_BxTxD.astype(jnp.float32))))
      )
    return x_BxTxD, cache


class Transformer(nn.Module):
  """Token ids BxT (at positions BxT, default 0..T-1) -> (logits BxTxV, cache).

  With `cache` (the decoding cache of every layer: `k`, `v` of LxBxSxGxK) the
  new tokens' keys and values are written at their positions and the updated
  cache is returned; without it the result's cache is None.
  """

  config: Config
  vocab_size: int
  seq_len: int

  @nn.compact
  def __call__(
    self,
    inputs_BxT: jax.Array,
    train: bool,
    positions_BxT: jax.Array | None = None,
    cache: dict | None = None,
  ):
    c = self.config
    B, T = inputs_BxT.shape  # pylint: disable=invalid-name
    D, V = c.d_model, self.vocab_size  # pylint: disable=invalid-name
    if T > self.seq_len:
      raise ValueError(f'Input length {T} exceeds the context length {self.seq_len}.')
    embed = layers.Embed(
      V, D, embedding_init=nn.initializers.normal(options.INIT_STDDEV), name='embed'
    )
    x_BxTxD = embed(inputs_BxT)
    if c.scale_embeddings:  # Vaswani et al. 2017, section 3.4; the tied head reads E unscaled.
      x_BxTxD = x_BxTxD * math.sqrt(D)
    positional = POSITIONAL[c.positional]
    if positional.table is None:
      pass  # Positions act inside attention, or nowhere.
    elif positions_BxT is None:  # Rows 0..T-1, a static slice.
      table_PxD = positional.table(self, D, self.seq_len)
      x_BxTxD = x_BxTxD + table_PxD[:T].astype(x_BxTxD.dtype)
    else:
      # A position outside the table reads NaN rather than a clamped row.
      table_PxD = positional.table(self, D, self.seq_len)
      pos_BxTxD = jnp.asarray(table_PxD).at[positions_BxT].get(mode='fill', fill_value=jnp.nan)
      x_BxTxD = x_BxTxD + pos_BxTxD.astype(x_BxTxD.dtype)
    x_BxTxD = layers.Dropout(c.dropout_rate)(x_BxTxD, deterministic=not train)

    # Rematerialised blocks keep only their inputs for the backward pass.
    block = nn.remat(Block, static_argnums=(2,)) if c.remat else Block
    if c.scan_layers:
      # `train` and the positions are broadcast (static inside the body);
      # every layer gets its own slice of the stacked parameters, of the
      # cache, and its own dropout key.
      stack = nn.scan(
        block,
        variable_axes={'params': 0, 'intermediates': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast, nn.broadcast, 0),
        length=c.num_layers,
      )
      x_BxTxD, cache = stack(c, name=contract.STACKED_BLOCKS)(x_BxTxD, train, positions_BxT, cache)
    else:
      layer_caches = []
      for i in range(c.num_layers):
        layer_cache = None if cache is None else jax.tree.map(lambda a, i=i: a[i], cache)
        x_BxTxD, layer_cache = block(c, name=f'block_{i}')(
          x_BxTxD, train, positions_BxT, layer_cache
        )
        layer_caches.append(layer_cache)
      if cache is not None:
        cache = jax.tree.map(lambda *a: jnp.stack(a), *layer_caches)
    if c.norm_position == 'pre':  # Post-norm blocks already end in a norm.
      x_BxTxD = NORMS[c.norm](c, 'ln_f')(x_BxTxD)

    x_BTxD = x_BxTxD.reshape(B * T, D)
    if c.tie_embeddings:
      logits_BTxV = embed.attend(x_BTxD)
    else:
      logits_BTxV = layers.Dense(
        V, use_bias=False, kernel_init=nn.initializers.normal(options.INIT_STDDEV), name='head'
      )(x_BTxD)
    logits_BxTxV = logits_BTxV.reshape(B, T, V).astype(jnp.float32)
    if c.logit_softcap:
      # Gemma 2 (Gemma Team 2024, section 2): cap * tanh(logits / cap) keeps
      # every logit within [-cap, cap], about the identity well below it.
      # Here, so training, evaluation and decoding all see the capped logits.
      logits_BxTxV = c.logit_softcap * jnp.tanh(logits_BxTxV / c.logit_softcap)
    return logits_BxTxV, cache


# Specs inside a block, by the parameter's path there.
_BLOCK_RULES = (
  ('attn/qkv/kernel', ('fsdp', 'tensor')),  # Dx(G*C*K), group-major
  ('attn/out/kernel', ('tensor', 'fsdp')),  # (N*K)xD
  ('mlp/(fc|gate)/kernel', ('fsdp', 'tensor')),  # DxF, gated MLPs have both
  ('(attn/qkv|mlp/fc|mlp/gate)/bias', ('tensor',)),
  ('mlp/proj/kernel', ('tensor', 'fsdp')),  # FxD
  # Vectors of D: the outputs of reduced matmul pairs, and the norms'.
  ('(attn/out|mlp/proj)/bias', ()),
  ('ln_[12]/(scale|bias)', ()),
  ('attn/[qk]_norm/(scale|bias)', ()),  # Vectors of K, shared by the heads.
)

# Compression (research/compress.py): every matmul kernel by output column;
# the token embedding by row (it is looked up, and is the tied head).
COMPRESSIBLE = (
  ('embed/embedding', 'rows'),
  (rf'(block_\d+|{contract.STACKED_BLOCKS})/(attn|mlp)/\w+/kernel', 'columns'),
  ('head/kernel', 'columns'),
)

# model.parametrization's role of every parameter (research/models/mup.py),
# first match wins; no catch-all: a parameter of a new option needs its row.
PARAM_ROLES = (
  ('embed/embedding', 'embedding'),
  ('pos_embed', 'embedding'),
  (rf'(block_\d+|{contract.STACKED_BLOCKS})/(attn|mlp)/\w+/kernel', 'hidden'),
  ('head/kernel', 'output'),
  ('/(scale|bias)$', 'vector'),  # Norm gains and biases, qk-norm's too; dense biases.
)

# (path regex, spec), first match wins (research/sharding.py); no catch-all:
# a parameter of a new option needs its rule here.
PARTITION_RULES = (
  ('embed/embedding', (None, 'fsdp')),  # VxD
  ('pos_embed', (None, 'fsdp')),  # PxD
  *((rf'block_\d+/{name}', spec) for name, spec in _BLOCK_RULES),
  # scan_layers=True: the same weights stacked on a leading layer axis.
  *((rf'{contract.STACKED_BLOCKS}/{name}', (None, *spec)) for name, spec in _BLOCK_RULES),
  ('ln_f/(scale|bias)', ()),
  ('head/kernel', ('fsdp', None)),  # DxV
)


def build(config: Config, vocab_size: int, seq_len: int) -> contract.Model:
  """The Transformer of `config` over V = `vocab_size` token ids with
  context length P = `seq_len` (`apply` takes any T <= P); its carry is
  always the empty dict `{}` and its decoding cache holds P positions."""
  module = Transformer(config, vocab_size=vocab_size, seq_len=seq_len)
  compute_dtype = COMPUTE_DTYPES[config.compute_dtype]

  def init(rng: jax.Array) -> dict:
    # Parameter shapes do not depend on T, so one position is enough.
    variables = module.init({'params': rng}, jnp.zeros((1, 1), jnp.int32), train=False)
    # The standard draw, times the parametrization's factors (none: as it is).
    return mup.scale_init(config, PARAM_ROLES, variables['params'])

  def run(params, inputs_BxT, *, train, rngs, positions_BxT, cache, mutable=False):
    if compute_dtype != jnp.float32:
      # Mixed precision: the float32 parameters (and so the optimizer state)
      # are cast on the way in, so gradients come back in float32; the
      # attention softmax and the logits are float32 (attention.py). An int8
      # weight's values stay int8 (its scale is cast).
      params = jax.tree.map(
        lambda p: p.astype(compute_dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
      )
    return module.apply(
      {'params': params},
      inputs_BxT,
      train=train,
      positions_BxT=positions_BxT,
      cache=cache,
      rngs=rngs,
      mutable=mutable,
    )

  def apply(
    params: dict,
    carry: dict,
    inputs_BxT: jax.Array,
    *,
    train: bool,
    rng: jax.Array | None,
    positions_BxT: jax.Array | None = None,
  ) -> tuple[jax.Array, dict]:
    rngs = contract.dropout_rngs(train, config.dropout_rate, rng)
    logits_BxTxV, _ = run(
      params, inputs_BxT, train=train, rngs=rngs, positions_BxT=positions_BxT, cache=None
    )
    return logits_BxTxV, carry

  def init_carry(batch_size: int) -> dict:
    del batch_size  # Attention sees only the current segment: no state.
    return {}

  def init_cache(batch_size: int) -> dict:
    # Keys and values of the G key/value heads only: N / G times smaller
    # than multi-head attention's (Shazeer 2019's point for decoding).
    shape = (
      config.num_layers,
      batch_size,
      seq_len,
      attention.kv_heads(config),
      config.d_model // config.num_heads,
    )
    return {'k': jnp.zeros(shape, compute_dtype), 'v': jnp.zeros(shape, compute_dtype)}

  def decode(
    params: dict, cache: dict, inputs_BxT: jax.Array, positions_BxT: jax.Array
  ) -> tuple[jax.Array, dict]:
    return run(params, inputs_BxT, train=False, rngs={}, positions_BxT=positions_BxT, cache=cache)

  def stats(params: dict, carry: dict, inputs_BxT: jax.Array) -> dict[str, jax.Array]:
    """Per layer i, `attn_logit_max/layer_i` (the largest pre-softmax
    attention logit over the batch's heads and causal pairs) and
    `block_rms/layer_i` (the root mean square of block i's output, the
    residual stream after it); `attn_logit_max`, the largest over layers."""
    del carry
    _, variables = run(
      params,
      inputs_BxT,
      train=False,
      rngs={},
      positions_BxT=None,
      cache=None,
      mutable=['intermediates'],
    )
    sown = variables['intermediates']
    if config.scan_layers:  # One array of L per statistic, layers on its leading axis.
      blocks = sown[contract.STACKED_BLOCKS]
      logit_max_L, rms_L = blocks['attn']['logit_max'][0], blocks['out_rms'][0]
    else:
      layers_ = [sown[f'block_{i}'] for i in range(config.num_layers)]
      logit_max_L = jnp.stack([b['attn']['logit_max'][0] for b in layers_])
      rms_L = jnp.stack([b['out_rms'][0] for b in layers_])
    figures = {'attn_logit_max': jnp.max(logit_max_L)}
    for i in range(config.num_layers):
      figures[f'attn_logit_max/layer_{i}'] = logit_max_L[i]
      figures[f'block_rms/layer_{i}'] = rms_L[i]
    return figures

  def flops_per_token(params) -> float:
    """6 N (the embedding counts once, as the output layer, when tied) plus
    12 L P D for QK^T and AV forward and backward (PaLM, Chowdhery et al.
    2022, App. B), all of it though the causal mask wastes half. Norms (the
    qk-norm's included), softmaxes and the logit soft-cap are elementwise and
    not counted, as in PaLM's count (their scales are not matrices).
    Grouped key/value heads (num_kv_heads) shrink the qkv kernel, which the
    6 N reads from the parameters' shapes; the attention term stays, as
    every query head still scores every key."""
    lookups = ('pos_embed',) + (() if config.tie_embeddings else ('embed/embedding',))
    flops = 6.0 * contract.matmul_params(params, lookups)
    flops += 12.0 * config.num_layers * seq_len * config.d_model
    return flops

  return contract.Model(
    init=init,
    apply=apply,
    init_carry=init_carry,
    recurrent=False,
    init_cache=init_cache,
    decode=decode,
    context=seq_len,
    partition_rules=PARTITION_RULES,
    flops_per_token=flops_per_token,
    compressible=COMPRESSIBLE,
    stats=stats,
    rate_multipliers=mup.rate_multipliers(config, PARAM_ROLES),
    param_roles=PARAM_ROLES,  # Muon: every hidden kernel (qkv fused) is one matrix.
    # DP-SGD's ghost clipping (research/privacy/ghost.py) of the token
    # embedding and the head when each is used once; a tied head reads the
    # embedding twice, and is clipped through per-row gradients instead.
    ghost_layers=() if config.tie_embeddings else (('embed', 'lookup'), ('head', 'linear')),
  )
