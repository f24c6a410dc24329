"""The stability options of optim: PaLM's z-loss and the step's `log_z`
(research/losses.py), and the weight-decay modes (research/optim.py), each
against a formula written out here."""

import contextlib
import functools
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

from configs import common
from research import components
from research import config_checks
from research import gradients
from research import losses
from research import optim
from research import train
from research.privacy import dp_sgd
from tests import models_test
from tests import test_util

# Distinct sizes: B rows, T steps, V vocabulary.
_B, _T, _V = 7, 11, 13


def _fixed_logits_model():
  """A model whose logits are its parameter 'logits' (B x T x V), whatever it reads."""

  def apply(params, carry, inputs_BxT, *, train, rng, positions_BxT=None):
    del inputs_BxT, train, rng, positions_BxT
    return params['logits'], carry

  return test_util.apply_only_model(apply)


def _rows(seed, b=_B, t=_T):
  """Random tokens; uneven padding and one weight of 0.5, so weights matter."""
  rng = np.random.default_rng(seed)
  weights_BxT = (np.arange(t)[None, :] < t - (np.arange(b)[:, None] * 3) % 5).astype(np.float32)
  weights_BxT[0, 1] = 0.5
  return {
    'inputs': jnp.asarray(rng.integers(0, _V, (b, t)), jnp.int32),
    'targets': jnp.asarray(rng.integers(0, _V, (b, t)), jnp.int32),
    'weights': jnp.asarray(weights_BxT),
    'reset': jnp.ones((b,), bool),
    'carry': {},
  }


def _logits(seed):
  # Shifted well away from 0, so z (and the z-loss's pull on it) is large.
  return np.random.default_rng(seed).normal(size=(_B, _T, _V)).astype(np.float32) * 2 + 3


def _log_z(logits_BxTxV):
  """log sum_v exp(logit_v) in float64 numpy."""
  x = np.asarray(logits_BxTxV, np.float64)
  peak = x.max(-1)
  return peak + np.log(np.exp(x - peak[..., None]).sum(-1))


def _z_loss(logits_BxTxV, weights_BxT, coefficient, denominator):
  """PaLM's term as the docs write it: coefficient * sum_t w_t z_t^2 / denominator."""
  return (
    coefficient
    * np.sum(np.asarray(weights_BxT, np.float64) * _log_z(logits_BxTxV) ** 2)
    / (denominator)
  )


