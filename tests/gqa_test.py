"""Grouped-query attention (`model.num_kv_heads`): G key/value heads shared by
groups of R = N / G query heads (Ainslie et al. 2023; G = 1 is Shazeer 2019's
multi-query attention).

Against what is written here: with G = N the logits recorded before the option
existed; a grouped model against the multi-head model whose key/value heads are
the grouped one's repeated (the repeat written in this file) on both attention
paths, with RoPE, ALiBi and qk-norm; the decoding cache against the full pass;
the cache's bytes and the FLOPs per token against their formulas. The sharded
step on 8 fake devices: see the report of issue 30 (tests/multidevice_test.py
runs its meshes in a subprocess, too slow to repeat here).
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import shakespeare_char
from research import bench
from research import config_checks
from research import models
from research.models import attention
from research.models import transformer
from tests import models_test
from tests import qk_norm_test
from tests import speed_options_test
from tests import test_util

V, T, B = models_test.V, models_test.T, models_test.B
L, F = models_test.NUM_LAYERS, models_test.D_FF
N, D = 6, 24  # Six query heads of K = 4: groups of G = 1, 2, 3 or 6 key/value heads.
K = D // N


def _config(**overrides):
  return models_test.transformer_config(num_heads=N, d_model=D, **overrides)


def _model(length: int = T, **overrides) -> models.Model:
  return models.get_model(_config(**overrides), V, length)


def _params(groups: int, seed: int = 2, **overrides) -> dict:
  """Every parameter drawn afresh (gains about 1, the rest about 0, 0.3 wide),
  so that attention matters to the logits and a swapped head shows."""
  shapes = jax.eval_shape(_model(num_kv_heads=groups, **overrides).init, jax.random.key(0))
  return qk_norm_test._random_like(shapes, seed)  # pylint: disable=protected-access


def _repeated_kv(params: dict, groups: int) -> dict:
  """The multi-head parameters of the grouped model `params`: each qkv
  kernel's and bias's columns (G, R + 2, K), key/value head g's R queries then
  its key and value, become (N, 3, K) with head n = g R + r keeping its query
  and taking group g's key and value (g = n // R)."""
  r = N // groups

  def convert(columns):  # (..., G (R + 2) K) -> (..., 3 N K)
    lead = columns.shape[:-1]
    grouped = np.asarray(columns).reshape(*lead, groups, r + 2, K)
    q = grouped[..., :r, :].reshape(*lead, N, K)
    k = np.repeat(grouped[..., r, :], r, axis=-2)
    v = np.repeat(grouped[..., r + 1, :], r, axis=-2)
    return jnp.asarray(np.stack([q, k, v], axis=-2).reshape(*lead, 3 * N * K))

  return jax.tree_util.tree_map_with_path(
    lambda path, a: convert(a) if 'qkv' in jax.tree_util.keystr(path) else a, params
  )


def _logits(model, params, tokens_BxT):
  logits, _ = model.apply(params, {}, tokens_BxT, train=False, rng=None)
  return np.asarray(logits)


