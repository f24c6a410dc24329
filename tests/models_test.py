"""Tests for research.models: registry, shapes, causality, recurrence, init."""

import functools
import math
import re

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import models
from research.models import layers
from research.models import positional

# Distinct primes so that a swapped axis shows up as a shape error.
V, T, B = 13, 7, 3
D, NUM_HEADS, D_FF = 12, 2, 17
H = 11
NUM_LAYERS = 2
INIT_SCALE = 0.1


def transformer_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    dict(
      name='transformer',
      num_layers=NUM_LAYERS,
      num_heads=NUM_HEADS,
      num_kv_heads=0,
      d_model=D,
      d_ff=D_FF,
      dropout_rate=0.0,
      positional='learned',
      tie_embeddings=False,
      scale_embeddings=False,
      use_bias=True,
      compute_dtype='float32',
      attention='xla',
      remat=False,
      scan_layers=False,
      norm='layernorm',
      norm_position='pre',
      mlp='gelu',
      qk_norm='none',
      logit_softcap=0.0,
      parametrization='standard',
      mup_base_width=0,
    )
  )
  config.update(overrides)
  return config


def lstm_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    dict(name='lstm', num_layers=NUM_LAYERS, hidden_size=H, dropout_rate=0.0, init_scale=INIT_SCALE)
  )
  config.update(overrides)
  return config


CONFIGS = {'transformer': transformer_config, 'lstm': lstm_config}


def rng_key(seed: int) -> jax.Array:
  # Any key type works; on CPU "rbg" compiles ~4x faster than the default threefry, which
  # otherwise dominates this file's runtime. Per key, not global: other tests are unaffected.
  return jax.random.key(seed, impl='rbg')


def random_tokens(seed: int, shape: tuple[int, ...]) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, shape), jnp.int32)


# Tracing and compiling dominate this file's runtime on CPU, so models, their
# parameters and jitted functions are built once per configuration and shared
# between tests. Overrides are passed as keyword arguments so they are hashable.
@functools.cache
def get_model(name: str, **overrides) -> models.Model:
  return models.get_model(CONFIGS[name](**overrides), V, T)


@functools.cache
def get_params(name: str, **overrides) -> dict:
  return jax.jit(get_model(name, **overrides).init)(rng_key(0))


@functools.cache
def jitted_apply(name: str, train: bool, **overrides):
  return jax.jit(functools.partial(get_model(name, **overrides).apply, train=train))


class RegistryTest(absltest.TestCase):
  def test_registry_names(self):
    # A subset: a new family is one more line of MODELS, this test untouched.
    self.assertContainsSubset({'lstm', 'transformer'}, set(models.MODELS))

  def test_unknown_model_name_lists_known_ones(self):
    known = re.escape(str(sorted(models.MODELS)))
    with self.assertRaisesRegex(ValueError, rf"'gru'.*{known}"):
      models.get_model(lstm_config(name='gru'), V, T)

  def test_unknown_positional_lists_known_ones(self):
    known = re.escape(str(sorted(positional.POSITIONAL)))
    with self.assertRaisesRegex(ValueError, rf"'rotary'.*{known}"):
      models.get_model(transformer_config(positional='rotary'), V, T)


class ShapesTest(parameterized.TestCase):
  @parameterized.product(name=['transformer', 'lstm'], batch_size_and_length=[(B, T), (1, 5)])
  def test_output_and_carry_shapes(self, name, batch_size_and_length):
    batch_size, length = batch_size_and_length
    model = get_model(name)
    params = get_params(name)
    self.assertIsInstance(params, dict)
    for leaf in jax.tree.leaves(params):
      self.assertEqual(leaf.dtype, jnp.float32)
    carry = model.init_carry(batch_size)
    logits, new_carry = jitted_apply(name, False)(
      params, carry, random_tokens(1, (batch_size, length)), rng=None
    )
    chex.assert_shape(logits, (batch_size, length, V))
    self.assertEqual(logits.dtype, jnp.float32)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_carry, carry)
    if name == 'transformer':
      self.assertEqual(carry, {})
      self.assertFalse(model.recurrent)
    else:
      self.assertTrue(model.recurrent)
      self.assertIsInstance(carry, tuple)
      self.assertLen(carry, NUM_LAYERS)
      for c, h in carry:
        chex.assert_shape([c, h], (batch_size, H))
        chex.assert_type([c, h], jnp.float32)

  @parameterized.parameters('transformer', 'lstm')
  def test_abstract_init_matches_init(self, name):
    # The trainer creates sharded parameters from jax.eval_shape(init), which
    # fails if init computes anything on the host from the key.
    chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.eval_shape(get_model(name).init, rng_key(0)), get_params(name)
    )


