"""DP-SGD: the accountant's figures, per-sequence clipping and noise against a
reference written here, Poisson batches, and the config's refusals."""

import contextlib
import io
import json
import os

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from dp_accounting.pld import pld_privacy_accountant

from research import components
from research import config_checks
from research import losses
from research import train
from research.data import pipeline
from research.privacy import accounting
from research.privacy import dp_sgd
from research.privacy import sampler
from tests import models_test
from tests import test_util


def _independent_epsilon(q, sigma, steps, delta):
  """dp-accounting's PLD epsilon, built here from its own classes."""
  accountant = pld_privacy_accountant.PLDAccountant()
  accountant.compose(
    dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
  )
  return accountant.get_epsilon(delta)


def _dp_config(tmp, model='lstm', **privacy):
  config = test_util.tiny_config(tmp, model=model)
  with config.unlocked():
    config.privacy.enabled = True
    config.privacy.noise_multiplier = 1.0
    config.privacy.update(privacy)
    config.num_train_steps = 8
    config.log_every_steps = 4
    config.sample.num_tokens = 0
  return config


class AccountingTest(absltest.TestCase):
  def test_a_dp_run_logs_the_epsilon_dp_accounting_gives(self):
    tmp = self.create_tempdir().full_path
    config = _dp_config(tmp)
    workdir = os.path.join(tmp, 'work')
    with contextlib.redirect_stdout(io.StringIO()) as console:
      train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      logged = [json.loads(l) for l in f if '"train"' in l]
    self.assertEqual([r['step'] for r in logged], [4, 8])
    n = pipeline.num_sequences(_train_tokens(config), config.data.seq_len)
    q = config.data.batch_size / n
    self.assertAlmostEqual(logged[-1]['sampling_rate'], q)
    self.assertEqual(logged[-1]['delta'], sampler.default_delta(n))
    for record in logged:
      want = _independent_epsilon(q, 1.0, record['step'], record['delta'])
      self.assertAlmostEqual(record['epsilon'], want, places=9)
      self.assertGreater(record['rdp_epsilon'], record['epsilon'])  # RDP is looser.
    self.assertIn('DP-SGD spent epsilon %.4f' % logged[-1]['epsilon'], console.getvalue())
    self.assertRegex(console.getvalue(), r'step 4/8 .* \| eps \d\.\d{3} \(RDP \d\.\d{3}\)')

  def test_calibrated_noise_spends_the_target(self):
    sigma = accounting.calibrate_noise(0.01, 100, 1.0, 1e-5)
    self.assertAlmostEqual(_independent_epsilon(0.01, sigma, 100, 1e-5), 1.0, places=3)
    # The smallest such sigma: 0.1% less noise spends more than the target.
    self.assertGreater(_independent_epsilon(0.01, 0.999 * sigma, 100, 1e-5), 1.0)
    with self.assertRaisesRegex(ValueError, 'privacy.target_epsilon=0.0001 cannot be reached'):
      accounting.calibrate_noise(0.5, 2, 1e-4, 1e-5)


def _train_tokens(config):
  from research import data  # pylint: disable=g-import-not-at-top

  return len(data.load_corpus(config.data).splits['train'])


def dp_batch(model) -> losses.Batch:
  """Six rows of `models_test`'s tiny shapes for DP-SGD: four real rows and
  two all-padding ones (weights 0), random tokens."""
  rng = np.random.default_rng(3)
  rows, t = 6, models_test.T
  return losses.Batch(
    rows={
      'inputs': jnp.asarray(rng.integers(0, models_test.V, (rows, t)), jnp.int32),
      'targets': jnp.asarray(rng.integers(0, models_test.V, (rows, t)), jnp.int32),
      'weights': jnp.asarray(np.repeat([[1.0]] * 4 + [[0.0]] * 2, t, axis=1), jnp.float32),
      'reset': jnp.ones((rows,), bool),
      'carry': model.init_carry(rows),
    },
    # DP-SGD reads no batch denominator: each row's is the row scale.
    denominator=jnp.float32(np.nan),
  )


def clipped_sum_by_hand(objective, params, batch, clip_norm, denominator):
  """The reference: each real row (the first four of `dp_batch`) alone, its
  gradient clipped by hand, summed, over `denominator`; and the rows' norms."""
  t = batch.rows['inputs'].shape[1]
  want = jax.tree.map(jnp.zeros_like, params)
  row_grad = jax.jit(jax.grad(lambda p, row: objective.loss_fn(p, row, None)[0]))
  norms = []
  for i in range(4):
    row = losses.Batch(jax.tree.map(lambda x: x[i : i + 1], batch.rows), jnp.float32(t))
    g = row_grad(params, row)
    norms.append(np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g))))
    want = jax.tree.map(lambda w, x: w + x * min(1.0, clip_norm / norms[-1]), want, g)
  return jax.tree.map(lambda w: w / denominator, want), norms


