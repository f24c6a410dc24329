"""Each Transformer option against a formula written here, independently of
the code under test: RMSNorm, post-norm blocks, RoPE, ALiBi, the embedding
scale, and every MLP."""

import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from research import models
from research.models import positional
from research.models import transformer
from research.models import transformer_options
from tests import models_test

V, T, B, D = models_test.V, models_test.T, models_test.B, models_test.D


def _config(**overrides) -> transformer.Config:
  return models.get_config(models_test.transformer_config(**overrides))


def _erf_gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


# name -> (activation, gated), from Shazeer 2020, "GLU Variants Improve
# Transformer", eq. 1-6 (Swish with beta = 1).
_MLP_FORMULAS = {
  'relu': (lambda x: np.maximum(x, 0), False),
  'gelu': (_erf_gelu, False),
  'swish': (lambda x: x * _sigmoid(x), False),
  'glu': (_sigmoid, True),
  'bilinear': (lambda x: x, True),
  'reglu': (lambda x: np.maximum(x, 0), True),
  'geglu': (_erf_gelu, True),
  'swiglu': (lambda x: x * _sigmoid(x), True),
}


class NormTest(absltest.TestCase):
  def test_rmsnorm_divides_by_the_root_mean_square(self):
    x_BxTxD = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32) * 3 + 1
    module = transformer_options.rmsnorm(_config(norm='rmsnorm'), 'ln')
    params = module.init(jax.random.key(0), x_BxTxD)['params']
    self.assertEqual(set(params), {'scale'})  # No bias, no mean.
    scale_D = np.random.default_rng(1).normal(size=D).astype(np.float32)
    got = module.apply({'params': {'scale': scale_D}}, x_BxTxD)
    want = x_BxTxD / np.sqrt(np.mean(x_BxTxD**2, -1, keepdims=True) + 1e-5) * scale_D
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def test_post_norm_block_is_norm_of_each_residual_sum(self):
    c = _config(norm_position='post', dropout_rate=0.0)
    block = transformer.Block(c)
    x_BxTxD = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, D)), jnp.float32)
    params = block.init(jax.random.key(3), x_BxTxD, False, None, None)['params']
    got, _ = block.apply({'params': params}, x_BxTxD, False, None, None)

    def layernorm(x, p):
      mean = x.mean(-1, keepdims=True)
      var = ((x - mean) ** 2).mean(-1, keepdims=True)
      return (x - mean) / np.sqrt(var + 1e-5) * p['scale'] + p['bias']

    attn, _ = transformer.attention.CausalSelfAttention(c).apply(
      {'params': params['attn']}, x_BxTxD, False
    )
    h = layernorm(np.asarray(x_BxTxD + attn), params['ln_1'])
    mlp = transformer.MLPS['gelu'](c).apply({'params': params['mlp']}, jnp.asarray(h), False)
    want = layernorm(h + np.asarray(mlp), params['ln_2'])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def test_post_norm_has_no_final_norm(self):
    params = models_test.get_params('transformer', norm_position='post')
    self.assertNotIn('ln_f', params)
    self.assertIn('ln_f', models_test.get_params('transformer'))