class ZLossTest(parameterized.TestCase):
  @parameterized.parameters(('token_mean', False), ('sequence_sum', False), ('token_mean', True))
  def test_gradient_is_the_finite_difference_of_the_formula(self, name, distilled):
    coefficient, rows = 0.05, _rows(1)
    distill = losses.Distillation(_fixed_logits_model(), 0.3, 2.0) if distilled else None
    teacher = {'logits': jnp.asarray(_logits(9))} if distilled else None
    logits = _logits(2)

    def value_and_grad(z_loss):
      objective = losses.make_objective(_fixed_logits_model(), name, distill, z_loss=z_loss)
      batch = losses.Batch(rows, objective.denominator(rows))
      fn = jax.value_and_grad(objective.with_teacher(teacher), has_aux=True)
      (value, aux), grads = fn({'logits': jnp.asarray(logits)}, batch, None)
      return float(value), aux, np.asarray(grads['logits'], np.float64), float(batch.denominator)

    with_value, with_aux, with_grad, denominator = value_and_grad(coefficient)
    off_value, off_aux, off_grad, _ = value_and_grad(0.0)
    weights = np.asarray(rows['weights'])
    # The value gains the term; the reported data loss does not.
    want = _z_loss(logits, weights, coefficient, denominator)
    np.testing.assert_allclose(with_value - off_value, want, rtol=1e-4)
    self.assertEqual(float(with_aux.loss_sum), float(off_aux.loss_sum))
    # Central differences of the formula in float64, every coordinate.
    eps, fd = 1e-4, np.zeros(logits.shape)
    for index in np.ndindex(*logits.shape):
      up, down = logits.astype(np.float64), logits.astype(np.float64)
      up[index] += eps
      down[index] -= eps
      fd[index] = (
        _z_loss(up, weights, coefficient, denominator)
        - _z_loss(down, weights, coefficient, denominator)
      ) / (2 * eps)
    self.assertGreater(np.abs(fd).max(), 1e-3)  # A gradient the check can see.
    np.testing.assert_allclose(with_grad - off_grad, fd, rtol=2e-3, atol=2e-6)

  @parameterized.parameters('lstm', 'transformer')
  def test_off_is_todays_loss_and_gradient_exactly(self, family):
    model, params = models_test.get_model(family), models_test.get_params(family)
    rows = _rows(3, b=models_test.B, t=models_test.T)
    rows['carry'] = model.init_carry(models_test.B)
    objective = losses.make_objective(model, 'token_mean')
    batch = losses.Batch(rows, objective.denominator(rows))

    def today(params, batch, rng):  # The loss before the z-loss existed.
      logits_BxTxV, _ = model.apply(
        params, batch.rows['carry'], batch.rows['inputs'], train=True, rng=rng
      )
      logits_BxTxV = logits_BxTxV.astype(jnp.float32)
      target_BxT = jnp.take_along_axis(logits_BxTxV, batch.rows['targets'][..., None], -1)[..., 0]
      nll_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1) - target_BxT
      return jnp.sum(nll_BxT * batch.rows['weights']) / batch.denominator

    got_value, got_grads = jax.jit(
      lambda p, b: jax.value_and_grad(lambda p: objective.loss_fn(p, b, None)[0])(p)
    )(params, batch)
    want_value, want_grads = jax.jit(jax.value_and_grad(today), static_argnums=2)(
      params, batch, None
    )
    np.testing.assert_array_equal(got_value, want_value)
    jax.tree.map(np.testing.assert_array_equal, got_grads, want_grads)

  def test_step_reports_log_z_the_mean_logsumexp(self):
    logits, rows = _logits(4), _rows(5)
    weights = np.asarray(rows['weights'], np.float64)
    want = np.sum(weights * _log_z(logits)) / weights.sum()
    self.assertGreater(abs(want), 1.0)
    for z_loss in (0.0, 1e-4):  # Reported whether or not it is penalised.
      step = train.step_function(
        model=_fixed_logits_model(), optimizer=optax.sgd(0.1), schedule=lambda _: 0.1, z_loss=z_loss
      )
      state = components.TrainState(
        step=jnp.zeros((), jnp.int32),
        params={'logits': jnp.asarray(logits)},
        opt_state=optax.sgd(0.1).init({'logits': jnp.asarray(logits)}),
        carry={},
      )
      batch = {k: v for k, v in rows.items() if k != 'carry'}
      _, step_metrics = jax.jit(step)(state, batch, jax.random.key(0))
      np.testing.assert_allclose(float(step_metrics['log_z']), want, rtol=1e-6)
      np.testing.assert_allclose(float(train.StepMetrics(**step_metrics).log_z), want, rtol=1e-6)

  @parameterized.parameters(('lstm', 3), ('transformer', 5))
  def test_micro_batches_give_the_whole_batch_log_z_and_gradient(self, family, k):
    model, params = models_test.get_model(family), models_test.get_params(family)
    rows = _rows(6, b=15, t=models_test.T)
    rows['carry'] = model.init_carry(15)
    grads = {}
    for z_loss in (0.0, 0.5):
      objective = losses.make_objective(model, 'token_mean', z_loss=z_loss)
      batch = losses.Batch(rows, objective.denominator(rows))
      for name, fn in (('whole', gradients.plain), ('micro', gradients.accumulated(k))):
        grads[name, z_loss] = jax.jit(functools.partial(fn, objective.loss_fn))(
          params, batch, jax.random.key(0)
        )
    for z_loss in (0.0, 0.5):
      (whole, whole_aux), (micro, micro_aux) = grads['whole', z_loss], grads['micro', z_loss]
      np.testing.assert_allclose(micro_aux.log_z_sum, whole_aux.log_z_sum, rtol=1e-5)
      jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), micro, whole
      )
    # The z-loss moved the gradient well beyond the tolerance.
    diff = jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()), grads['whole', 0.5][0], grads['whole', 0.0][0]
    )
    self.assertGreater(max(jax.tree.leaves(diff)), 1e-3)

  def test_dp_sgd_sums_each_rows_z_loss(self):
    model, params = models_test.get_model('transformer'), models_test.get_params('transformer')
    rows = _rows(7, b=6, t=models_test.T)
    rows['weights'] = rows['weights'].at[4:].set(0.0)  # Two rows of padding.
    objective = losses.make_objective(model, 'token_mean', z_loss=0.5)
    row_scale, denominator = float(models_test.T), 4.0 * models_test.T
    # No clipping, no noise: the per-row sum is the gradient of the rows' summed values.
    fn = dp_sgd.private(
      l2_clip_norm=1e9, noise_multiplier=0.0, denominator=denominator, row_scale=row_scale
    )
    got, aux = fn(
      objective.loss_fn, params, losses.Batch(rows, jnp.float32(np.nan)), jax.random.key(0)
    )
    whole = losses.Batch(rows, jnp.float32(row_scale))
    want, want_aux = gradients.plain(objective.loss_fn, params, whole, None)
    np.testing.assert_allclose(aux.log_z_sum, want_aux.log_z_sum, rtol=1e-5)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b / denominator, rtol=1e-4, atol=1e-7), got, want
    )