class TransformerTest(parameterized.TestCase):
  @parameterized.parameters(*positional.POSITIONAL)  # Every kind, a new one too.
  def test_causality_through_gradients(self, kind):
    params = get_params('transformer', positional=kind)
    apply = jitted_apply('transformer', False, positional=kind)
    # Distinct tokens: row tokens[s] of the (untied) embedding table feeds
    # only position s, so its gradient is the gradient w.r.t. input s.
    tokens_T = jnp.asarray(np.random.default_rng(1).permutation(V)[:T])
    targets_T = random_tokens(2, (T,))

    def losses_T(embedding_VxD):
      p = dict(params, embed={'embedding': embedding_VxD})
      logits_1xTxV, _ = apply(p, {}, tokens_T[None], rng=None)
      logp_TxV = jax.nn.log_softmax(logits_1xTxV[0])
      return -logp_TxV[jnp.arange(T), targets_T]

    jac_TxVxD = jax.jit(jax.jacrev(losses_T))(params['embed']['embedding'])
    # grad_norm[t, s]: how much the loss at t depends on the input at s.
    grad_norm_TxT = np.asarray(jnp.linalg.norm(jac_TxVxD[:, tokens_T], axis=-1))
    future = np.triu(np.ones((T, T), bool), k=1)
    np.testing.assert_array_equal(grad_norm_TxT[future], 0.0)
    self.assertTrue(np.all(grad_norm_TxT[~future] > 0.0), grad_norm_TxT)

  def test_tied_embeddings_share_the_output_head(self):
    tied_params = get_params('transformer', tie_embeddings=True)
    untied_params = get_params('transformer')
    self.assertNotIn('head', tied_params)
    chex.assert_shape(untied_params['head']['kernel'], (D, V))

    # A token that never occurs in the input reaches the loss only through
    # the output head, so its embedding row has a gradient only when tied.
    tokens_1xT = jnp.arange(T, dtype=jnp.int32)[None]
    unused_token = V - 1

    def unused_row_grad(params, **overrides):
      apply = jitted_apply('transformer', False, **overrides)

      def loss(p):
        logits, _ = apply(p, {}, tokens_1xT, rng=None)
        return jax.nn.logsumexp(logits, axis=-1).sum()

      return jax.jit(jax.grad(loss))(params)['embed']['embedding'][unused_token]

    self.assertGreater(float(jnp.abs(unused_row_grad(tied_params, tie_embeddings=True)).max()), 0.0)
    np.testing.assert_array_equal(unused_row_grad(untied_params), 0.0)

  def test_position_params_only_when_learned(self):
    chex.assert_shape(get_params('transformer')['pos_embed'], (T, D))
    self.assertNotIn('pos_embed', get_params('transformer', positional='sinusoidal'))

  def test_sinusoidal_table_values(self):
    table_TxD = positional.sinusoidal_positions(T, D)
    t, i = 5, 3  # Column pair (2i, 2i + 1).
    angle = t / 10000 ** (2 * i / D)
    np.testing.assert_allclose(table_TxD[t, 2 * i], math.sin(angle), 1e-6)
    np.testing.assert_allclose(table_TxD[t, 2 * i + 1], math.cos(angle), 1e-6)

  def test_input_longer_than_context_raises(self):
    with self.assertRaisesRegex(ValueError, 'context length'):
      jax.eval_shape(
        functools.partial(get_model('transformer').apply, train=False),
        get_params('transformer'),
        {},
        random_tokens(1, (B, T + 1)),
        rng=None,
      )

  def test_init_follows_gpt2(self):
    params = get_params('transformer')
    residual_std = 0.02 / math.sqrt(2 * NUM_LAYERS)
    expected_std = {
      ('embed', 'embedding'): 0.02,
      ('pos_embed',): 0.02,
      ('head', 'kernel'): 0.02,
      ('block_0', 'attn', 'qkv', 'kernel'): 0.02,
      ('block_0', 'mlp', 'fc', 'kernel'): 0.02,
      ('block_0', 'attn', 'out', 'kernel'): residual_std,
      ('block_1', 'mlp', 'proj', 'kernel'): residual_std,
    }
    for path, std in expected_std.items():
      leaf = params
      for key in path:
        leaf = leaf[key]
      # A tolerance of 25% is over 3 standard errors for >= 84 samples, and
      # the residual and plain stds differ by a factor of 2.
      np.testing.assert_allclose(np.std(leaf), std, rtol=0.25, err_msg=path)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
      name = jax.tree_util.keystr(path)
      if 'bias' in name:
        np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
      if 'scale' in name:
        np.testing.assert_array_equal(leaf, 1.0, err_msg=name)


