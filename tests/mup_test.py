"""model.parametrization (research/models/mup.py) and its per-parameter learning
rates (research/optim.py): the initial scales and the rates of Wortsman et al.
2024's muParam (simple) at two widths, each against a formula written out here
(docs/stability.md), and 'standard' as it always was."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

from configs import common
from research import config_checks
from research import models
from research import optim
from research.models import mup
from research.models import transformer
from tests import test_util

# Distinct sizes: V vocabulary, P context, the base width and its double.
_V, _P, _BASE = 11, 13, 14
_LR, _EPS = 0.1, 1e-8  # A constant learning rate; Adam's epsilon (optax's default).


def _model_config(d_model, parametrization='mup', **overrides):
  m = common.transformer_model()
  m.num_layers, m.num_heads, m.d_model, m.d_ff = 2, 2, d_model, 3 * d_model
  m.dropout_rate, m.tie_embeddings = 0.0, False
  m.parametrization, m.mup_base_width = parametrization, _BASE
  for key, value in overrides.items():
    m[key] = value
  return m


def _build(d_model, parametrization='mup', **overrides):
  return models.get_model(_model_config(d_model, parametrization, **overrides), _V, _P)


def _paths(tree):
  return {
    '/'.join(str(k.key) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _expected_rate(path, d_model):
  """The paper's rule: every linear layer (attention and MLP kernels, the head)
  at base-fan-in / fan-in = base / d_model (d_ff = 3 d_model at both widths);
  embeddings, positions, norms and biases at the optimizer's rate."""
  linear = path.endswith('kernel')
  return _BASE / d_model if linear else 1.0


def _expected_init(path, d_model):
  """The same layers' std falls as 1/sqrt(fan-in): sqrt(base / d_model)."""
  return np.sqrt(_BASE / d_model) if path.endswith('kernel') else 1.0


def _optim_config(mode='coupled', weight_decay=0.0):
  c = common.base_config().optim
  c.grad_clip_norm, c.weight_decay, c.weight_decay_mode = 0.0, weight_decay, mode
  return c


def _grads(params, seed=0):
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params)))
  leaves = [jax.random.normal(k, p.shape) for k, p in zip(keys, jax.tree.leaves(params))]
  return jax.tree.unflatten(jax.tree.structure(params), leaves)


def _first_update(model, params, grads, optim_config):
  tx = optim.make_optimizer(optim_config, lambda _: _LR, model.rate_multipliers)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


class InitTest(parameterized.TestCase):
  @parameterized.parameters(_BASE, 2 * _BASE)
  def test_mup_init_is_the_standard_draw_times_its_factor(self, d_model):
    key = jax.random.key(7)
    standard = _paths(_build(d_model, 'standard').init(key))
    mup = _paths(_build(d_model).init(key))
    self.assertEqual(set(standard), set(mup))
    for path, value in mup.items():
      expected = np.asarray(standard[path]) * _expected_init(path, d_model)
      if d_model == _BASE:  # r = 1: the same draw, bit for bit.
        np.testing.assert_array_equal(value, standard[path], err_msg=path)
      np.testing.assert_allclose(value, expected, rtol=1e-6, atol=0, err_msg=path)

  def test_mup_init_std_follows_the_width(self):
    # Over many entries: GPT-2's 0.02 (0.02 / sqrt(2 L) for the projections into
    # the residual stream) times sqrt(base / d_model) at twice the base width.
    d_model, layers = 2 * _BASE, 2
    params = _paths(_build(d_model, d_ff=40 * d_model).init(jax.random.key(11)))
    shrink = np.sqrt(_BASE / d_model)
    cases = {
      'block_0/attn/qkv/kernel': 0.02 * shrink,
      'block_1/mlp/fc/kernel': 0.02 * shrink,
      'block_1/mlp/proj/kernel': 0.02 / np.sqrt(2 * layers) * shrink,
      'embed/embedding': 0.02,
    }
    for path, std in cases.items():
      entries = params[path].size  # The sample std's relative error is about 1/sqrt(2 n).
      self.assertAlmostEqual(
        float(np.std(params[path])) / std, 1.0, delta=4 / np.sqrt(2 * entries), msg=path
      )

  def test_every_option_gives_every_parameter_a_role(self):
    options = dict(
      mlp='swiglu', qk_norm='layernorm', use_bias=True, norm='rmsnorm', positional='rope'
    )
    for scan in (False, True):
      params = _paths(_build(2 * _BASE, scan_layers=scan, **options).init(jax.random.key(0)))
      reference = _paths(
        _build(2 * _BASE, 'standard', scan_layers=scan, **options).init(jax.random.key(0))
      )
      for path, value in params.items():  # Stacked kernels too; gains and biases untouched.
        expected = np.asarray(reference[path]) * _expected_init(path, 2 * _BASE)
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=0, err_msg=path)

  def test_standard_is_untouched(self):
    model = _build(_BASE, 'standard')
    self.assertIsNone(model.rate_multipliers)  # The optimizer is built as before.
    config = models.get_config(_model_config(2 * _BASE, 'standard'))
    params = {'block_0': {'attn': {'qkv': {'kernel': jnp.ones((3, 3))}}}}
    self.assertIs(mup.scale_init(config, transformer.PARAM_ROLES, params), params)

  def test_cached_decode_equals_the_full_pass(self):
    model = _build(2 * _BASE)
    params = model.init(jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, _V)
    full, _ = model.apply(params, {}, tokens, train=False, rng=None)
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    prompt, cache = model.decode(params, model.init_cache(2), tokens[:, :5], positions[:, :5])
    steps = [prompt]
    for t in range(5, 9):
      logits, cache = model.decode(params, cache, tokens[:, t : t + 1], positions[:, t : t + 1])
      steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


