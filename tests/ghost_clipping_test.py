"""Ghost clipping (research/privacy/ghost.py): the norm formulas against
per-row gradients formed here, and DP-SGD's clipped sum with and without it."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from research import losses
from research.privacy import dp_sgd
from research.privacy import ghost
from tests import models_test
from tests import privacy_test


class FormulaTest(absltest.TestCase):
  def test_affine_norm_and_sum_match_the_row_gradients(self):
    rng = np.random.default_rng(0)
    x_MxNxD = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    dy_MxNxV = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
    scale_M = jnp.asarray([0.5, 1.0, 0.25], jnp.float32)
    # One row's gradient of y = x W + b: dW = x^T dy, db = sum_n dy_n.
    want_sum = {'kernel': 0.0, 'bias': 0.0}
    for i in range(3):
      dw, db = x_MxNxD[i].T @ dy_MxNxV[i], dy_MxNxV[i].sum(0)
      want = float(jnp.sum(dw**2) + jnp.sum(db**2))
      got = float(ghost.squared_norm('affine', x_MxNxD[i], dy_MxNxV[i]))
      self.assertAlmostEqual(got, want, delta=1e-4 * want)
      want_sum = {
        'kernel': want_sum['kernel'] + scale_M[i] * dw,
        'bias': want_sum['bias'] + scale_M[i] * db,
      }
    got_sum = ghost.add_clipped(
      'affine', {'kernel': jnp.zeros((4, 6)), 'bias': jnp.zeros(6)}, x_MxNxD, dy_MxNxV, scale_M
    )
    for key in ('kernel', 'bias'):
      np.testing.assert_allclose(got_sum[key], want_sum[key], rtol=1e-5, atol=1e-6)

  def test_lookup_norm_counts_repeated_ids_together(self):
    rng = np.random.default_rng(1)
    ids_MxN = jnp.asarray([[2, 0, 2, 5], [1, 1, 1, 1]], jnp.int32)  # Repeats within a row.
    dy_MxNxD = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
    scale_M = jnp.asarray([0.3, 2.0], jnp.float32)
    table = jnp.zeros((7, 3))
    want_sum = np.zeros((7, 3))
    for i in range(2):
      de = np.zeros((7, 3))  # dE: each position's dy added into its id's row.
      for n in range(4):
        de[int(ids_MxN[i, n])] += np.asarray(dy_MxNxD[i, n])
      got = float(ghost.squared_norm('lookup', ids_MxN[i], dy_MxNxD[i]))
      self.assertAlmostEqual(got, float(np.sum(de**2)), places=4)
      want_sum += float(scale_M[i]) * de
    got_sum = ghost.add_clipped('lookup', {'embedding': table}, ids_MxN, dy_MxNxD, scale_M)
    np.testing.assert_allclose(got_sum['embedding'], want_sum, rtol=1e-5, atol=1e-6)

  def test_unknown_kind_names_the_known_ones(self):
    with self.assertRaisesRegex(ValueError, r"'conv'.*\('affine', 'linear', 'lookup', 'lstm'\)"):
      ghost.squared_norm('conv', jnp.zeros((2, 2)), jnp.zeros((2, 2)))


def _clipped_sum(objective, layers):
  """DP-SGD's gradient without noise over 4 expected rows in groups of 2,
  jitted once; the clip norm is an argument."""
  t = models_test.T

  def clipped(params, batch, clip_norm):
    fn = dp_sgd.private(
      l2_clip_norm=clip_norm,
      noise_multiplier=0.0,
      denominator=4.0 * t,
      row_scale=float(t),
      microbatch_size=2,
      ghost_layers=layers,
    )
    return fn(objective.loss_fn, params, batch, jax.random.key(5))

  return jax.jit(clipped)


class DpSgdTest(parameterized.TestCase):
  def test_the_models_declare_the_layers_used_once(self):
    self.assertEqual(
      models_test.get_model('lstm').ghost_layers,
      (('embed', 'lookup'), ('lstm_0', 'lstm'), ('lstm_1', 'lstm'), ('softmax', 'affine')),
    )
    self.assertEqual(
      models_test.get_model('transformer').ghost_layers, (('embed', 'lookup'), ('head', 'linear'))
    )
    self.assertEqual(models_test.get_model('transformer', tie_embeddings=True).ghost_layers, ())

  @parameterized.parameters(('lstm', 0.3, 0.75), ('transformer', 2.5, 0.5))
  def test_ghost_clipping_gives_the_per_row_clipped_sum(self, name, middle, fraction):
    # With dropout, so each row's own key must reach both ways alike.
    model = models_test.get_model(name, dropout_rate=0.3)
    params = models_test.get_params(name, dropout_rate=0.3)
    objective = losses.make_objective(model, 'token_mean')
    batch = privacy_test.dp_batch(model)
    steps = [_clipped_sum(objective, ()), _clipped_sum(objective, model.ghost_layers)]
    # Every row clipped, some rows (the middle norm), none.
    for clip_norm, clipped in ((1e-3, 1.0), (middle, fraction), (1e3, 0.0)):
      results = [s(params, batch, jnp.float32(clip_norm)) for s in steps]
      (plain, plain_aux), (ghosted, ghost_aux) = results
      with self.subTest(clip_norm=clip_norm):
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(ghosted)):
          np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
        self.assertEqual(float(plain_aux.clipped_fraction), clipped)
        self.assertEqual(float(ghost_aux.clipped_fraction), clipped)
        self.assertEqual(float(ghost_aux.loss_sum), float(plain_aux.loss_sum))

  def test_row_buckets(self):
    # PTB's small LSTM: 20 rows expected, padded to 56, groups of 4.
    self.assertEqual(dp_sgd.row_buckets(56, 20.0, 4), (12, 16, 20, 24, 28, 32, 56))
    self.assertEqual(dp_sgd.row_buckets(6, 4.0, 2), (2, 4, 6))
    # At most 7 below the padded rows, spaced wider when the spread is wide.
    self.assertEqual(
      dp_sgd.row_buckets(2000, 1000.0, 4), (940, 964, 988, 1012, 1036, 1060, 1084, 2000)
    )

  def test_every_bucket_gives_the_per_row_clipped_sum(self):
    # The LSTM's layers are all ghost-clipped, so it takes the first S rows in one pass, S
    # picked from (2, 4, 6) by the last sampled row; the reference forms each row's gradient.
    model = models_test.get_model('lstm', dropout_rate=0.3)
    params = models_test.get_params('lstm', dropout_rate=0.3)
    objective = losses.make_objective(model, 'token_mean')
    t = models_test.T
    plain_step = _clipped_sum(objective, ())
    bucket_step = _clipped_sum(objective, model.ghost_layers)
    base = privacy_test.dp_batch(model)
    for sampled in ((1, 0, 0, 0, 0, 0), (1, 1, 1, 0, 0, 0), (1, 1, 0, 1, 1, 0), (1,) * 6):
      weights = jnp.repeat(jnp.asarray(sampled, jnp.float32)[:, None], t, axis=1)
      batch = base._replace(rows={**base.rows, 'weights': weights})
      clip = jnp.float32(0.3)
      (plain, plain_aux) = plain_step(params, batch, clip)
      (bucketed, bucket_aux) = bucket_step(params, batch, clip)
      with self.subTest(sampled=sampled):
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(bucketed)):
          np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
        self.assertEqual(float(bucket_aux.clipped_fraction), float(plain_aux.clipped_fraction))
        np.testing.assert_allclose(float(bucket_aux.loss_sum), float(plain_aux.loss_sum), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(plain_aux.carry), jax.tree.leaves(bucket_aux.carry)):
          np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)

  def test_a_layer_used_twice_is_refused(self):
    # The Transformer's tied head reads the embedding again through `attend`.
    model = models_test.get_model('transformer', tie_embeddings=True)
    objective = losses.make_objective(model, 'token_mean')
    fn = dp_sgd.private(
      l2_clip_norm=1.0,
      noise_multiplier=0.0,
      denominator=1.0,
      row_scale=1.0,
      ghost_layers=(('embed', 'lookup'),),
    )
    with self.assertRaisesRegex(ValueError, r"layer 'embed': the model also calls its 'attend'"):
      fn(
        objective.loss_fn,
        models_test.get_params('transformer'),
        privacy_test.dp_batch(model),
        jax.random.key(0),
      )


if __name__ == '__main__':
  absltest.main()
