"""DP noise that stays secret (research/privacy/noise.py): a private run draws
its noise and Poisson sampling from OS randomness kept only in its checkpoints,
resumes with it bit for bit, writes it nowhere else, and
privacy.reproducible_noise (or a checkpoint from before) keeps them seeded and
says that epsilon then assumes the seed is secret."""

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

from research import checkpoint
from research import components
from research import sharding
from research import train
from research import workdir as workdir_lib
from research.data import pipeline
from research.privacy import noise
from tests import test_util

_STEPS = 4  # Checkpoints at 2 and 4.
_CAVEAT = '(seeded noise: assumes config.seed is secret)'


def _config(directory, **privacy):
  config = test_util.tiny_config(directory, model='lstm')  # With dropout.
  with config.unlocked():
    config.privacy.enabled = True
    config.privacy.noise_multiplier = 1.0
    config.privacy.update(privacy)
    config.num_train_steps = _STEPS
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 1000
    config.sample.num_tokens = 5
  return config


class _Crash(Exception):
  pass


def _train(config, workdir, crash_in_step=None):
  """Trains in `workdir` (raising in the batch of this segment's
  `crash_in_step`-th step, if given); returns (what it printed, the inputs
  of each global batch it trained on)."""
  real, inputs = sharding.global_batch, []

  def batch(local, mesh):
    if len(inputs) + 1 == crash_in_step:
      raise _Crash()
    inputs.append(np.array(local['inputs']))
    return real(local, mesh)

  out = io.StringIO()
  with (
    mock.patch.object(sharding, 'global_batch', batch),
    contextlib.redirect_stdout(out),
    contextlib.redirect_stderr(out),
  ):
    try:
      train.train_and_evaluate(config, workdir)
    except _Crash:
      pass
  return out.getvalue(), inputs


def _noise_item(workdir, step=None):
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=100)
  item = checkpoint.restore_noise(manager, step or checkpoint.latest_step(manager))
  manager.close()
  return item


