"""Config values that cannot mean anything are refused, naming the key."""

import dataclasses
import os
import re

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections

from research import checkpoint
from research import config_checks
from research import data
from research import losses
from research import models
from research import optim
from research import rules
from research.data import tokenizers
from research.models import attention
from research.models import positional
from research.models import transformer
from tests import test_util

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every variant of these; any other file in configs/ (a new family's) at its default.
_VARIANTS = {
  'default.py': [None],
  'ptb_lstm.py': ['small', 'medium', 'large'],
  'ptb_transformer.py': ['small'],
  'shakespeare_char.py': ['full', 'cpu', 'gpt2_small'],
}


def _configs():
  folder = os.path.join(_ROOT, 'configs')
  files = sorted(set(os.listdir(folder)) - {'__init__.py', 'common.py'})
  for name in (f for f in files if f.endswith('.py')):
    for variant in _VARIANTS.get(name, [None]):
      spec = os.path.join(_ROOT, 'configs', name) + (f':{variant}' if variant else '')
      yield spec, test_util.parse_config_flags(f'--config={spec}')


def _cpu_config() -> ml_collections.ConfigDict:
  spec = os.path.join(_ROOT, 'configs', 'shakespeare_char.py:cpu')
  return test_util.parse_config_flags(f'--config={spec}')


def _set(config: ml_collections.ConfigDict, key: str, value) -> None:
  node = config
  *parents, leaf = key.split('.')
  for part in parents:
    node = node[part]
  node[leaf] = value


class ConfigChecksTest(parameterized.TestCase):
  def test_every_key_of_every_config_has_a_rule_and_passes_it(self):
    families = set()
    for spec, config in _configs():
      keys = set(rules.flatten(config))
      known = set(config_checks.rules_for(config))
      self.assertSetEqual(keys - known, set(), f'{spec}: keys without a rule')
      self.assertSetEqual(known - keys, set(), f'{spec}: rules without a key')
      # The family's config object holds exactly the config's model keys.
      family = models.MODELS[config.model.name]
      fields = {f'model.{f.name}' for f in dataclasses.fields(family.config)}
      self.assertSetEqual(
        fields | {'model.name'}, {k for k in keys if k.startswith('model.')}, spec
      )
      config_checks.check(config)
      families.add(config.model.name)
    self.assertSetEqual(families, set(models.MODELS))  # Every family checked.

  @parameterized.parameters(
    ('optim.learning_rate', 0.0, 'must be positive'),
    ('optim.learning_rate', -1e-3, 'must be positive'),
    ('optim.learning_rate', float('nan'), 'must be positive'),
    ('optim.b2', 1.0, r'must be in \[0, 1\)'),
    ('optim.weight_decay', -0.1, 'must be at least 0'),
    ('optim.warmup_steps', -1, 'must be at least 0'),
    ('optim.grad_accum_steps', 0, 'must be at least 1'),
    ('optim.grad_accum_steps', 5, r'does not divide config\.data\.batch_size=12'),
    ('optim.min_learning_rate', 1.0, 'is above the peak'),
    ('data.batch_size', 0, 'must be at least 1'),
    ('data.seq_len', -5, 'must be at least 1'),
    ('data.level', 'word', "but data.name='tiny_shakespeare' is char level"),
    ('data.vocab_size', 100, 'only applies to'),
    ('seed', -1, r'must be in \[0, 4294967296\)'),
    ('log_every_steps', 0, 'must be at least 1'),
    ('keep_checkpoints', 0, 'must be at least 1'),
    ('num_epochs', -1, 'must be at least 0'),
    ('mesh.fsdp', 0, '-1 .the rest. or at least 1'),
    ('distributed.initialize', 'sometimes', 'one of'),
    ('distributed.coordinator_address', 'localhost', 'host:port'),
    ('sample.top_p', 0.0, r'must be in \(0, 1\]'),
    ('sample.top_k', -1, 'must be at least 0'),
    ('sample.temperature', -0.5, 'must be at least 0'),
    ('model.dropout_rate', 1.0, r'must be in \[0, 1\)'),
    ('model.num_layers', 0, 'must be at least 1'),
    ('model.num_heads', 5, 'is not divisible by config.model.num_heads=5'),
    ('model.d_ff', 0, 'must be at least 1'),
    ('model.attention', 'dot_product', 'has no dropout on the attention'),
    ('model.compute_dtype', 'float16', 'bfloat16'),
  )
  def test_meaningless_values_are_refused_naming_the_key(self, key, value, message):
    config = _cpu_config()
    with config.unlocked():
      if key == 'model.attention':
        config.model.dropout_rate = 0.1
      _set(config, key, value)
    with self.assertRaisesRegex(ValueError, message) as raised:
      config_checks.check(config)
    # The key with its value, not only in the --config flag that fixes it.
    self.assertRegex(str(raised.exception), rf'(?<!-)config\.{re.escape(key)}=')
    self.assertNotIn('\n', str(raised.exception))

  @parameterized.parameters(
    ('optim.name', optim.OPTIMIZERS),
    ('optim.loss', losses.OBJECTIVES),
    ('data.level', tokenizers.TOKENIZERS),
    ('model.name', models.MODELS),
    ('model.positional', positional.POSITIONAL),
    ('model.norm', transformer.NORMS),
    ('model.mlp', transformer.MLPS),
    ('model.attention', attention.ATTENTION_KINDS),
  )
  def test_an_unknown_name_is_refused_listing_its_registry(self, key, registry):
    config = _cpu_config()
    with config.unlocked():
      _set(config, key, 'no_such_name')
    with self.assertRaisesRegex(
      ValueError, rf"^config\.{re.escape(key)}='no_such_name' "
    ) as raised:
      config_checks.check(config)
    self.assertNotIn('\n', str(raised.exception))
    for name in registry:  # Built from the registry: a new name is listed too.
      self.assertIn(repr(name), str(raised.exception))

  def test_extrapolating_kinds_are_listed_from_the_registry(self):
    config = _cpu_config()
    with config.unlocked():
      config.model.positional = 'learned'
      config.eval.seq_len = config.data.seq_len + 1
    with self.assertRaisesRegex(ValueError, 'extrapolate') as raised:
      config_checks.check(config)
    fixed = [n for n, kind in positional.POSITIONAL.items() if kind.fixed_length]
    listed = str(raised.exception).rsplit('(', 1)[1].rstrip(').').split(', ')
    self.assertEqual(listed, [n for n in positional.POSITIONAL if n not in fixed])
    self.assertIn('learned', fixed)

  def test_lstm_rules(self):
    config = test_util.parse_config_flags(
      '--config=' + os.path.join(_ROOT, 'configs', 'default.py')
    )
    for key, value in (('init_scale', 0.0), ('hidden_size', 0)):
      bad = ml_collections.ConfigDict(config.to_dict())
      bad.model[key] = value
      with self.assertRaisesRegex(ValueError, f'config.model.{key}='):
        config_checks.check(bad)

  def test_paths_are_checked_before_they_are_opened(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp)
    config_checks.check(config)
    corpus = config.data.path
    cases = {
      ('text_file', tmp): 'is a folder',
      ('text_file', os.path.join(tmp, 'nope.txt')): 'does not exist',
      ('text_file', ''): 'reads one UTF-8 text file',
      ('tiny_shakespeare', tmp): 'is a folder',
      ('ptb', corpus): 'is not a folder',
    }
    for (name, path), message in cases.items():
      with self.subTest(name=name, path=path), config.unlocked():
        config.data.name, config.data.path = name, path
        config.data.level = data.fixed_level(name) or 'char'
        with self.assertRaisesRegex(ValueError, message):
          config_checks.check(config)
    with config.unlocked():
      config.data.name, config.data.path, config.data.level = 'text_file', corpus, 'char'
      config.data.tfds_dir = os.path.join(corpus, 'below_a_file')
      with self.assertRaisesRegex(ValueError, 'cannot be created'):
        config_checks.check(config)

  def test_character_configs_stay_character_level_on_a_text_file(self):
    tmp = self.create_tempdir().full_path
    corpus = test_util.write_corpus(tmp)
    spec = os.path.join(_ROOT, 'configs', 'shakespeare_char.py') + ':cpu'
    config = test_util.parse_config_flags(
      f'--config={spec}',
      '--config.data.name=text_file',
      f'--config.data.path={corpus}',
      f'--config.data.tfds_dir={tmp}/tfds',
    )
    config_checks.check(config)
    corpus_data = data.load_corpus(config.data)
    self.assertEqual(corpus_data.tokenizer.kind, 'char')
    self.assertEqual(set(corpus_data.splits), {'train', 'valid'})  # nanoGPT's 90/10
    # The word-level configs state their level too.
    for name in ('default.py', 'ptb_lstm.py'):
      word = test_util.parse_config_flags('--config=' + os.path.join(_ROOT, 'configs', name))
      self.assertEqual(word.data.level, 'word')


class ResumeCheckTest(absltest.TestCase):
  def test_a_key_added_after_a_checkpoint_is_not_a_difference(self):
    saved = {'model': {'name': 'transformer', 'd_model': 8}, 'data': {'name': 'ptb'}}
    current = {
      'model': {'name': 'transformer', 'd_model': 8, 'norm': 'layernorm'},
      'data': {'name': 'ptb'},
    }
    self.assertEqual(checkpoint.config_differences(saved, current), [])
    current['model']['d_model'] = 16
    del current['data']['name']
    self.assertEqual(
      checkpoint.config_differences(saved, current),
      ["data.name: 'ptb' -> '(absent)'", 'model.d_model: 8 -> 16'],
    )


if __name__ == '__main__':
  absltest.main()
