"""qk-norm (`model.qk_norm`) and the output-logit soft-cap (`model.logit_softcap`)
against formulas written here: the attention block computed by hand (norms,
RoPE, softmax), c * tanh(x / c), and the model with both options at their
defaults giving the logits recorded before the options existed. Then what
they must work with: the decoding cache, scan/remat, bf16 and the partition
rules. The 8-device sharded step with both options on is one of
tests/multidevice_test.py's cases."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from research import models
from research import sharding
from research.models import attention
from research.models import transformer_options
from tests import models_test
from tests import speed_options_test

V, T, B = models_test.V, models_test.T, models_test.B
# GPT-2's epsilon, as the repository's norms (tests/norms_test.py checks it there).
EPSILON = 1e-5
ROPE_BASE = 10000.0  # Su et al. 2021.


def _layernorm(x, p):
  """Ba et al. 2016 over the last axis: (x - mean) / sqrt(var + eps) * g + b."""
  centred = x - x.mean(-1, keepdims=True)
  out = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + EPSILON) * p['scale']
  return out + p['bias'] if 'bias' in p else out


def _rmsnorm(x, p):
  """Zhang and Sennrich 2019 over the last axis: x / sqrt(mean(x^2) + eps) * g."""
  return x / np.sqrt((x**2).mean(-1, keepdims=True) + EPSILON) * p['scale']


_NORM_FORMULAS = {'none': None, 'layernorm': _layernorm, 'rmsnorm': _rmsnorm}


def _rope(x_BxTxNxK):
  """Features (2i, 2i+1) at position t turned by t * base^(-2i/K) (RoFormer eq. 34)."""
  K = x_BxTxNxK.shape[-1]  # pylint: disable=invalid-name
  angle_TxH = np.arange(x_BxTxNxK.shape[1])[:, None] * ROPE_BASE ** (-np.arange(0, K, 2) / K)
  cos, sin = np.cos(angle_TxH)[None, :, None], np.sin(angle_TxH)[None, :, None]
  even, odd = x_BxTxNxK[..., 0::2], x_BxTxNxK[..., 1::2]
  out = np.empty_like(x_BxTxNxK)
  out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
  return out


def _attention(p, x_BxTxD, num_heads, qk_norm, rotate, norm_first=True):
  """The attention block by hand, in float64; `norm_first=False` is the
  wrong order (rotate, then normalise), for the test to show it differs."""
  x_BxTxD = np.asarray(x_BxTxD, np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  b_, t_, d_ = x_BxTxD.shape
  k_ = d_ // num_heads
  qkv = (x_BxTxD @ p['qkv']['kernel'] + p['qkv']['bias']).reshape(b_, t_, num_heads, 3, k_)
  q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
  norm = _NORM_FORMULAS[qk_norm]

  def normalise(q, k):
    return (norm(q, p['q_norm']), norm(k, p['k_norm'])) if norm else (q, k)

  def turn(q, k):
    return (_rope(q), _rope(k)) if rotate else (q, k)

  q, k = turn(*normalise(q, k)) if norm_first else normalise(*turn(q, k))
  logits = np.einsum('btnk,bsnk->bnts', q, k) / math.sqrt(k_)
  logits = np.where(np.tril(np.ones((t_, t_), bool)), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum('bnts,bsnk->btnk', probs, v).reshape(b_, t_, d_)
  return out @ p['out']['kernel'] + p['out']['bias']


def _random_like(params, seed):
  """Every leaf drawn afresh: gains about 1 (each feature its own), other
  leaves about 0, so a missing, swapped or shared parameter shows."""
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  drawn = [
    (
      1 + 0.5 * rng.normal(size=l.shape)
      if path[-1].key == 'scale'
      else 0.3 * rng.normal(size=l.shape)
    )
    for path, l in leaves
  ]
  return jax.tree.unflatten(tree, [jnp.asarray(d, jnp.float32) for d in drawn])


class QkNormFormulaTest(parameterized.TestCase):
  @parameterized.product(
    qk_norm=('none', 'layernorm', 'rmsnorm'),
    kind=('xla', 'dot_product'),
    positions=(('learned', 14), ('rope', 20)),  # (kind, d_model); RoPE needs an even head.
    length=(T, attention.HEADS_MAJOR_MIN_CONTEXT),  # Both layouts of the XLA path.
  )
  def test_attention_block_against_the_formula(self, qk_norm, kind, positions, length):
    positional, d_model = positions
    config = models.get_config(
      models_test.transformer_config(
        d_model=d_model, num_heads=2, qk_norm=qk_norm, attention=kind, positional=positional
      )
    )
    module = attention.CausalSelfAttention(config)
    x_BxTxD = np.random.default_rng(1).normal(size=(2, length, d_model)).astype(np.float32)
    shapes = module.init(jax.random.key(0), x_BxTxD, False)['params']
    params = _random_like(shapes, seed=2)
    got, _ = module.apply({'params': params}, x_BxTxD, False)
    rotate = positional == 'rope'
    want = _attention(params, x_BxTxD, 2, qk_norm, rotate)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if qk_norm != 'none':
      # One gain (and, for layernorm with use_bias, one bias) of head_dim per
      # layer for the queries and one for the keys, shared by the two heads.
      want_keys = {'scale', 'bias'} if qk_norm == 'layernorm' else {'scale'}
      for site in ('q_norm', 'k_norm'):
        self.assertEqual(set(shapes[site]), want_keys)
        for leaf in shapes[site].values():
          self.assertEqual(leaf.shape, (d_model // 2,))
      # The test can fail: without the norm it is another function.
      self.assertFalse(np.allclose(_attention(params, x_BxTxD, 2, 'none', rotate), want, atol=1e-2))
    if qk_norm != 'none' and rotate:
      # Normalised, then rotated: per-feature gains do not commute with the turn.
      wrong = _attention(params, x_BxTxD, 2, qk_norm, rotate, norm_first=False)
      self.assertFalse(np.allclose(wrong, want, atol=1e-2), 'the order cannot be told apart')

  def test_layernorm_has_no_bias_without_use_bias(self):
    config = models.get_config(models_test.transformer_config(qk_norm='layernorm', use_bias=False))
    module = attention.CausalSelfAttention(config)
    shapes = module.init(jax.random.key(0), np.zeros((1, 3, models_test.D), np.float32), False)
    self.assertEqual(set(shapes['params']['q_norm']), {'scale'})

  def test_none_gives_the_logits_of_before_the_option(self):
    # Recorded with the code before model.qk_norm and model.logit_softcap
    # existed (bit-identical on a 2-core AMD EPYC); the tolerance covers other
    # CPUs' float32 rounding. Update only on an intended change of the model.
    want = [
      [0.00918619, -0.01053886, -0.05577863, 0.00848021, 0.06813922],
      [0.06738828, 0.0070465, 0.04438786, -0.01170167, 0.01504351],
      [0.07308284, 0.03592711, -0.00114881, -0.09317465, 0.05341857],
      [0.01575397, 0.00484911, -0.03168637, 0.05143524, -0.01152941],
      [-0.04604478, 0.02881113, -0.05263, -0.00367969, -0.08425757],
      [0.03738386, 0.0548147, 0.05483834, -0.0744108, -0.02823127],
      [0.10541528, 0.03322546, 0.03312974, -0.0875001, -0.00380143],
    ]
    config = models_test.transformer_config()
    self.assertEqual((config.qk_norm, config.logit_softcap), ('none', 0.0))
    model, params = models_test.get_model('transformer'), models_test.get_params('transformer')
    logits, _ = model.apply(params, {}, models_test.random_tokens(3, (B, T)), train=False, rng=None)
    np.testing.assert_allclose(np.asarray(logits)[1, :, :5], want, rtol=0, atol=2e-7)
    self.assertFalse(any('_norm' in jax.tree_util.keystr(p) for p, _ in _leaves(params)))


def _leaves(params):
  return jax.tree_util.tree_flatten_with_path(params)[0]


class QkNormRegistryTest(absltest.TestCase):
  def test_the_choices_are_none_and_every_norm(self):
    self.assertEqual(set(transformer_options.QK_NORMS), {'none', *transformer_options.NORMS})
    # A norm registered later is a qk-norm too (one list per name).
    transformer_options.NORMS['toy'] = transformer_options.rmsnorm
    self.addCleanup(transformer_options.NORMS.pop, 'toy')
    models.get_config(models_test.transformer_config(qk_norm='toy'))

  def test_bad_values_are_refused_naming_the_key(self):
    with self.assertRaisesRegex(
      ValueError,
      r"^config\.model\.qk_norm='l2' must be one of the known qk-norms: "
      r"\['layernorm', 'none', 'rmsnorm'\]; set --config\.model\.qk_norm=",
    ):
      models.get_config(models_test.transformer_config(qk_norm='l2'))
    for value in (-1.0, float('nan'), float('inf')):
      with self.subTest(value=value):
        with self.assertRaisesRegex(
          ValueError, r'^config\.model\.logit_softcap=.* must be at least 0; set'
        ):
          models.get_config(models_test.transformer_config(logit_softcap=value))


def _perturbed_params(**overrides):
  """The model's initial parameters with the qk-norms' gains drawn about 1,
  so that a normalisation skipped anywhere changes the logits."""
  params = models_test.get_params('transformer', **overrides)
  rng = np.random.default_rng(5)
  return jax.tree_util.tree_map_with_path(
    lambda path, a: (
      a + 0.5 * rng.normal(size=a.shape).astype(np.float32)
      if '_norm' in jax.tree_util.keystr(path)
      else a
    ),
    params,
  )


# Decoding, in every combination the options must survive (layernorm by default).
_DECODE_CASES = (
  dict(positional='rope'),
  dict(positional='learned'),
  dict(positional='rope', logit_softcap=0.05),
  dict(positional='alibi', attention='dot_product', qk_norm='rmsnorm'),
  dict(positional='rope', scan_layers=True, remat=True),
)


class QkNormModelTest(parameterized.TestCase):
  @parameterized.parameters(*_DECODE_CASES)
  def test_cached_decoding_matches_the_full_pass(self, **options):
    options = {'qk_norm': 'layernorm', **options}
    model = models_test.get_model('transformer', **options)
    params = _perturbed_params(**options)
    tokens_BxT = models_test.random_tokens(4, (B, T))
    full_BxTxV, _ = model.apply(params, {}, tokens_BxT, train=False, rng=None)
    decode = jax.jit(model.decode)
    cache, start, pieces = model.init_cache(B), 0, []
    for size in (3, 1, 1, 1, 1):  # A prompt, then a token per call.
      positions_BxT = jnp.broadcast_to(jnp.arange(start, start + size), (B, size))
      logits, cache = decode(params, cache, tokens_BxT[:, start : start + size], positions_BxT)
      pieces.append(logits)
      start += size
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full_BxTxV, atol=1e-5, rtol=1e-5)

  def test_scanned_and_rematerialised_layers_compute_the_same_model(self):
    params = _perturbed_params(qk_norm='layernorm', positional='rope')
    tokens_BxT = models_test.random_tokens(6, (B, T))
    logits = {}
    for scan in (False, True):
      model = models_test.get_model(
        'transformer', qk_norm='layernorm', positional='rope', scan_layers=scan, remat=scan
      )
      p = speed_options_test.stack_blocks(params, models_test.NUM_LAYERS) if scan else params
      logits[scan], _ = model.apply(p, {}, tokens_BxT, train=False, rng=None)
    np.testing.assert_allclose(logits[True], logits[False], rtol=1e-5, atol=1e-6)

  def test_the_gains_are_trained(self):
    model = models_test.get_model('transformer', qk_norm='rmsnorm')
    params = models_test.get_params('transformer', qk_norm='rmsnorm')
    tokens_BxT = models_test.random_tokens(7, (B, T))

    def loss(params):
      logits, _ = model.apply(params, {}, tokens_BxT, train=False, rng=None)
      return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = jax.grad(loss)(params)
    for site in ('q_norm', 'k_norm'):
      self.assertGreater(float(jnp.abs(grads['block_1']['attn'][site]['scale']).max()), 0)

  @parameterized.product(qk_norm=('layernorm', 'rmsnorm'), kind=('xla', 'dot_product'))
  def test_bfloat16_forward_and_decoding_run(self, qk_norm, kind):
    options = dict(qk_norm=qk_norm, attention=kind, positional='rope', logit_softcap=1.0)
    params = _perturbed_params(**options)
    tokens_BxT = models_test.random_tokens(8, (B, T))
    logits = {}
    for dtype in ('float32', 'bfloat16'):
      model = models_test.get_model('transformer', compute_dtype=dtype, **options)
      logits[dtype], _ = model.apply(params, {}, tokens_BxT, train=False, rng=None)
    self.assertEqual(logits['bfloat16'].dtype, jnp.float32)
    np.testing.assert_allclose(logits['bfloat16'], logits['float32'], atol=0.05)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    cached, _ = model.decode(params, model.init_cache(B), tokens_BxT, positions)
    self.assertTrue(np.isfinite(np.asarray(cached)).all())

  def test_every_parameter_has_a_partition_rule(self):
    mesh = sharding.make_mesh(
      ml_collections.ConfigDict({'data': 1, 'fsdp': 1, 'tensor': 1}), jax.devices()[:1]
    )
    for name in transformer_options.QK_NORMS:
      for scan in (False, True):
        with self.subTest(qk_norm=name, scan_layers=scan):
          model = models.get_model(
            models_test.transformer_config(qk_norm=name, scan_layers=scan), V, T
          )
          params = jax.eval_shape(model.init, jax.random.key(0))
          specs = sharding.param_shardings(params, mesh, model.partition_rules)
          for path, spec in _leaves(specs):
            if '_norm' in jax.tree_util.keystr(path):  # Whole, on every device.
              self.assertEqual(tuple(spec.spec), (None,) if scan else ())

  def test_flops_per_token_do_not_count_the_norms(self):
    # As ln_1, ln_2 and ln_f: elementwise, outside the 6 N of the matmuls.
    for scan in (False, True):
      flops = {}
      for name in ('none', 'layernorm'):
        model = models.get_model(
          models_test.transformer_config(qk_norm=name, scan_layers=scan), V, T
        )
        flops[name] = model.flops_per_token(jax.eval_shape(model.init, jax.random.key(0)))
      self.assertEqual(flops['layernorm'], flops['none'])


class SoftcapTest(absltest.TestCase):
  def _logits(self, params, cap):
    model = models_test.get_model('transformer', logit_softcap=cap)
    logits, _ = model.apply(params, {}, models_test.random_tokens(9, (B, T)), train=False, rng=None)
    return np.asarray(logits)

  def test_logits_are_c_tanh_of_logits_over_c(self):
    params = models_test.get_params('transformer')
    plain = self._logits(params, 0.0)
    cap = 0.5 * float(np.abs(plain).max())  # Half the largest: the cap bends them.
    capped = self._logits(params, cap)
    want = cap * np.tanh(plain.astype(np.float64) / cap)
    np.testing.assert_allclose(capped, want, rtol=1e-5, atol=1e-7)
    self.assertEqual(capped.dtype, np.float32)
    self.assertLessEqual(np.abs(capped).max(), cap)
    self.assertFalse(np.allclose(capped, plain, atol=0.1 * cap))  # It did bend them.

  def test_huge_logits_never_exceed_the_cap(self):
    params = models_test.get_params('transformer')
    params = dict(params, head={'kernel': params['head']['kernel'] * 1e6})
    plain, capped = self._logits(params, 0.0), self._logits(params, 30.0)
    self.assertGreater(np.abs(plain).max(), 1e3)
    self.assertTrue(np.isfinite(capped).all())
    self.assertLessEqual(np.abs(capped).max(), 30.0)


if __name__ == '__main__':
  absltest.main()
