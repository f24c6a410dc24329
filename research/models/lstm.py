"""LSTM language model of Zaremba, Sutskever & Vinyals (2014).

"Recurrent Neural Network Regularization", arXiv:1409.2329: an embedding, L
stacked LSTM layers of H units and a softmax layer, with dropout only on the
non-recurrent connections (the input of every layer and the output of the
last one), never on the h -> h path.

Shape letters (a joined pair such as TB is one flattened axis of size T*B):
  B: batch size
  T: time steps of this call (any T; the carry links consecutive calls)
  D: width of a layer's input (H here: the embedding width equals H)
  H: hidden units per layer, `hidden_size`
  V: vocabulary size

Carry: a tuple with one `(c_BxH, h_BxH)` tuple per layer, bottom layer first,
float32. `apply` returns the state after the last of its T steps, so feeding
it to the next call continues the sequence exactly.

Parameter tree (`Model.init` output), all uniform in [-init_scale, init_scale]:
  embed/embedding                  VxH
  lstm_{l}/input_kernel            Dx4H
  lstm_{l}/recurrent_kernel        Hx4H
  lstm_{l}/bias                    4H
  softmax/kernel                   HxV
  softmax/bias                     V
The 4H gate axis is unit-major: column 4u + j holds gate j of unit u, gates in
the order i (input), f (forget), g (cell candidate), o (output). A contiguous
split of that axis (tensor parallelism, `PARTITION_RULES`) then keeps each
unit's four gates on one device. There is no forget-gate bias offset.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import rules
from research import sharding
from research.models import contract
from research.models import layers
from research.sharding import BATCH

LayerCarry = tuple[jax.Array, jax.Array]  # (c_BxH, h_BxH)
Carry = tuple[LayerCarry, ...]


@dataclasses.dataclass(frozen=True)
class Config:
  """The LSTM's `config.model` keys (configs/common.py says what each
  means), checked when built; passed whole to the modules."""

  num_layers: int = rules.field(rules.at_least(1))
  hidden_size: int = rules.field(rules.at_least(1))
  dropout_rate: float = rules.field(rules.in_range(0, 1))
  init_scale: float = rules.field(rules.positive())

  def __post_init__(self):
    rules.check_fields(self, 'model')


def uniform_init(scale: float) -> nn.initializers.Initializer:
  """Initializer uniform in [-scale, scale] (Flax's `uniform` is [0, scale))."""

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)

  return init


def _cell(gates_Bx4H: jax.Array, c_BxH: jax.Array):
  """One step from the gates (unit-major) and the previous cell state:
  (c, h, the activations (i, f, g, o, tanh c) the backward pass reads)."""
  B, H = c_BxH.shape  # pylint: disable=invalid-name
  gates_Bx4H = sharding.constrain(gates_Bx4H, BATCH, 'tensor')
  gates_BxHx4 = gates_Bx4H.reshape(B, H, 4)
  i_BxH, f_BxH, o_BxH = (jax.nn.sigmoid(gates_BxHx4[..., j]) for j in (0, 1, 3))
  g_BxH = jnp.tanh(gates_BxHx4[..., 2])
  c_BxH = f_BxH * c_BxH + i_BxH * g_BxH
  tanh_c_BxH = jnp.tanh(c_BxH)
  return c_BxH, o_BxH * tanh_c_BxH, (i_BxH, f_BxH, g_BxH, o_BxH, tanh_c_BxH)


def _scan(gates_in_TxBx4H, w_rec_Hx4H, c0_BxH, h0_BxH, keep: bool):
  """The recurrence over T steps: (h_TxBxH, c_T, h_T), and with `keep` what
  the backward pass reads (each step's c_{t-1} and activations)."""

  def step(carry, gates_in_Bx4H):
    c_prev_BxH, h_prev_BxH = carry
    # `w_rec_Hx4H` may be int8 (layers.Int8, research/compress.py).
    c_BxH, h_BxH, acts = _cell(gates_in_Bx4H + layers.matmul(h_prev_BxH, w_rec_Hx4H), c_prev_BxH)
    return (c_BxH, h_BxH), ((h_BxH, c_prev_BxH, acts) if keep else h_BxH)

  (c_BxH, h_BxH), out = jax.lax.scan(step, (c0_BxH, h0_BxH), gates_in_TxBx4H)
  return (out[0] if keep else out), c_BxH, h_BxH, (out[1:] if keep else None)