class SameAsBeforeTest(parameterized.TestCase):
  # Recorded with the code before model.num_kv_heads existed (bit-identical on
  # a 2-core AMD EPYC; the tolerance covers other CPUs' float32 rounding),
  # from models_test's initial parameters. Update only on an intended change.
  @parameterized.parameters(
    (
      'rope',
      'xla',
      [
        [-0.209692106, -0.0426571108, 0.00726275519, -0.160629392, -0.0484002382],
        [-0.0375909172, -0.0476437621, 0.0508121811, 0.0928011611, 0.145023048],
        [0.0478008911, 0.0217586607, 0.0375319012, 0.0941100046, -0.157695636],
        [0.134125546, 0.0767890662, 0.00905023701, -0.0895096138, -0.103737518],
        [-0.367842495, 0.0157292038, -0.118193962, 0.00247094012, -0.171091601],
        [0.0302882176, -0.122148812, 0.116468646, 0.0932633951, 0.000160340613],
        [0.0175815206, -0.0116599342, 0.108995751, 0.0792694539, 0.15214549],
      ],
    ),
    (
      'alibi',
      'dot_product',
      [
        [-0.209692106, -0.0426571108, 0.00726275519, -0.160629392, -0.0484002382],
        [-0.0402103439, -0.0461566858, 0.047530394, 0.0925055593, 0.144654274],
        [0.0435649008, 0.0264879819, 0.0362727344, 0.0920320004, -0.158548519],
        [0.131741464, 0.0809378698, 0.0139821637, -0.0935857296, -0.0982048139],
        [-0.363456368, 0.0192409772, -0.118114494, 0.000236036038, -0.17189081],
        [0.0342637077, -0.123068027, 0.118952617, 0.0923378244, 0.00382073456],
        [0.0277903024, -0.0162311532, 0.107892878, 0.0739155412, 0.156384841],
      ],
    ),
  )
  def test_as_many_kv_heads_as_heads_is_the_model_of_before(self, positional, kind, want):
    tokens_BxT = models_test.random_tokens(3, (B, T))
    options = dict(num_heads=N, d_model=D, positional=positional, attention=kind)
    params = models_test.get_params('transformer', **options)
    got = {}
    for groups in (0, N):  # 0 (the default) means N.
      model = models_test.get_model('transformer', num_kv_heads=groups, **options)
      shapes = jax.eval_shape(model.init, jax.random.key(0))
      self.assertEqual(shapes['block_0']['attn']['qkv']['kernel'].shape, (D, 3 * D))
      got[groups] = _logits(model, params, tokens_BxT)
    np.testing.assert_array_equal(got[0], got[N])
    np.testing.assert_allclose(got[0][1, :, :5], want, rtol=0, atol=2e-7)