def _optim_config(**overrides):
  c = common.base_config().optim
  c.update(dict(grad_clip_norm=0.0, warmup_steps=0, b1=0.9, b2=0.99, **overrides))
  return c


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {'kernel': rng.normal(size=(3, 5)), 'bias': rng.normal(size=(5,))}


def _run(tx, params, grads_list):
  """Applies `tx` to float32 `params` with each gradient in turn."""
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(params)
  for grads in grads_list:
    grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return jax.device_get(params)


class WeightDecayModeTest(absltest.TestCase):
  def test_independent_decay_is_the_hand_computed_update(self):
    peak, minimum, wd, b1, b2, eps = 0.3, 0.03, 0.2, 0.9, 0.99, 1e-8
    c = _optim_config(learning_rate=peak, min_learning_rate=minimum, weight_decay=wd)
    c.weight_decay_mode = 'independent'
    schedule = optim.make_schedule(c, num_train_steps=3, steps_per_epoch=1)
    params, grads_list = _tree(0), [_tree(1), _tree(2)]
    got = _run(optim.make_optimizer(c, schedule), params, grads_list)
    # By hand in float64: cosine from the peak over 3 steps, Adam, then the decay of the
    # kernel (not the bias) by the schedule's shape lr_t / peak times weight_decay.
    want = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for t, grads in enumerate(grads_list):
      lr = minimum + (peak - minimum) * 0.5 * (1 + np.cos(np.pi * t / 3))
      for k in want:
        m[k] = b1 * m[k] + (1 - b1) * grads[k]
        v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
        adam = (m[k] / (1 - b1 ** (t + 1))) / (np.sqrt(v[k] / (1 - b2 ** (t + 1))) + eps)
        decay = (lr / peak) * wd * want[k] if k == 'kernel' else 0.0
        want[k] = want[k] - lr * adam - decay
    self.assertLess(float(schedule(1)), peak)  # The second step is off the peak.
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # Coupled decay (lr_t * weight_decay) lands elsewhere: the test can tell.
    c.weight_decay_mode = 'coupled'
    coupled = _run(optim.make_optimizer(c, schedule), params, grads_list)
    self.assertGreater(np.abs(coupled['kernel'] - want['kernel']).max(), 1e-3)

  def test_coupled_is_optax_adamw_bit_for_bit(self):
    c = _optim_config(learning_rate=0.3, min_learning_rate=0.03, weight_decay=0.2)
    self.assertEqual(c.weight_decay_mode, 'coupled')  # The default.
    schedule = optim.make_schedule(c, num_train_steps=3, steps_per_epoch=1)
    reference = optax.adamw(
      schedule, b1=0.9, b2=0.99, weight_decay=0.2, mask={'kernel': True, 'bias': False}
    )
    params, grads_list = _tree(3), [_tree(4), _tree(5)]
    got = _run(optim.make_optimizer(c, schedule), params, grads_list)
    jax.tree.map(np.testing.assert_array_equal, got, _run(reference, params, grads_list))

  def test_conversion_and_what_the_peak_changes(self):
    # The docs' conversion: independent = coupled * peak decays the same at every step...
    coupled_wd, lr_shape = 0.1, 0.5  # The schedule at half its peak.
    zeros, params = jax.tree.map(np.zeros_like, _tree(6)), _tree(6)
    shrink = {}
    for peak in (0.25, 0.5):
      for mode, wd in (('coupled', coupled_wd), ('independent', coupled_wd * 0.25)):
        c = _optim_config(learning_rate=peak, weight_decay=wd, weight_decay_mode=mode)
        tx = optim.make_optimizer(c, lambda _, peak=peak: lr_shape * peak)
        kernel = _run(tx, params, [zeros])['kernel']
        shrink[mode, peak] = float(np.abs(kernel / params['kernel'] - 1).max())
    np.testing.assert_allclose(shrink['independent', 0.25], shrink['coupled', 0.25], rtol=1e-6)
    np.testing.assert_allclose(shrink['coupled', 0.25], lr_shape * 0.25 * coupled_wd, rtol=1e-5)
    # ...but a sweep that doubles the peak doubles coupled decay, not independent decay.
    np.testing.assert_allclose(shrink['coupled', 0.5], 2 * shrink['coupled', 0.25], rtol=1e-5)
    np.testing.assert_allclose(shrink['independent', 0.5], shrink['independent', 0.25], rtol=1e-5)

  def test_bad_values_are_refused(self):
    tmp = self.create_tempdir().full_path
    cases = (
      (
        'optim.weight_decay_mode',
        'decoupled',
        "one of the known weight decay modes: ['coupled', 'independent']",
      ),
      ('optim.z_loss', -1e-4, 'a finite number >= 0'),
      ('optim.z_loss', float('nan'), 'a finite number >= 0'),
    )
    for key, value, message in cases:
      c = test_util.tiny_config(tmp)
      with c.unlocked():
        c.optim[key.split('.')[1]] = value
      with self.assertRaisesRegex(ValueError, f'config.{key}=.*{message}'.replace('[', r'\[')):
        config_checks.check(c)
    c = test_util.tiny_config(tmp)
    with c.unlocked():
      c.optim.name, c.optim.weight_decay_mode = 'sgd', 'independent'
    with self.assertRaisesRegex(ValueError, "optim.name='sgd' has no weight decay.*'adamw'"):
      config_checks.check(c)
    with self.assertRaisesRegex(ValueError, 'has no weight decay'):
      optim.make_optimizer(c.optim, lambda _: 0.1)


class EndToEndTest(absltest.TestCase):
  def test_a_run_with_both_options_logs_log_z(self):
    tmp = self.create_tempdir().full_path
    c = test_util.tiny_config(tmp, model='transformer')
    with c.unlocked():
      c.num_train_steps, c.sample.num_tokens, c.eval_on_test = 8, 0, False
      c.optim.z_loss, c.optim.weight_decay_mode = 1e-4, 'independent'
    workdir = os.path.join(tmp, 'run')
    with contextlib.redirect_stdout(io.StringIO()):
      train.train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(line) for line in f]
    log_z = [r['log_z'] for r in records if r['split'] == 'train']
    self.assertLen(log_z, 2)
    self.assertTrue(all(np.isfinite(log_z)))


if __name__ == '__main__':
  absltest.main()