@jax.custom_vjp
def _recurrence(gates_in_TxBx4H, w_rec_Hx4H, c0_BxH, h0_BxH):
  """The float recurrence, (h_TxBxH, c_T, h_T), with the backward pass
  below in place of the scan's own transpose."""
  h_TxBxH, c_BxH, h_BxH, _ = _scan(gates_in_TxBx4H, w_rec_Hx4H, c0_BxH, h0_BxH, keep=False)
  return h_TxBxH, c_BxH, h_BxH


def _recurrence_fwd(gates_in_TxBx4H, w_rec_Hx4H, c0_BxH, h0_BxH):
  h_TxBxH, c_BxH, h_BxH, kept = _scan(gates_in_TxBx4H, w_rec_Hx4H, c0_BxH, h0_BxH, keep=True)
  return (h_TxBxH, c_BxH, h_BxH), (w_rec_Hx4H, h0_BxH, h_TxBxH, kept)


def _recurrence_bwd(residuals, cotangents):
  """Backpropagation through time: a reverse scan turns each step's dh and dc
  into the gradient of its gates (dgates) and passes dh = dgates W_rec^T and
  dc * f back a step. W_rec's gradient is then one matmul over all T*B
  positions, [h_0 .. h_{T-1}]^T dgates, where the scan's transpose adds a
  Hx4H outer product into an accumulator at every step (the gradients
  differ from it only in float32 summation order)."""
  w_rec_Hx4H, h0_BxH, h_TxBxH, (c_prev_TxBxH, acts) = residuals
  dh_TxBxH, dc_BxH, dh_BxH = cotangents
  T, B, H = h_TxBxH.shape  # pylint: disable=invalid-name

  def step(carry, inputs):
    dc_next_BxH, dh_next_BxH = carry
    dh_out_BxH, c_prev_BxH, (i_BxH, f_BxH, g_BxH, o_BxH, tanh_c_BxH) = inputs
    dh_BxH = dh_out_BxH + dh_next_BxH
    dc_BxH = dc_next_BxH + dh_BxH * o_BxH * (1 - tanh_c_BxH * tanh_c_BxH)
    dgates_BxHx4 = jnp.stack(
      [
        dc_BxH * g_BxH * i_BxH * (1 - i_BxH),
        dc_BxH * c_prev_BxH * f_BxH * (1 - f_BxH),
        dc_BxH * i_BxH * (1 - g_BxH * g_BxH),
        dh_BxH * tanh_c_BxH * o_BxH * (1 - o_BxH),
      ],
      axis=-1,
    )
    dgates_Bx4H = sharding.constrain(dgates_BxHx4.reshape(B, 4 * H), BATCH, 'tensor')
    return (dc_BxH * f_BxH, dgates_Bx4H @ w_rec_Hx4H.T), dgates_Bx4H

  (dc0_BxH, dh0_BxH), dgates_TxBx4H = jax.lax.scan(
    step, (dc_BxH, dh_BxH), (dh_TxBxH, c_prev_TxBxH, acts), reverse=True
  )
  h_prev_TxBxH = jnp.concatenate([h0_BxH[None], h_TxBxH[:-1]], axis=0)
  dw_rec_Hx4H = h_prev_TxBxH.reshape(T * B, H).T @ dgates_TxBx4H.reshape(T * B, 4 * H)
  return dgates_TxBx4H, dw_rec_Hx4H, dc0_BxH, dh0_BxH


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class LSTMLayer(nn.Module):
  """One LSTM layer over a whole time-major sequence."""

  config: Config

  @nn.compact
  def __call__(
    self, x_TxBxD: jax.Array, carry: LayerCarry, gates_tap_TxBx4H: jax.Array | None = None
  ) -> tuple[jax.Array, LayerCarry]:
    """The layer over T steps from `carry`. `gates_tap_TxBx4H` (zeros) is
    added to the input half of the gates when given: DP-SGD's ghost clipping
    (research/privacy/ghost.py) takes the gates' gradient from it."""
    T, B, D = x_TxBxD.shape  # pylint: disable=invalid-name
    H = self.config.hidden_size  # pylint: disable=invalid-name
    init = uniform_init(self.config.init_scale)
    # Either weight may be int8 (layers.Int8, research/compress.py).
    w_in_Dx4H = layers.param(self, 'input_kernel', init, (D, 4 * H))
    w_rec_Hx4H = layers.param(self, 'recurrent_kernel', init, (H, 4 * H))
    b_4H = self.param('bias', init, (4 * H,))

    # The input projection does not depend on the recurrence: one big matmul
    # over all T*B positions instead of T small ones inside the loop.
    gates_in_TBx4H = layers.matmul(x_TxBxD.reshape(T * B, D), w_in_Dx4H) + b_4H
    gates_in_TxBx4H = gates_in_TBx4H.reshape(T, B, 4 * H)
    if gates_tap_TxBx4H is not None:
      gates_in_TxBx4H = gates_in_TxBx4H + gates_tap_TxBx4H

    c_BxH, h_BxH = carry
    if isinstance(w_rec_Hx4H, layers.Int8):  # Quantised weights are not trained.
      h_TxBxH, c_BxH, h_BxH, _ = _scan(gates_in_TxBx4H, w_rec_Hx4H, c_BxH, h_BxH, keep=False)
    else:
      h_TxBxH, c_BxH, h_BxH = _recurrence(gates_in_TxBx4H, w_rec_Hx4H, c_BxH, h_BxH)
    return h_TxBxH, (c_BxH, h_BxH)