def reference_lstm(params, carry, tokens_BxT, xp=np):
  """LSTM one time step at a time, in NumPy (or `xp`=jax.numpy, so that
  jax.grad differentiates it step by step); gate axis unit-major (u, i/f/g/o)."""
  sigmoid = lambda x: 1 / (1 + xp.exp(-x))
  params = jax.tree.map(xp.asarray, params)
  state = [tuple(xp.asarray(a) for a in layer) for layer in carry]
  logits = []
  for t in range(tokens_BxT.shape[1]):
    x = params['embed']['embedding'][xp.asarray(tokens_BxT[:, t])]
    for layer, (c, h) in enumerate(state):
      p = params[f'lstm_{layer}']
      gates = x @ p['input_kernel'] + h @ p['recurrent_kernel'] + p['bias']
      gates = gates.reshape(gates.shape[0], -1, 4)
      i, f, g, o = (gates[..., j] for j in range(4))
      c = sigmoid(f) * c + sigmoid(i) * xp.tanh(g)
      x = h = sigmoid(o) * xp.tanh(c)
      state[layer] = (c, h)
    logits.append(x @ params['softmax']['kernel'] + params['softmax']['bias'])
  return xp.stack(logits, axis=1), state


class LSTMTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.model = get_model('lstm')
    self.params = get_params('lstm')
    self.tokens_BxT = random_tokens(1, (B, T))

  def run_model(self, carry, tokens_BxT):
    return jitted_apply('lstm', False)(self.params, carry, tokens_BxT, rng=None)

  def test_matches_reference_with_gate_order_ifgo(self):
    # A nonzero start state, so the recurrent path is exercised from t=0.
    carry = jax.tree.map(lambda z: z + 0.3, self.model.init_carry(B))
    logits, new_carry = self.run_model(carry, self.tokens_BxT)
    ref_logits, ref_carry = reference_lstm(self.params, carry, self.tokens_BxT)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    for (c, h), (ref_c, ref_h) in zip(new_carry, ref_carry):
      np.testing.assert_allclose(c, ref_c, atol=1e-5)
      np.testing.assert_allclose(h, ref_h, atol=1e-5)

  def test_gradients_match_step_by_step_autodiff(self):
    # The layer's written-out backward pass (lstm._recurrence_bwd) against
    # jax.grad of the step-by-step reference: every parameter and the start
    # state, through the logits and through the final carry.
    carry = jax.tree.map(lambda z: z + 0.3, self.model.init_carry(B))
    weights = jax.random.normal(jax.random.key(2), (B, T, V))
    carry_weights = jax.random.normal(jax.random.key(3), (NUM_LAYERS, 2, B, H))

    def loss(apply):
      def fn(params, carry):
        logits, new_carry = apply(params, carry)
        ends = sum(
          jnp.sum(carry_weights[l, j] * new_carry[l][j]) for l in range(NUM_LAYERS) for j in (0, 1)
        )
        return jnp.sum(weights * logits) + ends

      return jax.jit(jax.grad(fn, argnums=(0, 1)))

    model_apply = lambda p, c: self.model.apply(p, c, self.tokens_BxT, train=False, rng=None)
    reference = lambda p, c: reference_lstm(p, c, self.tokens_BxT, xp=jnp)
    got, want = loss(model_apply)(self.params, carry), loss(reference)(self.params, carry)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
    self.assertGreater(float(jnp.max(jnp.abs(got[0]['lstm_0']['recurrent_kernel']))), 1e-2)

  def test_step_by_step_equals_scan(self):
    full_logits, full_carry = self.run_model(self.model.init_carry(B), self.tokens_BxT)
    carry = self.model.init_carry(B)
    step_logits = []
    for t in range(T):
      logits_Bx1xV, carry = self.run_model(carry, self.tokens_BxT[:, t : t + 1])
      step_logits.append(logits_Bx1xV)
    np.testing.assert_allclose(jnp.concatenate(step_logits, axis=1), full_logits, atol=1e-5)
    chex.assert_trees_all_close(carry, full_carry, atol=1e-5)

  def test_carry_across_two_segments_equals_one(self):
    full_logits, full_carry = self.run_model(self.model.init_carry(B), self.tokens_BxT)
    first_logits, carry = self.run_model(self.model.init_carry(B), self.tokens_BxT[:, :3])
    second_logits, carry = self.run_model(carry, self.tokens_BxT[:, 3:])
    np.testing.assert_allclose(
      jnp.concatenate([first_logits, second_logits], axis=1), full_logits, atol=1e-5
    )
    chex.assert_trees_all_close(carry, full_carry, atol=1e-5)

  def test_init_uniform_within_scale(self):
    for path, leaf in jax.tree_util.tree_leaves_with_path(self.params):
      name = jax.tree_util.keystr(path)
      leaf = np.asarray(leaf)
      self.assertLessEqual(np.abs(leaf).max(), INIT_SCALE, name)
      # Both signs and most of the range: symmetric uniform, nothing zero.
      self.assertLess(leaf.min(), -INIT_SCALE / 2, name)
      self.assertGreater(leaf.max(), INIT_SCALE / 2, name)

  def test_fused_gate_param_shapes(self):
    chex.assert_shape(self.params['lstm_0']['input_kernel'], (H, 4 * H))
    chex.assert_shape(self.params['lstm_1']['recurrent_kernel'], (H, 4 * H))
    chex.assert_shape(self.params['lstm_1']['bias'], (4 * H,))
    chex.assert_shape(self.params['softmax']['kernel'], (H, V))
    chex.assert_shape(self.params['softmax']['bias'], (V,))

  def test_wrong_carry_batch_raises(self):
    with self.assertRaisesRegex(ValueError, 'Carry'):
      jax.eval_shape(
        functools.partial(self.model.apply, train=False),
        self.params,
        self.model.init_carry(B + 1),
        self.tokens_BxT,
        rng=None,
      )


