"""A model family is one module: options are registered functions, its
config object checks `config.model`, its partition rules are strict, and
its `apply` takes positions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import common
from research import models
from research import sharding
from research import train
from research.models import transformer
from research.models import positional
from tests import models_test
from tests import test_util

V, T, B, D = models_test.V, models_test.T, models_test.B, models_test.D


def _one_device_mesh():
  return sharding.make_mesh(
    ml_collections.ConfigDict({'data': 1, 'fsdp': 1, 'tensor': 1}), jax.devices()[:1]
  )


class OptionTest(absltest.TestCase):
  def test_a_norm_is_one_registered_function(self):
    sites = []

    def toy_norm(config, name):
      sites.append(name)
      return nn.RMSNorm(epsilon=1e-6, name=name)

    transformer.NORMS['toy'] = toy_norm
    self.addCleanup(transformer.NORMS.pop, 'toy')

    workdir = self.create_tempdir().full_path
    config = test_util.tiny_config(workdir, model='transformer')
    config.model.norm = 'toy'
    config.num_train_steps = 1
    config.optim.warmup_steps = 0  # The first step then moves the weights.
    config.sample.num_tokens = 0
    config.eval_on_test = False
    results = train.train_and_evaluate(config, workdir)
    self.assertTrue(np.isfinite(results['valid']['loss']))
    self.assertEqual(set(sites), {'ln_1', 'ln_2', 'ln_f'})  # Every site.
    state = test_util.final_state(config, workdir)
    self.assertEqual(int(state.step), 1)
    # RMSNorm has a scale and no bias whatever use_bias says; it trained.
    self.assertEqual(set(state.params['ln_f']), {'scale'})
    self.assertFalse(np.allclose(state.params['ln_f']['scale'], 1.0))

  def test_an_unknown_option_is_refused_naming_the_key(self):
    for key, value in (('positional', 'rotary'), ('norm', 'toy'), ('mlp', 'maxout')):
      with self.subTest(key=key):
        with self.assertRaisesRegex(
          ValueError,
          rf"^config\.model\.{key}='{value}' must be one of the "
          r'known [^\n]*: \[.+\]; set --config',
        ):
          models.get_config(models_test.transformer_config(**{key: value}))

  def test_the_config_object_has_exactly_the_families_keys(self):
    extra = models_test.transformer_config()
    extra.rope_base = 10000.0
    with self.assertRaisesRegex(
      ValueError,
      r'config\.model\.rope_base is not '
      "a key of the 'transformer' model family",
    ):
      models.get_config(extra)
    missing = models_test.lstm_config()
    del missing['init_scale']
    with self.assertRaisesRegex(ValueError, r'config\.model\.init_scale is missing'):
      models.get_config(missing)
    config = models.get_config(models_test.transformer_config())
    self.assertIsInstance(config, transformer.Config)
    with self.assertRaises(AttributeError):  # Frozen: checked once, fixed.
      config.num_layers = 3


class StrictShardingTest(absltest.TestCase):
  def _abstract_params(self, model_config):
    model = models.get_model(model_config, V, T)
    return model, jax.eval_shape(model.init, jax.random.key(0))

  def test_every_parameter_of_every_family_has_a_rule(self):
    mesh = _one_device_mesh()
    # Every registered option, in blocks and stacked: its parameters need rules.
    options = [
      {key: name}
      for key, registry in (
        ('positional', positional.POSITIONAL),
        ('norm', transformer.NORMS),
        ('mlp', transformer.MLPS),
        ('norm_position', transformer.NORM_POSITIONS),
      )
      for name in registry
    ]
    for model_config in (
      common.transformer_model(),
      models_test.lstm_config(),
      common.lstm_model(),
      *(models_test.transformer_config(**o) for o in options),  # Biases, an untied head.
      *(models_test.transformer_config(scan_layers=True, **o) for o in options),
    ):
      with self.subTest(model=dict(model_config)):
        model, params = self._abstract_params(model_config)
        sharding.param_shardings(params, mesh, model.partition_rules)

  def test_a_gated_mlp_splits_both_input_projections_by_column(self):
    model, params = self._abstract_params(models_test.transformer_config(mlp='geglu'))
    specs = sharding.param_shardings(params, _one_device_mesh(), model.partition_rules)
    for name in ('fc', 'gate'):
      self.assertEqual(tuple(specs['block_0']['mlp'][name]['kernel'].spec), ('fsdp', 'tensor'))
      self.assertEqual(tuple(specs['block_0']['mlp'][name]['bias'].spec), ('tensor',))

  def test_a_parameter_no_rule_matches_stops_sharding_naming_it(self):
    model, params = self._abstract_params(models_test.transformer_config())
    # A new weight (a mixture of experts' router, say) without a rule of its own.
    params['block_1']['mlp']['router'] = {'kernel': jax.ShapeDtypeStruct((D, 17), jnp.float32)}
    with self.assertRaisesRegex(
      ValueError,
      r'No partition rule matches parameter '
      r"'block_1/mlp/router/kernel' of shape \(12, 17\)",
    ):
      sharding.param_shardings(params, _one_device_mesh(), model.partition_rules)


class PositionsTest(parameterized.TestCase):
  def _apply(self, positional, params, tokens, positions=None):
    apply = models_test.jitted_apply('transformer', False, positional=positional)
    logits, _ = apply(params, {}, tokens, rng=None, positions_BxT=positions)
    return np.asarray(logits)

  @parameterized.parameters(*positional.POSITIONAL)  # Every kind, a new one too.
  def test_default_positions_are_0_to_t_minus_1(self, positional):
    params = models_test.get_params('transformer', positional=positional)
    tokens = models_test.random_tokens(1, (B, T))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    # Equal but for float rounding: XLA fuses a gather and a slice apart.
    np.testing.assert_allclose(
      self._apply(positional, params, tokens, positions),
      self._apply(positional, params, tokens),
      rtol=1e-6,
      atol=1e-7,
    )

  def test_positions_pick_rows_of_the_learned_table(self):
    params = models_test.get_params('transformer')
    tokens = models_test.random_tokens(1, (B, 4))
    starts = np.array([3, 0, 2])  # Each row its own offset.
    positions = jnp.asarray(starts[:, None] + np.arange(4))
    got = self._apply('learned', params, tokens, positions)
    self.assertFalse(np.allclose(got, self._apply('learned', params, tokens)))
    for b, start in enumerate(starts):
      # Rows start.. of the table moved to rows 0..: the default positions.
      shifted = dict(params, pos_embed=jnp.roll(params['pos_embed'], -start, 0))
      np.testing.assert_allclose(
        got[b], self._apply('learned', shifted, tokens[b : b + 1])[0], rtol=1e-6, atol=1e-6
      )

  def test_sinusoidal_positions_are_rows_of_its_table(self):
    learned = models_test.get_params('transformer')
    as_learned = dict(learned, pos_embed=jnp.asarray(positional.sinusoidal_positions(T, D)))
    sinusoidal = {k: v for k, v in learned.items() if k != 'pos_embed'}
    tokens = models_test.random_tokens(2, (B, 5))
    positions = jnp.asarray(np.array([[2], [0], [1]]) + np.arange(5))
    np.testing.assert_array_equal(
      self._apply('sinusoidal', sinusoidal, tokens, positions),
      self._apply('learned', as_learned, tokens, positions),
    )

  def test_a_position_past_the_context_reads_nan(self):
    params = models_test.get_params('transformer')
    tokens = models_test.random_tokens(1, (1, 2))
    logits = self._apply('learned', params, tokens, jnp.asarray([[T - 1, T]]))
    self.assertTrue(np.isnan(logits[0, 1]).all())  # Not a clamped row T - 1.


if __name__ == '__main__':
  absltest.main()