class GroupedEqualsRepeatedTest(parameterized.TestCase):
  @parameterized.product(kind=('xla', 'dot_product'), positional=('rope', 'alibi'), groups=(1, 3))
  def test_grouped_model_is_multi_head_with_repeated_kv(self, kind, positional, groups):
    self._check(groups, T, attention=kind, positional=positional)

  @parameterized.parameters(('rope', 'layernorm'), ('alibi', 'none'))
  def test_heads_major_layout_and_qk_norm(self, positional, qk_norm):
    # The XLA path's (B, N, T, K) operands from this context on.
    self._check(2, attention.HEADS_MAJOR_MIN_CONTEXT, positional=positional, qk_norm=qk_norm)

  def _check(self, groups, length, **options):
    params = _params(groups, **options)
    qkv = params['block_0']['attn']['qkv']['kernel']
    self.assertEqual(qkv.shape, (D, (N + 2 * groups) * K))
    full = _repeated_kv(params, groups)
    tokens_BxT = models_test.random_tokens(4, (B, length))
    grouped_model = _model(length, num_kv_heads=groups, **options)
    mha_model = _model(length, num_kv_heads=0, **options)
    want = _logits(mha_model, full, tokens_BxT)
    np.testing.assert_allclose(
      _logits(grouped_model, params, tokens_BxT), want, rtol=1e-5, atol=1e-5
    )
    # The attention-logit statistic reads the same logits.
    got_max = grouped_model.stats(params, {}, tokens_BxT)['attn_logit_max']
    want_max = mha_model.stats(full, {}, tokens_BxT)['attn_logit_max']
    np.testing.assert_allclose(got_max, want_max, rtol=1e-5)
    # The test can fail: with each query head given the next group's keys and
    # values (G > 1), or the one group's keys doubled (G = 1), the logits move.
    wrong = jax.tree.map(np.array, full)
    for i in range(L):
      kernel = wrong[f'block_{i}']['attn']['qkv']['kernel'].reshape(D, N, 3, K)
      if groups > 1:
        kernel[:, :, 1:] = np.roll(kernel[:, :, 1:], N // groups, axis=1)
      else:
        kernel[:, :, 1] *= 2
    self.assertFalse(np.allclose(_logits(mha_model, wrong, tokens_BxT), want, atol=1e-3))


_DECODE_CASES = (
  dict(groups=1, positional='rope', attention='xla'),
  dict(groups=3, positional='alibi', attention='dot_product'),
  dict(groups=3, positional='learned', attention='xla', qk_norm='rmsnorm'),
  dict(groups=1, positional='alibi', attention='xla', scan_layers=True, remat=True),
)


class CacheTest(parameterized.TestCase):
  @parameterized.parameters(*_DECODE_CASES)
  def test_cached_decoding_matches_the_full_pass(self, groups, **options):
    model = _model(num_kv_heads=groups, **options)
    params = _params(groups, seed=5, **options)
    tokens_BxT = models_test.random_tokens(6, (B, T))
    full_BxTxV = _logits(model, params, tokens_BxT)
    decode = jax.jit(model.decode)
    for sizes in ((1,) * T, (3, 1, 1, 1, 1)):  # Token by token; a prompt, then tokens.
      with self.subTest(sizes=sizes):
        cache, start, pieces = model.init_cache(B), 0, []
        for size in sizes:
          positions_BxT = jnp.broadcast_to(jnp.arange(start, start + size), (B, size))
          logits, cache = decode(params, cache, tokens_BxT[:, start : start + size], positions_BxT)
          pieces.append(logits)
          start += size
        np.testing.assert_allclose(
          jnp.concatenate(pieces, 1), full_BxTxV[:, :start], atol=1e-5, rtol=1e-5
        )

  def test_cache_holds_g_heads_and_is_n_over_g_times_smaller(self):
    for dtype, itemsize in (('float32', 4), ('bfloat16', 2)):
      mha = _model(num_kv_heads=0, compute_dtype=dtype).init_cache(B)
      mha_bytes = sum(a.nbytes for a in jax.tree.leaves(mha))
      for groups in (1, 2, 3, 6):
        with self.subTest(dtype=dtype, groups=groups):
          cache = _model(num_kv_heads=groups, compute_dtype=dtype).init_cache(B)
          for leaf in (cache['k'], cache['v']):
            self.assertEqual(leaf.shape, (L, B, T, groups, K))  # Context T here.
          cache_bytes = sum(a.nbytes for a in jax.tree.leaves(cache))
          self.assertEqual(cache_bytes, 2 * L * B * T * groups * K * itemsize)
          self.assertEqual(cache_bytes * (N // groups), mha_bytes)

  def test_generation_benchmark_reports_the_cache_bytes(self):
    config = test_util.tiny_config(self.create_tempdir().full_path, model='transformer')
    config.model.num_kv_heads = 1  # Multi-query: one key/value head of the tiny model's two.
    figures = bench.generation(config, 'tiny', repeats=1)
    c = config.model
    # Keys and values of every layer and position of one sample, float32.
    want = 2 * c.num_layers * config.data.seq_len * 1 * (c.d_model // c.num_heads) * 4
    self.assertEqual(figures['cache_bytes'], want)
    self.assertGreater(figures['cached_tokens_per_s'], 0)


class ModelOptionsTest(parameterized.TestCase):
  def test_scanned_and_rematerialised_layers_compute_the_same_model(self):
    options = dict(positional='rope', qk_norm='layernorm')
    params = _params(2, seed=7, **options)
    tokens_BxT = models_test.random_tokens(8, (B, T))
    want = _logits(_model(num_kv_heads=2, **options), params, tokens_BxT)
    for scan, remat in ((True, False), (False, True), (True, True)):
      with self.subTest(scan_layers=scan, remat=remat):
        model = _model(num_kv_heads=2, scan_layers=scan, remat=remat, **options)
        p = speed_options_test.stack_blocks(params, L) if scan else params
        np.testing.assert_allclose(_logits(model, p, tokens_BxT), want, rtol=1e-5, atol=1e-6)

  @parameterized.parameters('xla', 'dot_product')
  def test_bfloat16_forward_and_decoding_run(self, kind):
    options = dict(attention=kind, positional='rope')
    params = _params(2, seed=9, **options)
    tokens_BxT = models_test.random_tokens(9, (B, T))
    logits = {}
    for dtype in ('float32', 'bfloat16'):
      model = _model(num_kv_heads=2, compute_dtype=dtype, **options)
      logits[dtype] = _logits(model, params, tokens_BxT)
    np.testing.assert_allclose(logits['bfloat16'], logits['float32'], atol=0.1)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    cached, _ = model.decode(params, model.init_cache(B), tokens_BxT, positions)
    self.assertTrue(np.isfinite(np.asarray(cached)).all())

  def test_attention_dropout_trains(self):
    model = _model(num_kv_heads=3, dropout_rate=0.3)
    params = _params(3, seed=10)
    tokens_BxT = models_test.random_tokens(10, (B, T))

    def loss(params, rng):
      logits, _ = model.apply(params, {}, tokens_BxT, train=True, rng=rng)
      return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    a, grads = jax.value_and_grad(loss)(params, jax.random.key(1))
    b = loss(params, jax.random.key(2))
    self.assertNotEqual(float(a), float(b))  # The dropout keys matter.
    self.assertTrue(all(np.isfinite(g).all() for g in jax.tree.leaves(grads)))

  def test_flops_per_token_count_the_smaller_projection(self):
    for groups in (1, 2, 6):
      for scan in (False, True):
        with self.subTest(groups=groups, scan_layers=scan):
          model = _model(num_kv_heads=groups, scan_layers=scan)
          flops = model.flops_per_token(jax.eval_shape(model.init, jax.random.key(0)))
          # 6 x the matmul weights (qkv D x (N + 2G)K, out D x D, MLP D x F and F x D per
          # block; the untied head D x V), plus 12 L P D for QK^T and AV: every query head
          # still scores every key (PaLM, Chowdhery et al. 2022, App. B).
          per_block = D * (N + 2 * groups) * K + D * D + 2 * D * F
          want = 6 * (L * per_block + D * V) + 12 * L * T * D
          self.assertEqual(flops, want)

  def test_mup_reads_the_qkv_kernel_as_hidden(self):
    # Its fan-in is D whatever G: the rate factor base / D, as multi-head's.
    options = dict(num_kv_heads=2, parametrization='mup', mup_base_width=12)
    model = _model(**options)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    rates = model.rate_multipliers(shapes)
    self.assertEqual(rates['block_0']['attn']['qkv']['kernel'], 12 / D)


class RefusedTest(parameterized.TestCase):
  @parameterized.parameters(4, 5, 7, 12, 1.5, 2.0)
  def test_a_non_divisor_is_refused_naming_the_key_and_the_choices(self, value):
    # Floats straight into the family's config (a ConfigDict already refuses
    # them for an int key).
    fields = {k: v for k, v in _config().items() if k != 'name'}
    with self.assertRaisesRegex(
      ValueError,
      rf'^config\.model\.num_kv_heads={value!r} must be one of \[0, 1, 2, 3, 6\] \(0: as many '
      r'as model\.num_heads=6; .*set --config\.model\.num_kv_heads=',
    ):
      transformer.Config(**dict(fields, num_kv_heads=value))

  def test_negative_is_refused_by_its_rule(self):
    with self.assertRaisesRegex(ValueError, r'^config\.model\.num_kv_heads=-1 must be at least 0'):
      models.get_config(_config(num_kv_heads=-1))

  def test_config_checks_refuse_it_for_the_cpu_recipe(self):
    config = shakespeare_char.get_config('cpu')  # Four heads.
    config.model.num_kv_heads = 3
    with self.assertRaisesRegex(ValueError, r'num_kv_heads=3 must be one of \[0, 1, 2, 4\]'):
      config_checks.check(config)


if __name__ == '__main__':
  absltest.main()