class SoftmaxLayer(nn.Module):
  """The output layer, h @ kernel + bias, with the bias folded into the matmul.

  [h, 1] @ [kernel; bias] is the same affine map in one matmul: the bias
  gradient then comes out of the weight-gradient matmul instead of a
  separate reduction over the BTxV gradient, and no BTxV add is written.
  For PTB's 10,000 words this took the softmax layer's forward and backward
  from about 40 to 37 ms alone, and the ptb_lstm small step by about 1 ms
  (2%), on a 2-core CPU. Parameters are stored, and initialised, exactly as
  nn.Dense does it (kernel HxV, bias V); the sums differ from Dense's only by
  float32 rounding order.
  """

  config: Config
  vocab_size: int

  @nn.compact
  def __call__(self, h_NxH: jax.Array) -> jax.Array:
    N, H = h_NxH.shape  # pylint: disable=invalid-name
    init = uniform_init(self.config.init_scale)
    w_HxV = layers.param(self, 'kernel', init, (H, self.vocab_size))
    b_V = self.param('bias', init, (self.vocab_size,))
    if isinstance(w_HxV, layers.Int8):  # Quantised: the bias cannot join it.
      return layers.matmul(h_NxH, w_HxV) + b_V
    ones_Nx1 = jnp.ones((N, 1), h_NxH.dtype)
    return jnp.concatenate([h_NxH, ones_Nx1], axis=1) @ jnp.concatenate([w_HxV, b_V[None]], axis=0)


class LSTMLanguageModel(nn.Module):
  """(carry, token ids BxT) -> (next-token logits BxTxV, new carry)."""

  config: Config
  vocab_size: int

  @nn.compact
  def __call__(self, carry: Carry, inputs_BxT: jax.Array, train: bool) -> tuple[jax.Array, Carry]:
    c = self.config
    B, T = inputs_BxT.shape  # pylint: disable=invalid-name
    H, V = c.hidden_size, self.vocab_size  # pylint: disable=invalid-name
    if len(carry) != c.num_layers or carry[0][0].shape != (B, H):
      raise ValueError(
        f'Carry must hold {c.num_layers} (c, h) pairs of shape {(B, H)}; '
        f'got {jax.tree.map(jnp.shape, carry)}.'
      )
    init = uniform_init(c.init_scale)
    dropout_layer = layers.Dropout(c.dropout_rate)
    dropout = lambda x: dropout_layer(x, deterministic=not train)

    # Time-major throughout, so the scan slices its leading axis; transposing
    # the int ids here is cheaper than transposing activations per layer.
    x_TxBxD = layers.Embed(V, H, embedding_init=init, name='embed')(inputs_BxT.T)
    new_carry = []
    for layer in range(c.num_layers):
      x_TxBxD = dropout(x_TxBxD)
      lstm_layer = LSTMLayer(c, name=f'lstm_{layer}')
      # tuple(): a checkpoint restored without a target may hold lists, and
      # scan needs its carry in and out to have the same structure.
      x_TxBxD, layer_carry = lstm_layer(x_TxBxD, tuple(carry[layer]))
      new_carry.append(layer_carry)
    h_TxBxH = dropout(x_TxBxD)

    # Transpose the H-wide hidden states rather than the V-wide logits.
    h_BTxH = h_TxBxH.transpose(1, 0, 2).reshape(B * T, H)
    h_BTxH = sharding.constrain(h_BTxH, BATCH, None)
    logits_BTxV = SoftmaxLayer(c, V, name='softmax')(h_BTxH)
    return logits_BTxV.reshape(B, T, V), tuple(new_carry)


