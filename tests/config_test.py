"""Config errors fail early with a message naming the key or the valid names."""

import glob
import os
import re

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized

from research import components
from research import data
from research import models
from research import optim
from research import sharding
from tests import test_util

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigTest(parameterized.TestCase):
  def test_every_config_and_variant_loads_with_the_shared_keys(self):
    variants = {
      'default.py': [None],
      'ptb_lstm.py': ['small', 'medium', 'large'],
      'ptb_transformer.py': ['small'],
      'shakespeare_char.py': ['full', 'cpu', 'gpt2_small'],
      'wortsman2024.py': ['w64', 'w128'],
    }
    self.assertSetEqual(
      set(variants),
      {os.path.basename(p) for p in glob.glob(os.path.join(_ROOT, 'configs', '*.py'))}
      - {'__init__.py', 'common.py'},
    )
    for name, names in variants.items():
      for variant in names:
        spec = os.path.join(_ROOT, 'configs', name) + (f':{variant}' if variant else '')
        config = test_util.parse_config_flags(f'--config={spec}')
        for key in (
          'seed',
          'num_train_steps',
          'log_every_steps',
          'eval_every_steps',
          'checkpoint_every_steps',
          'data.name',
          'data.path',
          'model.name',
          'num_epochs',
        ):
          self.assertIn(key.split('.')[-1], config if '.' not in key else config[key.split('.')[0]])
        components.validate(config)

  def test_zaremba_hyperparameters(self):
    path = os.path.join(_ROOT, 'configs', 'ptb_lstm.py')
    want = {
      'small': (200, 20, 0.1, 0.0, 4, 0.5, 13, 5.0),
      'medium': (650, 35, 0.05, 0.5, 6, 1 / 1.2, 39, 5.0),
      'large': (1500, 35, 0.04, 0.65, 14, 1 / 1.15, 55, 10.0),
    }
    for variant, figures in want.items():
      c = test_util.parse_config_flags(f'--config={path}:{variant}')
      got = (
        c.model.hidden_size,
        c.data.seq_len,
        c.model.init_scale,
        c.model.dropout_rate,
        c.optim.decay_after_epochs,
        c.optim.decay_factor,
        c.num_epochs,
        c.optim.grad_clip_norm,
      )
      self.assertEqual(got, figures)
      self.assertEqual(
        (c.model.num_layers, c.data.batch_size, c.optim.learning_rate, c.optim.name),
        (2, 20, 1.0, 'sgd'),
      )

  def test_unknown_key_names_the_key(self):
    path = os.path.join(_ROOT, 'configs', 'default.py')
    with self.assertRaisesRegex(
      (AttributeError, KeyError), 'hiden_size.*Did you mean "hidden_size"'
    ):
      test_util.parse_config_flags(f'--config={path}', '--config.model.hiden_size=3')

  def test_wrong_type_names_the_key(self):
    path = os.path.join(_ROOT, 'configs', 'default.py')
    with self.assertRaisesRegex(flags.IllegalFlagValueError, 'num_train_steps'):
      test_util.parse_config_flags(f'--config={path}', '--config.num_train_steps=lots')

  def test_unknown_variant_lists_the_variants(self):
    path = os.path.join(_ROOT, 'configs', 'ptb_lstm.py')
    with self.assertRaisesRegex(
      Exception, r"valid variants: \['audit', 'audit_dp', 'large', 'medium', 'small'\]"
    ):
      test_util.parse_config_flags(f'--config={path}:huge')

  @parameterized.parameters(
    ('model.name', 'gru', 'known models: ' + re.escape(str(sorted(models.MODELS)))),
    ('data.name', 'wikitext', 'known datasets: ' + re.escape(str(sorted(data.DATASETS)))),
    ('optim.name', 'no_such_rule', 'known optimizers: ' + re.escape(str(sorted(optim.OPTIMIZERS)))),
    ('model.positional', 'rotary', 'sinusoidal'),
  )
  def test_unknown_names_list_the_valid_ones(self, key, value, message):
    path = os.path.join(_ROOT, 'configs', 'shakespeare_char.py')
    config = test_util.parse_config_flags(f'--config={path}:cpu', f'--config.{key}={value}')
    # validate() runs before any data is read or anything is compiled.
    with self.assertRaisesRegex(ValueError, message):
      components.validate(config)

  def test_bad_mesh_names_the_sizes(self):
    path = os.path.join(_ROOT, 'configs', 'default.py')
    config = test_util.parse_config_flags(f'--config={path}', '--config.mesh.tensor=3')
    with self.assertRaisesRegex(ValueError, '1 devices cannot be split'):
      sharding.mesh_shape(config.mesh, 1)
    config.mesh.data = 2
    with self.assertRaisesRegex(ValueError, 'needs 6 devices but 8 exist'):
      sharding.mesh_shape(config.mesh, 8)


if __name__ == '__main__':
  absltest.main()