class SixteenBitDropoutTest(parameterized.TestCase):
  @parameterized.parameters(0.2, 0.65)
  def test_keeps_the_rate_and_the_expectation(self, rate):
    x = jnp.full((40, 25, 101), 3.0)  # An odd last axis: half a word unused.
    out = np.asarray(
      layers.Dropout(rate).apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(7)})
    )
    kept = out != 0
    scale = 65536 / round((1 - rate) * 65536)
    np.testing.assert_allclose(out[kept], 3.0 * scale, rtol=1e-6)
    # 101,000 draws: the kept fraction is within 5 standard deviations.
    sd = np.sqrt(rate * (1 - rate) / x.size)
    self.assertAlmostEqual(kept.mean(), 1 - rate, delta=5 * sd)
    self.assertAlmostEqual(out.mean() / 3.0, 1.0, delta=5 * sd / (1 - rate))
    # Both halves of each random word are used alike: no column pattern.
    by_column = kept.mean(axis=(0, 1))
    self.assertLess(np.abs(by_column - (1 - rate)).max(), 6 * np.sqrt(rate * (1 - rate) / 1000))

  def test_deterministic_or_rate_zero_is_identity(self):
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(layers.Dropout(0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(layers.Dropout(0.0).apply({}, x, deterministic=False), x)


class DropoutTest(parameterized.TestCase):
  """Dropout models share the parameters of the dropout-free ones."""

  def logits(self, name, train, rng):
    logits, _ = jitted_apply(name, train, dropout_rate=0.3)(
      get_params(name), get_model(name).init_carry(B), random_tokens(1, (B, T)), rng=rng
    )
    return np.asarray(logits)

  @parameterized.parameters('transformer', 'lstm')
  def test_train_mode_drops(self, name):
    eval_logits = self.logits(name, False, None)
    train_logits = self.logits(name, True, rng_key(1))
    self.assertFalse(np.allclose(train_logits, eval_logits))

  @parameterized.parameters('transformer', 'lstm')
  def test_eval_mode_ignores_rng(self, name):
    np.testing.assert_array_equal(
      self.logits(name, False, rng_key(1)), self.logits(name, False, rng_key(2))
    )

  @parameterized.parameters('transformer', 'lstm')
  def test_train_mode_is_a_function_of_rng(self, name):
    first = self.logits(name, True, rng_key(1))
    np.testing.assert_array_equal(first, self.logits(name, True, rng_key(1)))
    self.assertFalse(np.allclose(first, self.logits(name, True, rng_key(2))))

  @parameterized.parameters('transformer', 'lstm')
  def test_train_mode_without_rng_raises(self, name):
    with self.assertRaisesRegex(ValueError, 'rng'):
      self.logits(name, True, None)


class JitTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    chex.clear_trace_counter()

  @parameterized.parameters('transformer', 'lstm')
  def test_apply_traces_once_for_same_shapes(self, name):
    model = get_model(name, dropout_rate=0.3)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(params, carry, tokens_BxT, rng):
      return model.apply(params, carry, tokens_BxT, train=True, rng=rng)

    carry = model.init_carry(B)
    for step in range(3):
      logits, carry = forward(get_params(name), carry, random_tokens(step, (B, T)), rng_key(step))
    chex.assert_shape(logits, (B, T, V))


if __name__ == '__main__':
  absltest.main()