def noiseless_dp_sum(objective, params, batch, microbatch_size, ghost_layers=()):
  """DP-SGD's (grads, aux) for `dp_batch`'s rows without noise: their clipped
  sum at C = 0.05 over 4 rows x T."""
  fn = dp_sgd.private(
    l2_clip_norm=0.05,
    noise_multiplier=0.0,
    denominator=4.0 * models_test.T,
    row_scale=float(models_test.T),
    microbatch_size=microbatch_size,
    ghost_layers=ghost_layers,
  )
  return jax.jit(lambda p, b: fn(objective.loss_fn, p, b, jax.random.key(0)))(params, batch)


def two_device_worker() -> dict:
  """On 2 (fake) devices, where DP-SGD takes its multi-device path (no row
  buckets, vmapped ghost norms, partitionable noise), with the batch's rows
  split over a 2-device mesh: each tiny model's clipped sum's largest error
  against `clipped_sum_by_hand` relative to the reference's largest entry, and
  the noise's spread where only noise is summed."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import sharding  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 2, jax.devices()
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 2, 'fsdp': 1, 'tensor': 1}))
  split = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))  # noqa: E731
  clip_norm, denominator = 0.05, 4.0 * models_test.T  # As in noiseless_dp_sum.
  result = {}
  for name in ('lstm', 'transformer'):
    model = models_test.get_model(name)
    params = models_test.get_params(name)
    objective = losses.make_objective(model, 'token_mean')
    batch = dp_batch(model)
    want, _ = clipped_sum_by_hand(objective, params, batch, clip_norm, denominator)
    sharded = losses.Batch(jax.tree.map(split, batch.rows), batch.denominator)
    for ghost in ('ghost', 'per-row'):
      for microbatch_size in (0, 2):
        layers = model.ghost_layers if ghost == 'ghost' else ()
        grads, aux = noiseless_dp_sum(objective, params, sharded, microbatch_size, layers)
        errors = [
          float(np.max(np.abs(np.asarray(g) - np.asarray(w))) / np.max(np.abs(np.asarray(w))))
          for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want))
        ]
        result[f'{name}/{ghost}/{microbatch_size}'] = {
          'relative_error': max(errors),
          'weight_sum': float(aux.weight_sum),
        }
  # Noise alone (every row padding), drawn where the devices hold halves of it.
  batch.rows['weights'] = jnp.zeros_like(batch.rows['weights'])
  fn = dp_sgd.private(
    l2_clip_norm=2.0, noise_multiplier=3.0, denominator=10.0, row_scale=1.0, microbatch_size=2
  )
  grads, _ = jax.jit(lambda p, b: fn(objective.loss_fn, p, b, jax.random.key(1)))(
    params, losses.Batch(jax.tree.map(split, batch.rows), batch.denominator)
  )
  values = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
  result['noise'] = {'std': float(np.std(values)), 'mean': float(np.mean(values))}
  return result


class ClippingTest(parameterized.TestCase):
  def _setup(self, name):
    model = models_test.get_model(name)
    params = models_test.get_params(name)
    objective = losses.make_objective(model, 'token_mean')
    return objective, params, dp_batch(model)

  @parameterized.parameters('lstm', 'transformer')
  def test_sum_of_clipped_per_sequence_gradients(self, name):
    objective, params, batch = self._setup(name)
    t, clip_norm, denominator = models_test.T, 0.05, 4.0 * models_test.T
    want, norms = clipped_sum_by_hand(objective, params, batch, clip_norm, denominator)
    self.assertGreater(min(norms), clip_norm)  # Every row is clipped here.
    # The whole batch at once; groups of 2, the last of padding alone (skipped).
    for microbatch_size in (0, 2):
      grads, aux = noiseless_dp_sum(objective, params, batch, microbatch_size)
      for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-7)
      self.assertEqual(float(aux.clipped_fraction), 1.0)
      self.assertEqual(float(aux.weight_sum), 4.0 * t)

  def test_noise_has_the_stated_spread(self):
    objective, params, batch = self._setup('transformer')
    # Padding only: noise alone.
    batch.rows['weights'] = jnp.zeros_like(batch.rows['weights'])
    fn = dp_sgd.private(
      l2_clip_norm=2.0, noise_multiplier=3.0, denominator=10.0, row_scale=1.0, microbatch_size=2
    )
    grads, _ = fn(objective.loss_fn, params, batch, jax.random.key(1))
    values = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
    self.assertGreater(values.size, 2000)
    self.assertAlmostEqual(float(np.std(values)), 3.0 * 2.0 / 10.0, delta=0.03)
    self.assertAlmostEqual(float(np.mean(values)), 0.0, delta=0.03)

  def test_two_devices_give_the_same_clipped_sum(self):
    result = test_util.on_fake_devices('tests.privacy_test', 'two_device_worker()', devices=2)
    cases = [
      f'{n}/{g}/{m}' for n in ('lstm', 'transformer') for g in ('ghost', 'per-row') for m in (0, 2)
    ]
    self.assertSameElements([k for k in result if k != 'noise'], cases)
    for case in cases:
      self.assertLess(result[case]['relative_error'], 2e-5, case)
      self.assertEqual(result[case]['weight_sum'], 4.0 * models_test.T, case)
    self.assertAlmostEqual(result['noise']['std'], 3.0 * 2.0 / 10.0, delta=0.03)
    self.assertAlmostEqual(result['noise']['mean'], 0.0, delta=0.03)


class PoissonTest(absltest.TestCase):
  def test_batches_sample_each_sequence_with_probability_q(self):
    tokens = np.arange(2001, dtype=np.int32)  # 200 sequences of 10.
    q, rows = 0.05, sampler.padded_rows(10, 0.05, 4)
    counts = []
    for step in range(400):
      batch = pipeline.poisson_batch(tokens, 10, q, rows, 0, step)
      real = batch['weights'].sum(1) > 0
      counts.append(int(real.sum()))
      self.assertTrue(np.all(real[: counts[-1]]))  # Sampled rows first.
      self.assertTrue(np.all(batch['inputs'][real] % 10 == np.arange(10)))  # Whole sequences.
      np.testing.assert_array_equal(batch['targets'][real], batch['inputs'][real] + 1)
    self.assertAlmostEqual(np.mean(counts), 10.0, delta=0.5)  # q N = 10.
    self.assertGreater(np.var(counts), 5.0)  # Binomial, not fixed.
    again = pipeline.poisson_batch(tokens, 10, q, rows, 0, 7)
    np.testing.assert_array_equal(
      again['inputs'], pipeline.poisson_batch(tokens, 10, q, rows, 0, 7)['inputs']
    )


class ConfigTest(absltest.TestCase):
  def test_bad_privacy_settings_name_the_key(self):
    config = _dp_config(self.create_tempdir().full_path)
    cases = (
      (dict(noise_multiplier=0.0), 'set exactly one of privacy.noise_multiplier'),
      (dict(target_epsilon=3.0), 'set exactly one of privacy.noise_multiplier'),
      (dict(l2_clip_norm=0.0), 'config.privacy.l2_clip_norm=0.0 must be positive'),
      (dict(delta=1.0), 'config.privacy.delta=1.0'),
      (dict(noise_multiplier=1e-6), r'config.privacy.noise_multiplier=1e-06 is below 0.1'),
    )
    for overrides, message in cases:
      bad = config.copy_and_resolve_references()
      with self.subTest(overrides=overrides), bad.unlocked():
        bad.privacy.update(overrides)
        with self.assertRaisesRegex(ValueError, message):
          config_checks.check(bad)
    bad = config.copy_and_resolve_references()
    with bad.unlocked():
      bad.optim.grad_accum_steps = 2
    with self.assertRaisesRegex(ValueError, 'does not combine with optim.grad_accum_steps=2'):
      config_checks.check(bad)

  def test_refusals_that_need_the_training_split_come_before_training(self):
    tmp = self.create_tempdir().full_path
    config = _dp_config(tmp, noise_multiplier=0.0, target_epsilon=1e-3)
    with config.unlocked():
      config.num_train_steps = 10_000
    with self.assertRaisesRegex(
      ValueError, r'config.privacy.target_epsilon=0.001 cannot be reached in 10000 steps'
    ):
      components.build(config)
    config = _dp_config(tmp)
    with config.unlocked():
      config.data.batch_size = 4096
    with self.assertRaisesRegex(ValueError, r'config.data.batch_size=4096 is the expected rows'):
      components.build(config)


if __name__ == '__main__':
  absltest.main()