class RopeTest(absltest.TestCase):
  def test_rope_rotates_each_feature_pair_as_a_complex_number(self):
    N, K = 2, 8  # pylint: disable=invalid-name
    x_BxTxNxK = np.random.default_rng(4).normal(size=(B, T, N, K)).astype(np.float32)
    positions_BxT = np.random.default_rng(5).integers(0, 1000, (B, T))
    got = np.asarray(positional.rope(jnp.asarray(x_BxTxNxK), jnp.asarray(positions_BxT)))
    # Su et al. 2021, eq. 34: pair i is multiplied by exp(1j * t * theta_i),
    # theta_i = 10000^(-2i/K).
    z = x_BxTxNxK[..., 0::2] + 1j * x_BxTxNxK[..., 1::2]
    theta = 10000.0 ** (-2 * np.arange(K // 2) / K)
    z = z * np.exp(1j * positions_BxT[:, :, None, None] * theta)
    want = np.stack([z.real, z.imag], -1).reshape(x_BxTxNxK.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  def test_query_key_products_depend_on_the_distance_only(self):
    q, k = np.random.default_rng(6).normal(size=(2, 1, 1, 1, 8)).astype(np.float32)

    def product(t, s):
      rq = positional.rope(jnp.asarray(q), jnp.array([[t]]))
      rk = positional.rope(jnp.asarray(k), jnp.array([[s]]))
      return float(jnp.sum(rq * rk))

    self.assertAlmostEqual(product(7, 3), product(107, 103), places=4)
    self.assertNotAlmostEqual(product(7, 3), product(7, 5), places=3)

  def test_an_odd_head_width_is_refused_naming_the_keys(self):
    with self.assertRaisesRegex(ValueError, "positional='rope'.*head is d_model / num_heads = 3"):
      _config(positional='rope', d_model=6, num_heads=2)

  def test_any_rotating_kind_is_refused_an_odd_head_width_when_the_config_is_built(self):
    # The rule asks the kind (`rotates`), so a new rope-like kind is refused
    # before anything is traced, naming it.
    rope_like = positional.Positional(rotate=lambda x_BxTxNxK, positions_BxT: x_BxTxNxK)
    self.assertTrue(rope_like.rotates)
    self.assertFalse(positional.POSITIONAL['learned'].rotates)
    with mock.patch.dict(positional.POSITIONAL, rope_like=rope_like):
      with self.assertRaisesRegex(
        ValueError,
        r"^config\.model\.positional='rope_like' rotates pairs of features, but a head is "
        r'd_model / num_heads = 3 wide \(odd\); choose [^\n]*\.$',
      ):
        _config(positional='rope_like', d_model=6, num_heads=2)
      self.assertEqual(_config(positional='rope_like', d_model=8, num_heads=2).d_model, 8)


class AlibiTest(absltest.TestCase):
  def test_slopes_for_8_heads(self):
    # Press et al. 2022, section 3: 1/2, 1/4, ..., 1/256.
    np.testing.assert_allclose(positional.alibi_slopes(8), [2.0**-i for i in range(1, 9)])

  def test_slopes_for_12_heads(self):
    # The 8-head slopes, then every other slope of 16 heads (2^(-0.5 i)).
    want = [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    np.testing.assert_allclose(positional.alibi_slopes(12), want, rtol=1e-6)

  def test_bias_is_minus_slope_times_distance(self):
    bias_BxNxTxS = positional.alibi_bias(2, jnp.array([[5, 6]]), jnp.arange(7)[None])
    slopes = positional.alibi_slopes(2)  # 1/16, 1/256.
    np.testing.assert_allclose(slopes, [2.0**-4, 2.0**-8])
    self.assertAlmostEqual(float(bias_BxNxTxS[0, 0, 1, 2]), -(6 - 2) * slopes[0])
    self.assertAlmostEqual(float(bias_BxNxTxS[0, 1, 0, 5]), 0.0)

  def test_logits_do_not_depend_on_where_a_segment_starts(self):
    # ALiBi and RoPE see distances only: a segment read at positions
    # 100..100+T-1 gives the logits it gives at 0..T-1.
    for kind in ('alibi', 'rope'):
      model = models_test.get_model('transformer', positional=kind)
      params = models_test.get_params('transformer', positional=kind)
      tokens_BxT = models_test.random_tokens(7, (B, T))
      shifted_BxT = jnp.broadcast_to(100 + jnp.arange(T), (B, T))
      at_0, _ = model.apply(params, {}, tokens_BxT, train=False, rng=None)
      at_100, _ = model.apply(
        params, {}, tokens_BxT, train=False, rng=None, positions_BxT=shifted_BxT
      )
      np.testing.assert_allclose(at_0, at_100, rtol=1e-4, atol=1e-4, err_msg=kind)


class EmbeddingScaleTest(absltest.TestCase):
  def test_scaled_lookups_are_a_table_sqrt_d_larger(self):
    # Vaswani et al. 2017, section 3.4: the looked-up rows times sqrt(D). With
    # an untied head that is the unscaled model reading a table sqrt(D) larger.
    tokens_BxT = models_test.random_tokens(11, (B, T))
    for kind in ('learned', 'sinusoidal'):
      scaled = models_test.get_model('transformer', positional=kind, scale_embeddings=True)
      plain = models_test.get_model('transformer', positional=kind)
      params = models_test.get_params('transformer', positional=kind)
      grown = jax.tree.map(lambda a: a, params)
      grown['embed']['embedding'] = params['embed']['embedding'] * math.sqrt(D)
      got, _ = scaled.apply(params, {}, tokens_BxT, train=False, rng=None)
      want, _ = plain.apply(grown, {}, tokens_BxT, train=False, rng=None)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=kind)
      unscaled, _ = plain.apply(params, {}, tokens_BxT, train=False, rng=None)
      self.assertGreater(float(jnp.max(jnp.abs(got - unscaled))), 1e-2, kind)

  def test_a_tied_head_reads_the_table_unscaled(self):
    # The tied scaled model is the untied unscaled one whose table is sqrt(D)
    # larger and whose head is the original table, transposed.
    tokens_BxT = models_test.random_tokens(12, (B, T))
    tied = models_test.get_model('transformer', tie_embeddings=True, scale_embeddings=True)
    params = models_test.get_params('transformer', tie_embeddings=True)
    self.assertNotIn('head', params)
    table_VxD = params['embed']['embedding']
    untied = jax.tree.map(lambda a: a, params)
    untied['embed']['embedding'] = table_VxD * math.sqrt(D)
    untied['head'] = {'kernel': table_VxD.T}
    got, _ = tied.apply(params, {}, tokens_BxT, train=False, rng=None)
    want, _ = models_test.get_model('transformer').apply(
      untied, {}, tokens_BxT, train=False, rng=None
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


class MlpTest(parameterized.TestCase):
  @parameterized.parameters(*_MLP_FORMULAS)
  def test_mlp_against_shazeer_formula(self, name):
    activation, gated = _MLP_FORMULAS[name]
    c = _config(mlp=name, use_bias=False, dropout_rate=0.0)
    module = transformer.MLPS[name](c)
    x_BxTxD = np.random.default_rng(8).normal(size=(B, T, D)).astype(np.float32)
    params = module.init(jax.random.key(9), jnp.asarray(x_BxTxD), False)['params']
    self.assertEqual(set(params), {'fc', 'gate', 'proj'} if gated else {'fc', 'proj'})
    got = module.apply({'params': params}, jnp.asarray(x_BxTxD), False)
    W = params['gate' if gated else 'fc']['kernel']  # pylint: disable=invalid-name
    h = activation(x_BxTxD @ np.asarray(W, np.float64))
    if gated:
      h = h * (x_BxTxD @ np.asarray(params['fc']['kernel'], np.float64))
    want = h @ np.asarray(params['proj']['kernel'], np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)

  @parameterized.parameters('glu', 'bilinear', 'reglu', 'geglu', 'swiglu')
  def test_a_gated_row_at_two_thirds_width_has_the_ungated_parameters(self, name):
    d_ff = 48  # Shazeer: 3072 ungated, 2048 gated.

    def count(mlp, width):
      params = models_test.get_params('transformer', mlp=mlp, d_ff=width)
      return sum(x.size for x in jax.tree.leaves(params))

    ungated, gated = count('relu', d_ff), count(name, d_ff * 2 // 3)
    # The gated row's biases are 2/3 as many too; equal within rounding.
    self.assertLess(abs(gated - ungated) / ungated, 0.01)


class Bfloat16Test(parameterized.TestCase):
  @parameterized.parameters(
    dict(positional='rope'),
    dict(positional='alibi'),
    dict(positional='none', norm='rmsnorm', norm_position='post'),
    dict(mlp='swiglu'),
    dict(mlp='bilinear', attention='dot_product'),
  )
  def test_bfloat16_compute_stays_near_float32(self, **options):
    tokens_BxT = models_test.random_tokens(11, (B, T))
    params = models_test.get_params('transformer', **options)
    logits = {}
    for dtype in ('float32', 'bfloat16'):
      model = models_test.get_model('transformer', compute_dtype=dtype, **options)
      logits[dtype], _ = model.apply(params, {}, tokens_BxT, train=False, rng=None)
    self.assertEqual(logits['bfloat16'].dtype, jnp.float32)
    np.testing.assert_allclose(logits['bfloat16'], logits['float32'], atol=0.05)


if __name__ == '__main__':
  absltest.main()
