"""Lion, Adafactor, Muon and schedule-free AdamW (research/optimizers.py, through
research/optim.py's OPTIMIZERS): each update against a formula written here or
optax's own transformation applied by hand, the weight-decay semantics in both
modes, micro-batches making the whole batch's step, the refusal of another
optimizer's keys and of combinations that do not compose, and a config saved
before the keys existed. Whole runs: tests/optimizers_train_test.py."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl.testing import absltest

from configs import common
from research import components
from research import config_checks
from research import models
from research import optim
from research import optimizers
from research import train
from research import workdir as workdir_lib
from research.models import lstm
from research.models import transformer
from tests import test_util

_NEW = ('lion', 'adafactor', 'muon', 'schedule_free_adamw')


def _optim_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """config.optim for `name`, no clipping; a dict value updates a sub-config."""
  c = common.base_config().optim
  c.name, c.grad_clip_norm = name, 0.0
  for key, value in overrides.items():
    if isinstance(value, dict):
      c[key].update(value)
    else:
      c[key] = value
  return c


def _f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _normal(rng, shapes: dict) -> dict:
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _steps(tx, params, grads_list):
  """(params after each update, the final state, the updates) of `tx`."""
  params, state, updates = _f32(params), tx.init(_f32(params)), []
  for grads in grads_list:
    u, state = tx.update(_f32(grads), state, params)
    params = optax.apply_updates(params, u)
    updates.append(u)
  return params, state, updates


def _find(tree, kind):
  found = [s for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, kind))]
  return [s for s in found if isinstance(s, kind)]


class UpdateTest(absltest.TestCase):
  """One optimizer at a time, on small prime-sized parameters."""

  def test_lion_steps_by_the_sign_of_the_interpolated_momentum(self):
    lr, wd, b1, b2 = 0.3, 0.1, 0.8, 0.95
    c = _optim_config('lion', weight_decay=wd, lion=dict(b1=b1, b2=b2))
    rng = np.random.default_rng(0)
    params = _normal(rng, {'kernel': (7, 11), 'bias': (13,)})
    grads = [_normal(rng, {'kernel': (7, 11), 'bias': (13,)}) for _ in range(3)]
    got, _, _ = _steps(optim.make_optimizer(c, lambda _: lr), params, grads)
    # Chen et al. 2023, Algorithm 2, decoupled decay on matrices only.
    p, m = dict(params), {k: np.zeros_like(x) for k, x in params.items()}
    for g in grads:
      for k in p:
        decay = wd * p[k] if p[k].ndim == 2 else 0.0
        p[k] = p[k] - lr * (np.sign(b1 * m[k] + (1 - b1) * g[k]) + decay)
        m[k] = b2 * m[k] + (1 - b2) * g[k]
    for k in p:
      np.testing.assert_allclose(got[k], p[k], rtol=1e-5, atol=1e-6, err_msg=k)

  def test_adafactor_keeps_row_and_column_means_of_the_squared_gradient(self):
    lr, c_decay, eps = 0.1, 0.8, 1e-30
    c = _optim_config(
      'adafactor',
      weight_decay=0.0,
      adafactor=dict(
        min_dim_size_to_factor=2, clipping_threshold=0.0, multiply_by_parameter_scale=False
      ),
    )
    rng = np.random.default_rng(1)
    params = _normal(rng, {'kernel': (7, 11), 'bias': (13,)})
    grads = [_normal(rng, {'kernel': (7, 11), 'bias': (13,)}) for _ in range(2)]
    _, state, updates = _steps(optim.make_optimizer(c, lambda _: lr), params, grads)
    # Shazeer and Stern 2018, Algorithm 4 with means: R and C, beta2_t = 1 - t^-0.8.
    r, col, v = np.zeros(7), np.zeros(11), np.zeros(13)
    for t, (g, u) in enumerate(zip(grads, updates), start=1):
      beta = 1 - t**-c_decay
      square = g['kernel'] ** 2 + eps
      r = beta * r + (1 - beta) * square.mean(axis=1)
      col = beta * col + (1 - beta) * square.mean(axis=0)
      v_hat = np.outer(r, col) / r.mean()
      np.testing.assert_allclose(u['kernel'], -lr * g['kernel'] / np.sqrt(v_hat), rtol=1e-5)
      v = beta * v + (1 - beta) * (g['bias'] ** 2 + eps)
      np.testing.assert_allclose(u['bias'], -lr * g['bias'] / np.sqrt(v), rtol=1e-5)
    (factored,) = _find(state, optax.FactoredState)
    np.testing.assert_allclose(factored.v_row['kernel'], r, rtol=1e-5)
    np.testing.assert_allclose(factored.v_col['kernel'], col, rtol=1e-5)
    self.assertEqual(factored.v['kernel'].shape, (1,))  # No 7 x 11 moment is kept.

  def test_weight_decay_is_lr_times_lambda_on_matrices_in_both_modes(self):
    # With zero gradients every update is the decay alone: -lr_t * rate * theta on
    # matrices (rate lambda, or lambda / peak when independent), nothing on vectors.
    peak, lr_t, wd = 0.1, 0.04, 0.3
    rng = np.random.default_rng(2)
    params = _normal(rng, {'kernel': (7, 11), 'table': (13, 7), 'bias': (11,)})
    zeros = jax.tree.map(np.zeros_like, params)
    roles = (('kernel', 'hidden'), ('table', 'embedding'), ('bias', 'vector'))
    for name in _NEW:
      for mode, rate in (('coupled', wd), ('independent', wd / peak)):
        with self.subTest(name=name, mode=mode):
          c = _optim_config(name, learning_rate=peak, weight_decay=wd, weight_decay_mode=mode)
          tx = optim.make_optimizer(c, lambda _: lr_t, param_roles=roles)
          _, _, (u,) = _steps(tx, params, [zeros])
          # atol: schedule-free's update is a difference of interpolated iterates.
          for k in ('kernel', 'table'):
            want = -lr_t * rate * params[k]
            np.testing.assert_allclose(u[k], want, rtol=1e-5, atol=1e-6, err_msg=k)
          np.testing.assert_allclose(u['bias'], np.zeros(11), atol=1e-6)

  def test_muon_orthogonalises_hidden_matrices_and_gives_the_rest_adamw(self):
    lr, wd = 0.02, 0.1
    c = _optim_config('muon', weight_decay=wd)
    shapes = {
      'embed': {'embedding': (13, 7)},
      'lstm_0': {'input_kernel': (7, 28), 'recurrent_kernel': (7, 28), 'bias': (28,)},
      'softmax': {'kernel': (7, 13), 'bias': (13,)},
    }
    rng = np.random.default_rng(3)
    params = {k: _normal(rng, s) for k, s in shapes.items()}
    grads = {k: _normal(rng, s) for k, s in shapes.items()}
    tx = optim.make_optimizer(c, lambda _: lr, param_roles=lstm.PARAM_ROLES)
    _, _, (u,) = _steps(tx, params, [grads])
    for name in ('input_kernel', 'recurrent_kernel'):
      # u = -lr (sqrt(max(1, fan_out / fan_in)) O + wd theta), O ~ U V^T of the gradient
      # (the first momentum is a multiple of it); Newton-Schulz leaves O's singular values in
      # about [0.7, 1.1] (Jordan et al. 2024: roughly uniform in [0.5, 1.5]).
      theta, g = params['lstm_0'][name], grads['lstm_0'][name]
      o = (-np.asarray(u['lstm_0'][name]) / lr - wd * theta) / np.sqrt(28 / 7)
      left, _, right_t = np.linalg.svd(g, full_matrices=False)
      in_g_basis = left.T @ o @ right_t.T
      singular = np.diag(in_g_basis)
      self.assertTrue(np.all((singular > 0.5) & (singular < 1.5)), singular)
      np.testing.assert_allclose(in_g_basis, np.diag(singular), atol=1e-4, err_msg=name)

    # The embedding, the head and the biases: optax's AdamW (Nesterov, as optax.contrib.muon
    # builds it) with the decay on matrices only.
    def rest(tree):
      return {'embed': tree['embed'], 'softmax': tree['softmax'], 'bias': tree['lstm_0']['bias']}

    adamw = optax.adamw(
      lr, b1=c.b1, b2=c.b2, eps=1e-8, weight_decay=wd, nesterov=True, mask=optim._matrices_only
    )
    _, _, (want,) = _steps(adamw, rest(params), [rest(grads)])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), rest(u), want)

  def test_muon_orthogonalises_each_layer_of_a_stacked_matrix_alone(self):
    rng = np.random.default_rng(4)
    stacked = rng.normal(size=(3, 7, 11)).astype(np.float32)
    grads = rng.normal(size=(3, 7, 11)).astype(np.float32)
    c = _optim_config('muon', weight_decay=0.0)
    roles = transformer.PARAM_ROLES
    scanned = {'blocks': {'attn': {'qkv': {'kernel': stacked}}}, 'ln_f': {'scale': np.ones(7)}}
    dims = optimizers.muon_dimension_numbers(roles)(scanned)
    self.assertEqual(
      dims['blocks']['attn']['qkv']['kernel'], optax.contrib.MuonDimensionNumbers(1, 2)
    )
    self.assertIsNone(dims['ln_f']['scale'])
    tx = optim.make_optimizer(c, lambda _: 0.02, param_roles=roles)
    g_scanned = {'blocks': {'attn': {'qkv': {'kernel': grads}}}, 'ln_f': {'scale': np.ones(7)}}
    _, _, (u,) = _steps(tx, scanned, [g_scanned])
    for i in range(3):
      layer = {f'block_{i}': {'attn': {'qkv': {'kernel': stacked[i]}}}}
      g_layer = {f'block_{i}': {'attn': {'qkv': {'kernel': grads[i]}}}}
      _, _, (want,) = _steps(tx, layer, [g_layer])
      np.testing.assert_allclose(
        u['blocks']['attn']['qkv']['kernel'][i],
        want[f'block_{i}']['attn']['qkv']['kernel'],
        rtol=1e-5,
        atol=1e-7,
      )
    with self.assertRaisesRegex(ValueError, "'block_0/attn/qkv/kernel'.*not a matrix"):
      optimizers.muon_dimension_numbers(roles)(
        {'block_0': {'attn': {'qkv': {'kernel': np.ones(3)}}}}
      )
    with self.assertRaisesRegex(ValueError, "optim.name='muon'.*declares none"):
      optim.make_optimizer(c, lambda _: 0.02)

  def test_schedule_free_is_optax_schedule_free_adamw_with_a_masked_decay(self):
    c = _optim_config(
      'schedule_free_adamw',
      learning_rate=0.05,
      warmup_steps=2,
      weight_decay=0.1,
      schedule_free_adamw=dict(b1=0.8, b2=0.99),
    )
    schedule = optim.make_schedule(c, num_train_steps=10, steps_per_epoch=5)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 1, 2, 9)], [0, 0.025, 0.05, 0.05])
    rng = np.random.default_rng(5)
    # Matrices only: optax's alias (which decays everything) must give the same.
    params = _normal(rng, {'a': (7, 11), 'b': (11, 13)})
    grads = [_normal(rng, {'a': (7, 11), 'b': (11, 13)}) for _ in range(4)]
    got, state, _ = _steps(optim.make_optimizer(c, schedule), params, grads)
    reference = optax.contrib.schedule_free_adamw(
      0.05, warmup_steps=2, b1=0.8, b2=0.99, weight_decay=0.1
    )
    want, want_state, _ = _steps(reference, params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
      optim.eval_params(c, state, got),
      optax.contrib.schedule_free_eval_params(want_state, want),
    )

  def test_schedule_free_eval_params_are_the_average_inside_the_chain(self):
    c = _optim_config(
      'schedule_free_adamw', grad_clip_norm=1.0, frozen='^b$', schedule_free_adamw=dict(b1=0.7)
    )
    rng = np.random.default_rng(6)
    params = _normal(rng, {'a': (7, 11), 'b': (11, 13)})
    grads = [_normal(rng, {'a': (7, 11), 'b': (11, 13)}) for _ in range(3)]
    y, state, _ = _steps(optim.make_optimizer(c, lambda _: 0.05), params, grads)
    (sf,) = _find(state, optax.contrib.ScheduleFreeState)
    x = optim.eval_params(c, state, y)
    # Defazio et al. 2024: y = (1 - b1) z + b1 x, so x = (y - (1 - b1) z) / b1.
    np.testing.assert_allclose(x['a'], (y['a'] - 0.3 * sf.z['a']) / 0.7, rtol=1e-5)
    self.assertGreater(np.abs(x['a'] - y['a']).max(), 1e-4)
    # Frozen: never moved, though the decay moved its z.
    np.testing.assert_array_equal(x['b'], params['b'])
    self.assertGreater(np.abs(sf.z['b'] - params['b']).max(), 0.0)
    for name in ('adamw', 'lion', 'adafactor'):
      self.assertIs(optim.eval_params(_optim_config(name), state, y), y)


class AccumulationTest(absltest.TestCase):
  def test_two_micro_batches_make_the_whole_batch_step(self):
    config = test_util.tiny_config(self.create_tempdir().full_path, model='lstm')
    config.model.dropout_rate = 0.0
    model = models.get_model(config.model, vocab_size=13, seq_len=11)
    rng = np.random.default_rng(7)
    batches = [
      {
        'inputs': rng.integers(0, 13, (12, 11), dtype=np.int32),
        'targets': rng.integers(0, 13, (12, 11), dtype=np.int32),
        'weights': np.ones((12, 11), np.float32),
        'reset': np.zeros(12, bool),
      }
      for _ in range(2)
    ]
    # Micro-batches are summed before the optimizer sees them, so two optimizers stand for
    # all: Muon (matrices orthogonalised) and schedule-free (state beyond moments).
    for name in ('muon', 'schedule_free_adamw'):
      with self.subTest(name):
        c = _optim_config(name, warmup_steps=0, learning_rate=0.01)
        schedule = optim.make_schedule(c, num_train_steps=10, steps_per_epoch=5)
        tx = optim.make_optimizer(c, schedule, param_roles=model.param_roles)
        start = components.init_state(jax.random.key(0), model=model, optimizer=tx, batch_size=12)
        step = functools.partial(train.step_function, model=model, optimizer=tx, schedule=schedule)
        states = []
        for k in (1, 2):
          state, jitted = start, jax.jit(step(grad_accum_steps=k))
          for batch in batches:  # The second step reads the first one's optimizer state.
            state, _ = jitted(state, batch, jax.random.key(3))
          states.append(jax.device_get(state))
        whole, accumulated = states
        # Schedule-free's first steps divide by |g| (no momentum): a rounding difference of a
        # near-zero gradient shows at 1e-6 there; a wrong micro-batch sum would show at lr.
        atol = 1e-5 if name == 'schedule_free_adamw' else 1e-6
        jax.tree.map(
          lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol),
          accumulated.params,
          whole.params,
        )
        moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), whole.params, start.params)
        self.assertGreater(max(jax.tree.leaves(moved)), 1e-3)


class ConfigTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.config = test_util.tiny_config(self.create_tempdir().full_path)

  def test_default_configs_of_every_optimizer_pass(self):
    for name in optim.OPTIMIZERS:
      with self.subTest(name), self.config.unlocked():
        self.config.optim.name = name
        config_checks.check(self.config)

  def test_another_optimizers_key_is_refused_with_the_fix(self):
    with self.config.unlocked():
      self.config.optim.muon.ns_steps = 3
      with self.assertRaisesRegex(
        ValueError,
        r"config.optim.muon.ns_steps=3 is set but optim.name='adamw' does not read it.*"
        r'--config.optim.name=muon.*default 5',
      ):
        config_checks.check(self.config)
      self.config.optim.name = 'muon'
      config_checks.check(self.config)
      self.config.optim.schedule_free_adamw.b1 = 0.95
      with self.assertRaisesRegex(ValueError, 'schedule_free_adamw.b1=0.95 is set but'):
        config_checks.check(self.config)

  def test_values_that_cannot_mean_anything_are_refused(self):
    for key, value in (
      ('schedule_free_adamw.b1', 0.0),
      ('adafactor.clipping_threshold', 0.5),
      ('lion.b2', 1.0),
      ('muon.ns_steps', 0),
    ):
      with self.subTest(key), self.config.unlocked():
        config = self.config.copy_and_resolve_references()
        sub, leaf = key.split('.')
        config.optim.name = sub  # Each sub-config is named after its optimizer.
        config.optim[sub][leaf] = value
        with self.assertRaisesRegex(ValueError, f'config.optim.{key}='):
          config_checks.check(config)

  def test_a_config_saved_before_the_subconfigs_reads_with_their_defaults(self):
    saved = self.config.to_dict()
    for name in _NEW:
      del saved['optim'][name]
    filled = ml_collections.ConfigDict(workdir_lib.with_defaults(saved))
    for name in _NEW:
      self.assertEqual(filled.optim[name].to_dict(), common.base_config().optim[name].to_dict())
    config_checks.check(filled)

  def test_rules_that_do_not_compose_are_refused(self):
    t = test_util.tiny_config(self.create_tempdir().full_path, model='transformer')
    with t.unlocked():
      t.model.update(parametrization='mup', mup_base_width=8, tie_embeddings=False)
      t.optim.name = 'muon'
      with self.assertRaisesRegex(ValueError, "optim.name='muon' takes no per-parameter"):
        config_checks.check(t)
    with self.config.unlocked():
      self.config.optim.name = 'schedule_free_adamw'
      self.config.distill.teacher = '/somewhere'
      with self.assertRaisesRegex(ValueError, 'averaged parameters.*distill.teacher'):
        config_checks.check(self.config)


if __name__ == '__main__':
  absltest.main()