# (path regex, spec), first match wins (research/sharding.py): FSDP splits
# one dimension of every large matrix; tensor parallelism splits the gate
# columns by unit and the softmax by input row (unit), like the h it
# multiplies, so it needs one reduction of the logits and no gather of h.
# Vocabulary dimensions are never split: they rarely divide (65 characters).
PARTITION_RULES = (
  ('embed/embedding', (None, 'fsdp')),  # VxH
  (r'lstm_\d+/input_kernel', ('fsdp', 'tensor')),  # Dx4H
  (r'lstm_\d+/recurrent_kernel', ('fsdp', 'tensor')),  # Hx4H
  (r'lstm_\d+/bias', ('tensor',)),  # 4H
  ('softmax/kernel', (('tensor', 'fsdp'), None)),  # HxV
  ('softmax/bias', ()),  # V
)


# Compression (research/compress.py): the gate and softmax kernels by output
# column, the embedding by row.
COMPRESSIBLE = (
  ('embed/embedding', 'rows'),
  (r'lstm_\d+/(input|recurrent)_kernel', 'columns'),
  ('softmax/kernel', 'columns'),
)


# What each parameter is (`Model.param_roles`, research/models/mup.py ROLES), first match wins
# and no catch-all. The gate kernels map a width to a width: 'hidden', each one matrix with its
# four gates side by side (Muon orthogonalises it whole, research/optimizers.py).
PARAM_ROLES = (
  ('embed/embedding', 'embedding'),  # VxH
  (r'lstm_\d+/(input|recurrent)_kernel', 'hidden'),  # Dx4H, Hx4H
  ('softmax/kernel', 'output'),  # HxV
  ('/bias$', 'vector'),  # 4H, V
)


# DP-SGD's ghost clipping (research/privacy/ghost.py): every layer is used
# once per forward pass, so no per-row gradient is formed at all.
def ghost_layers(config: Config) -> tuple[tuple[str, str], ...]:
  lstm_layers = tuple((f'lstm_{layer}', 'lstm') for layer in range(config.num_layers))
  return (('embed', 'lookup'), *lstm_layers, ('softmax', 'affine'))


def build(config: Config, vocab_size: int, seq_len: int) -> contract.Model:
  """The LSTM of `config` over V = `vocab_size` token ids; `seq_len` is
  unused (it runs any T), kept for the registry's signature. Its carry is
  described in the module docstring."""
  del seq_len
  module = LSTMLanguageModel(config, vocab_size=vocab_size)

  def init_carry(batch_size: int) -> Carry:
    zeros_BxH = jnp.zeros((batch_size, config.hidden_size), jnp.float32)
    return tuple((zeros_BxH, zeros_BxH) for _ in range(config.num_layers))

  def init(rng: jax.Array) -> dict:
    variables = module.init(
      {'params': rng}, init_carry(1), jnp.zeros((1, 1), jnp.int32), train=False
    )
    return variables['params']

  def apply(
    params: dict,
    carry: Carry,
    inputs_BxT: jax.Array,
    *,
    train: bool,
    rng: jax.Array | None,
    positions_BxT: jax.Array | None = None,
  ) -> tuple[jax.Array, Carry]:
    del positions_BxT  # The carry holds where each row is.
    rngs = contract.dropout_rngs(train, config.dropout_rate, rng)
    return module.apply({'params': params}, carry, inputs_BxT, train=train, rngs=rngs)

  def decode(
    params: dict, cache: Carry, inputs_BxT: jax.Array, positions_BxT: jax.Array
  ) -> tuple[jax.Array, Carry]:
    del positions_BxT  # The cache (the carry) holds where each row is.
    return module.apply({'params': params}, cache, inputs_BxT, train=False)

  def flops_per_token(params) -> float:
    """6 N, N = L x 4H x (D + H) + H V: exactly the gate and softmax
    matmuls (the embedding is only indexed)."""
    return 6.0 * contract.matmul_params(params, ('embed/embedding',))

  # The decoding cache is the carry: the state after the tokens read so far.
  return contract.Model(
    init=init,
    apply=apply,
    init_carry=init_carry,
    recurrent=True,
    init_cache=init_carry,
    decode=decode,
    context=None,
    partition_rules=PARTITION_RULES,
    flops_per_token=flops_per_token,
    compressible=COMPRESSIBLE,
    ghost_layers=ghost_layers(config),
    param_roles=PARAM_ROLES,
  )