def _records(workdir, split='train'):
  """The metrics.jsonl records of `split`, without their wall-clock time."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [r for r in map(json.loads, f) if r['split'] == split]
  return [{k: v for k, v in r.items() if k != 'time'} for r in records]


def _card(workdir):
  with open(os.path.join(workdir, 'MODEL_CARD.md')) as f:
    return f.read()


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


class SecretNoiseTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.started = time.time()
    cls.tmp = tempfile.mkdtemp()
    cls.config = _config(cls.tmp)
    cls.seeded_config = _config(cls.tmp, reproducible_noise=True)
    cls.runs = {}  # name: (workdir, console, inputs by step)
    for name, config in (('a', cls.config), ('b', cls.config), ('seeded_a', cls.seeded_config)):
      workdir = os.path.join(cls.tmp, name)
      cls.runs[name] = (workdir, *_train(config, workdir))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_two_runs_of_one_config_draw_different_noise_and_batches(self):
    (a, _, inputs_a), (b, _, inputs_b) = self.runs['a'], self.runs['b']
    secrets_ = [_noise_item(w) for w in (a, b)]
    for item in secrets_:
      self.assertEqual(item['noise'], 'secret')
      self.assertLen(bytes.fromhex(item['secret']), 32)
    self.assertNotEqual(secrets_[0]['secret'], secrets_[1]['secret'])
    # Other sequences sampled in the first step (about 8 of 1,011 each).
    self.assertFalse(np.array_equal(inputs_a[0], inputs_b[0]))
    # Noise on every coordinate: every parameter array differs.
    params = [test_util.final_state(self.config, w).params for w in (a, b)]
    for x, y in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
      self.assertFalse(np.array_equal(x, y))

  def test_a_killed_run_resumes_bit_identically(self):
    straight = self.runs['a'][0]
    secret = bytes.fromhex(_noise_item(straight)['secret'])
    chained = os.path.join(self.tmp, 'chained')
    # The OS gives this run the straight run's secret; it dies in step 4, after
    # the checkpoint of step 2 (step 3 is lost).
    with mock.patch.object(noise.secrets, 'token_bytes', return_value=secret):
      _train(self.config, chained, crash_in_step=2 + 2)
    self.assertEqual(_noise_item(chained, 2)['secret'], secret.hex())
    # Resumed, it must read the secret back, not ask the OS for another.
    with mock.patch.object(noise.secrets, 'token_bytes', return_value=b'\1' * 32) as os_draw:
      console, inputs = _train(self.config, chained)
    self.assertEqual(os_draw.call_count, 0)
    self.assertIn('Resuming from the checkpoint at step 2.', console)
    self.assertLen(inputs, _STEPS - 2)
    _assert_same(
      test_util.final_state(self.config, straight), test_util.final_state(self.config, chained)
    )
    np.testing.assert_array_equal(inputs[-1], self.runs['a'][2][-1])
    self.assertEqual(_records(straight, 'test'), _records(chained, 'test'))
    # The accountant's state resumes too: the last step spends the same epsilon.
    last = [
      {k: _records(w)[-1][k] for k in ('step', 'loss', 'epsilon')} for w in (straight, chained)
    ]
    self.assertEqual(last[0], last[1])
    self.assertEqual(last[0]['step'], _STEPS)

  def test_the_secret_is_written_nowhere_outside_the_checkpoints(self):
    workdir, console, _ = self.runs['a']
    secret = bytes.fromhex(_noise_item(workdir)['secret'])
    source = noise.Source(secret, private=True)
    sampling = source.sampling_seed(self.config.seed)
    step_key = source.step_key(jax.random.key(0))
    forms = {
      'hex': secret.hex().encode(),
      'HEX': secret.hex().upper().encode(),
      'raw': secret,
      'sampling seed': str(sampling).encode(),
      'sampling seed hex': f'{sampling:x}'.encode(),
      'step key': np.asarray(jax.random.key_data(step_key)).tobytes(),
    }
    self.assertNotIn(secret.hex(), repr(source))
    for name, form in forms.items():
      self.assertNotIn(form.decode('latin-1'), console, f'the {name} was printed')
    scanned, in_checkpoints = [], False
    for folder, _, files in os.walk(workdir):
      for file in files:
        path = os.path.join(folder, file)
        with open(path, 'rb') as f:
          content = f.read()
        if os.path.relpath(path, workdir).startswith('checkpoints' + os.sep):
          in_checkpoints |= forms['hex'] in content
          continue
        scanned.append(os.path.relpath(path, workdir))
        for name, form in forms.items():
          self.assertNotIn(form, content, f'the {name} is in {path}')
    self.assertTrue(in_checkpoints)  # The scan can find it where it is.
    # Nor in the programs compiled meanwhile (tests/conftest.py's persistent cache): the
    # key is an argument of the step, never a constant of it.
    cache = jax.config.jax_compilation_cache_dir
    for entry in os.scandir(cache) if cache and os.path.isdir(cache) else ():
      if entry.is_file() and entry.stat().st_mtime >= self.started:
        with open(entry.path, 'rb') as f:
          content = f.read()
        for name, form in forms.items():
          self.assertNotIn(form, content, f'the {name} is in {entry.path}')
    # The run's own files, TensorBoard's and the model card among them.
    for expected in ('config.json', 'metrics.jsonl', 'runs.jsonl', 'MODEL_CARD.md'):
      self.assertIn(expected, scanned)
    self.assertTrue(any(p.startswith('tensorboard') for p in scanned), scanned)
    # Secret noise carries no caveat.
    self.assertNotIn(_CAVEAT, console)
    self.assertEqual({r['seeded_noise'] for r in _records(workdir)}, {0.0})
    self.assertIn('drawn from a secret of the OS, kept only in the checkpoints', _card(workdir))

  def test_reproducible_noise_repeats_and_says_so(self):
    workdir, console, inputs = self.runs['seeded_a']
    again = os.path.join(self.tmp, 'seeded_b')
    _, inputs_again = _train(self.seeded_config, again)
    _assert_same(
      test_util.final_state(self.seeded_config, workdir),
      test_util.final_state(self.seeded_config, again),
    )
    np.testing.assert_array_equal(np.stack(inputs), np.stack(inputs_again))
    # Sampled from config.seed and the step, as before secret noise.
    parts = components.build(self.seeded_config)
    first = pipeline.poisson_batch(
      parts.corpus.splits['train'],
      self.seeded_config.data.seq_len,
      parts.privacy.sampling_rate,
      parts.train_rows,
      self.seeded_config.seed,
      0,
    )
    np.testing.assert_array_equal(inputs[0], first['inputs'])
    self.assertEqual(_noise_item(workdir), {'noise': 'seeded'})
    # Every epsilon printed or written says what it assumes.
    self.assertRegex(console, r'step 2/4 .* \| eps \d\.\d{3} .*' + re.escape(_CAVEAT))
    self.assertRegex(console, r'DP-SGD spent epsilon \d\.\d{4} .*' + re.escape(_CAVEAT))
    self.assertEqual({r['seeded_noise'] for r in _records(workdir)}, {1.0})
    self.assertIn('epsilon assumes the seed is secret', _card(workdir))

  def test_a_checkpoint_from_before_secret_noise_resumes_seeded(self):
    # Step 2 of the seeded run as the code before secret noise wrote it: no
    # noise item, no privacy.reproducible_noise in its config.
    seeded = self.runs['seeded_a'][0]
    legacy = os.path.join(self.tmp, 'legacy')
    step_dir = os.path.join(legacy, 'checkpoints', '2')
    shutil.copytree(os.path.join(seeded, 'checkpoints', '2'), step_dir)
    shutil.rmtree(os.path.join(step_dir, 'noise'))
    config_file = os.path.join(step_dir, 'config', 'metadata')
    with open(config_file) as f:
      saved = json.load(f)
    del saved['privacy']['reproducible_noise']
    with open(config_file, 'w') as f:
      json.dump(saved, f)
    self.assertIsNone(_noise_item(legacy, 2))
    read_back, _ = workdir_lib.saved_config(legacy, 2)
    self.assertTrue(read_back.privacy.reproducible_noise)  # What that run did.
    # Resumed under the default (secret) config, it goes on with seeded noise.
    with mock.patch.object(noise.secrets, 'token_bytes') as os_draw:
      console, _ = _train(self.config, legacy)
    self.assertEqual(os_draw.call_count, 0)
    self.assertEqual(console.count('written before DP noise was secret'), 1)
    _assert_same(
      test_util.final_state(self.seeded_config, seeded), test_util.final_state(self.config, legacy)
    )
    self.assertIn(_CAVEAT, console)
    self.assertEqual({r['seeded_noise'] for r in _records(legacy)}, {1.0})
    self.assertEqual(_noise_item(legacy), {'noise': 'seeded'})
    self.assertIn('epsilon assumes the seed is secret', _card(legacy))


class SourceTest(absltest.TestCase):
  def test_seeded_source_passes_the_seed_through_and_secret_one_does_not(self):
    key = jax.random.key(7)
    seeded = noise.Source(None, private=True)
    self.assertEqual(seeded.sampling_seed(11), 11)
    self.assertIs(seeded.step_key(key), key)
    self.assertEqual(seeded.record(), {'noise': 'seeded'})
    self.assertIsNone(noise.Source().record())  # Not private: no checkpoint item.
    secret = noise.Source(bytes(range(32)), private=True)
    self.assertNotEqual(secret.sampling_seed(11), 11)
    self.assertFalse(
      np.array_equal(jax.random.key_data(secret.step_key(key)), jax.random.key_data(key))
    )
    self.assertEqual(secret.record(), {'noise': 'secret', 'secret': bytes(range(32)).hex()})
    self.assertNotIn(bytes(range(32)).hex(), repr(secret))


if __name__ == '__main__':
  absltest.main()