class RateTest(parameterized.TestCase):
  @parameterized.parameters(_BASE, 2 * _BASE)
  def test_first_adam_step_follows_each_parameters_rate(self, d_model):
    # Adam's first bias-corrected step is g / (|g| + eps) whatever b1, b2.
    for parametrization in ('standard', 'mup'):
      model = _build(d_model, parametrization)
      params = model.init(jax.random.key(1))
      grads = _grads(params)
      updates = _paths(_first_update(model, params, grads, _optim_config()))
      for path, g in _paths(grads).items():
        rate = _expected_rate(path, d_model) if parametrization == 'mup' else 1.0
        g = np.asarray(g, np.float64)
        expected = -_LR * rate * g / (np.abs(g) + _EPS)
        np.testing.assert_allclose(updates[path], expected, rtol=1e-5, err_msg=path)

  @parameterized.parameters('coupled', 'independent')
  def test_weight_decay_and_rates(self, mode):
    # coupled: -m lr (adam + lambda theta); independent: -m lr adam - s_t lambda theta,
    # with s_t = lr_t / peak = 1 here (Wortsman et al. 2024, section 3.2.2). Decay on
    # matrices only (kernels and embeddings), as without a parametrization.
    d_model, decay = 2 * _BASE, 0.3
    model = _build(d_model)
    params = model.init(jax.random.key(2))
    grads = _grads(params, seed=5)
    c = _optim_config(mode, decay)
    c.learning_rate = _LR  # The peak independent decay divides by.
    updates = _paths(_first_update(model, params, grads, c))
    for path, g in _paths(grads).items():
      theta = np.asarray(_paths(params)[path], np.float64)
      m = _expected_rate(path, d_model)
      g = np.asarray(g, np.float64)
      adam = g / (np.abs(g) + _EPS)
      lam = decay if theta.ndim == 2 else 0.0
      if mode == 'coupled':
        expected = -m * _LR * (adam + lam * theta)
      else:
        expected = -m * _LR * adam - lam * theta
      np.testing.assert_allclose(updates[path], expected, rtol=1e-5, atol=1e-9, err_msg=path)

  @parameterized.parameters('coupled', 'independent')
  def test_mup_at_the_base_width_is_standard_bit_for_bit(self, mode):
    model, standard = _build(_BASE), _build(_BASE, 'standard')
    params = model.init(jax.random.key(3))
    c = _optim_config(mode, weight_decay=0.1)
    schedule = optim.make_schedule(c, num_train_steps=10, steps_per_epoch=5)
    runs = []
    for rates in (model.rate_multipliers, standard.rate_multipliers):
      tx = optim.make_optimizer(c, schedule, rates)
      p, state = params, tx.init(params)
      for step in range(3):
        updates, state = tx.update(_grads(params, seed=step), state, p)
        p = optax.apply_updates(p, updates)
      runs.append(p)
    for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
      np.testing.assert_array_equal(a, b)


class ConfigTest(absltest.TestCase):
  def test_bad_combinations_are_refused(self):
    cases = (
      (dict(parametrization='mu'), "one of the known parametrizations: \\['mup', 'standard'\\]"),
      (dict(mup_base_width=0), 'mup_base_width=0; set --config.model.mup_base_width'),
      (dict(tie_embeddings=True), 'tie_embeddings=True makes them one matrix'),
    )
    for overrides, message in cases:
      with self.assertRaisesRegex(ValueError, message):
        models.get_config(_model_config(_BASE, **overrides))
    # 'standard' ignores the base width and allows a tied head.
    models.get_config(_model_config(_BASE, 'standard', mup_base_width=0, tie_embeddings=True))

  def test_optimizer_without_per_parameter_rates_is_refused(self):
    tmp = self.create_tempdir().full_path
    c = test_util.tiny_config(tmp, model='transformer')
    with c.unlocked():
      c.model.parametrization, c.model.mup_base_width = 'mup', 8
      c.model.tie_embeddings = False
      c.optim.name = 'sgd'
    with self.assertRaisesRegex(ValueError, "optim.name='sgd' takes no per-parameter"):
      config_checks.check(c)

  def test_lstm_has_no_parametrization(self):
    tmp = self.create_tempdir().full_path
    c = test_util.tiny_config(tmp, model='lstm')
    with c.unlocked():
      c.model.parametrization = 'mup'
    with self.assertRaisesRegex(ValueError, "parametrization is not a key of the 'lstm'"):
      config_checks.check(c)


class EndToEndTest(absltest.TestCase):
  def test_mup_trains_from_the_command_line(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config_file(tmp, model='transformer')
    workdir = os.path.join(tmp, 'run')
    result = test_util.run_module(
      [
        'research.main',
        f'--config={config}',
        f'--workdir={workdir}',
        '--config.model.parametrization=mup',
        '--config.model.mup_base_width=8',
        '--config.model.tie_embeddings=False',
        '--config.optim.weight_decay_mode=independent',
        '--config.optim.weight_decay=1e-4',
        '--config.num_train_steps=4',
        '--config.sample.num_tokens=0',
        '--config.eval_on_test=False',
      ]
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(line) for line in f]
    losses = [r['loss'] for r in records if r['split'] == 'train']
    self.assertNotEmpty(losses)
    self.assertTrue(all(np.isfinite(losses)))


if __name__ == '__main__':
  absltest.main()
