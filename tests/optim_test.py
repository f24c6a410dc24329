"""Learning-rate schedules and the optimizer chain."""

import re
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl.testing import absltest

from configs import common
from research import config_checks
from research import losses
from research import optim
from tests import test_util


def _optim_config(**overrides) -> ml_collections.ConfigDict:
  c = common.base_config().optim
  c.update(overrides)
  return c


class OptimTest(absltest.TestCase):
  def test_zaremba_schedule_is_constant_then_decays_per_epoch(self):
    schedule = optim.epoch_decay_schedule(
      1.0, steps_per_epoch=10, decay_after_epochs=4, decay_factor=0.5
    )
    got = [float(schedule(s)) for s in (0, 39, 40, 49, 50, 60, 129)]
    # Epochs 0-3 at 1.0; epoch 4 at 0.5; epoch 5 at 0.25; epoch 6 at 0.125.
    np.testing.assert_allclose(got, [1, 1, 0.5, 0.5, 0.25, 0.125, 2**-9])

  def test_cosine_schedule_warms_up_and_ends_at_the_minimum(self):
    c = _optim_config(learning_rate=1e-3, warmup_steps=100, min_learning_rate=1e-4)
    schedule = optim.make_schedule(c, num_train_steps=5000, steps_per_epoch=7)
    np.testing.assert_allclose(float(schedule(0)), 0.0)
    np.testing.assert_allclose(float(schedule(50)), 5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(100)), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(5000)), 1e-4, rtol=1e-5)
    self.assertGreater(float(schedule(2000)), float(schedule(3000)))

  def test_weight_decay_skips_vectors(self):
    c = _optim_config(
      learning_rate=0.0, warmup_steps=1, weight_decay=0.5, min_learning_rate=0.0, grad_clip_norm=0.0
    )
    # With a zero learning rate nothing moves; use a constant rate instead.
    tx = optim.make_optimizer(c, lambda _: 0.1)
    params = {'kernel': jnp.ones((3, 5)), 'bias': jnp.ones((5,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates['kernel'], -0.1 * 0.5 * np.ones((3, 5)), rtol=1e-6)
    np.testing.assert_array_equal(updates['bias'], np.zeros(5))
    # scan_layers: stacked (L, ...) biases and scales are still not decayed.
    stacked = {'blocks': {'kernel': jnp.ones((2, 3, 5)), 'scale': jnp.ones((2, 5))}}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, stacked), tx.init(stacked), stacked)
    np.testing.assert_allclose(updates['blocks']['kernel'], -0.05 * np.ones((2, 3, 5)), rtol=1e-6)
    np.testing.assert_array_equal(updates['blocks']['scale'], np.zeros((2, 5)))

  def test_clipping_bounds_the_update(self):
    c = _optim_config(name='sgd', grad_clip_norm=5.0)
    tx = optim.make_optimizer(c, lambda _: 1.0)
    params = {'w': jnp.zeros((4,))}
    grads = {'w': jnp.full((4,), 100.0)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.linalg.norm(updates['w']), 5.0, rtol=1e-5)

  def test_adamw_clips_the_gradient_before_adam(self):
    lr, clip, wd, b1, b2, eps = 0.3, 1.0, 0.1, 0.9, 0.99, 1e-8
    c = _optim_config(name='adamw', grad_clip_norm=clip, weight_decay=wd, b1=b1, b2=b2)
    tx = optim.make_optimizer(c, lambda _: lr)
    rng = np.random.default_rng(0)
    params = {'kernel': rng.normal(size=(7, 3)), 'bias': rng.normal(size=(3,))}
    # Global norms far above, below and above the clip: clipping first
    # changes what Adam's moments average, so the two orders part ways.
    grads = [
      {k: scale * rng.normal(size=p.shape) for k, p in params.items()}
      for scale in (30.0, 0.05, 5.0)
    ]

    def clipped(tree):
      norm = np.sqrt(sum(np.sum(x**2) for x in tree.values()))
      return {k: x * min(1.0, clip / norm) for k, x in tree.items()}

    def reference(clip_gradient_first):
      """Adam with decoupled decay on matrices, written out in numpy."""
      p = dict(params)
      m = {k: np.zeros_like(x) for k, x in p.items()}
      v = {k: np.zeros_like(x) for k, x in p.items()}
      for t, g in enumerate(grads, start=1):
        g = clipped(g) if clip_gradient_first else g
        u = {}
        for k in p:
          m[k] = b1 * m[k] + (1 - b1) * g[k]
          v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
          adam = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
          u[k] = -lr * (adam + (wd * p[k] if p[k].ndim >= 2 else 0.0))
        u = u if clip_gradient_first else clipped(u)
        p = {k: p[k] + u[k] for k in p}
      return p

    got = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(got)
    for g in grads:
      updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, got)
      got = optax.apply_updates(got, updates)
    want, wrong_order = reference(True), reference(False)
    for k in params:
      self.assertGreater(np.abs(want[k] - wrong_order[k]).max(), 0.05)
      np.testing.assert_allclose(
        got[k],
        want[k],
        rtol=1e-5,
        atol=1e-5,
        err_msg=f'{k}: is the update clipped instead of the gradient?',
      )

  def test_unknown_optimizer_lists_the_valid_ones(self):
    with self.assertRaisesRegex(
      ValueError, 'optim.name.*' + re.escape(str(sorted(optim.OPTIMIZERS)))
    ):
      optim.validate(_optim_config(name='adam'))
    with self.assertRaisesRegex(
      ValueError, 'optim.loss.*' + re.escape(str(sorted(losses.OBJECTIVES)))
    ):
      losses.make_objective(None, 'sum')

  def test_every_optimizer_builds_and_steps(self):
    params = {'kernel': jnp.ones((3, 5)), 'bias': jnp.ones((5,))}
    grads = jax.tree.map(jnp.ones_like, params)
    for name in optim.OPTIMIZERS:
      with self.subTest(name):
        c = _optim_config(name=name, learning_rate=0.1, warmup_steps=0)
        schedule = optim.make_schedule(c, num_train_steps=10, steps_per_epoch=5)
        # Muon asks the family which matrices it orthogonalises (Model.param_roles).
        roles = (('kernel', 'hidden'), ('bias', 'vector'))
        tx = optim.make_optimizer(c, schedule, param_roles=roles)
        updates, _ = tx.update(grads, tx.init(params), params)
        self.assertLess(float(updates['bias'][0]), 0.0)  # Against the gradient.

  def test_a_new_optimizer_is_one_registry_entry(self):
    # Lion (Chen et al. 2023) on the warmup-cosine schedule: named in the config,
    # checked by its rules, built by make_optimizer, nothing else touched.
    lion = optim.Optimizer(
      rule=lambda c, schedule: optax.lion(schedule, b1=c.b1, b2=c.b2),
      schedule=optim.OPTIMIZERS['adamw'].schedule,
      ends_at_min_learning_rate=True,
    )
    config = test_util.tiny_config(self.create_tempdir().full_path)
    with mock.patch.dict(optim.OPTIMIZERS, test_lion=lion), config.unlocked():
      config.optim.name = 'test_lion'
      config_checks.check(config)
      tx = optim.make_optimizer(config.optim, lambda _: 0.5)
      params = {'w': jnp.zeros(2)}
      updates, _ = tx.update({'w': jnp.array([2.0, -3.0])}, tx.init(params), params)
      np.testing.assert_allclose(updates['w'], [-0.5, 0.5])  # Lion's signed step.
      config.optim.min_learning_rate = 1.0  # Above the peak, where its schedule ends.
      with self.assertRaisesRegex(ValueError, 'min_learning_rate=1.0 is above'):
        config_checks.check(config)


if __name__ == '__main__':
  absltest.main()
