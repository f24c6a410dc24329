"""research.generate: samples from a trained workdir, seeded, batched and
streamed; bad prompts and steps refused; and the command line end to end."""

import contextlib
import io
import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from research import generate
from research import train
from research.data import tokenizers
from research import workdir as workdir_lib
from tests import test_util


def _trained(tmp, model, level):
  config = test_util.tiny_config(tmp, model=model, level=level)
  with config.unlocked():
    config.sample.num_tokens = 0
    config.num_train_steps = 4  # What is sampled does not need a good model.
  workdir = os.path.join(tmp, f'{model}_{level}')
  with contextlib.redirect_stdout(io.StringIO()):
    train.train_and_evaluate(config, workdir)
  return workdir


class GenerateTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    for name in ('t', 'l'):
      os.makedirs(os.path.join(cls.tmp, name))
    cls.transformer = _trained(os.path.join(cls.tmp, 't'), 'transformer', 'char')
    cls.lstm = _trained(os.path.join(cls.tmp, 'l'), 'lstm', 'word')

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_same_seed_same_text_and_batched_samples(self):
    one = generate.generate(self.transformer, 'the ', max_new_tokens=6, seed=3)
    self.assertEqual(one, generate.generate(self.transformer, 'the ', max_new_tokens=6, seed=3))
    prompt, samples = one
    self.assertEqual(prompt, 'the ')
    self.assertLen(samples, 1)
    self.assertLen(samples[0], 6)  # Characters: one per token.
    _, three = generate.generate(
      self.transformer, 'the ', num_samples=3, max_new_tokens=20, seed=3, top_k=0
    )
    self.assertLen(three, 3)
    self.assertLen(set(three), 3)  # Rows draw their own tokens.
    # Past the context of 11 the window slides; the sample still has its length.
    _, long = generate.generate(self.transformer, 'the ', max_new_tokens=30, seed=1)
    self.assertLen(long[0], 30)

  def test_a_single_sample_streams_what_it_returns(self):
    with contextlib.redirect_stdout(io.StringIO()) as out:
      prompt, samples = generate.generate(
        self.lstm, 'the cat', max_new_tokens=8, seed=0, stream=True
      )
    self.assertEqual(out.getvalue(), prompt + samples[0] + '\n')
    self.assertEqual(prompt, 'the cat')  # The line goes on: no closing <eos>.

  def test_a_stream_of_bytes_shows_a_character_once_it_is_complete(self):
    stream = generate._Stream(tokenizers.ByteTokenizer(), list(b'Caf'))
    shown = []
    for byte in 'é!'.encode():
      with contextlib.redirect_stdout(io.StringIO()) as out:
        stream(np.array([byte]))
      shown.append(out.getvalue())
    self.assertEqual(shown, ['', 'é', '!'])

  def test_bad_prompts_and_steps_are_refused(self):
    with self.assertRaisesRegex(ValueError, 'The prompt cannot be encoded'):
      generate.generate(self.transformer, 'the \u00e9t\u00e9', max_new_tokens=2)
    with self.assertRaisesRegex(ValueError, 'The prompt is 20 tokens, longer than the 11'):
      generate.generate(self.transformer, 'the ' * 5, max_new_tokens=2)
    # Unusable workdirs: tests/workdir_tools_test.py has every case.
    with self.assertRaisesRegex(ValueError, r'--step=5 is not a checkpoint of .*; it has steps'):
      generate.generate(self.transformer, 'the ', step=5)
    with self.assertRaisesRegex(ValueError, r'nothing does not exist\. Point --workdir'):
      generate.generate(os.path.join(self.tmp, 'nothing'), 'the ')
    with contextlib.redirect_stderr(io.StringIO()) as err:
      prompt, _ = generate.generate(self.lstm, 'the zebra', max_new_tokens=2)
    self.assertEqual(prompt, 'the <unk>')
    self.assertIn('read as <unk>: zebra', err.getvalue())

  def test_a_config_saved_before_newer_keys_gets_their_defaults(self):
    saved = {'model': {'name': 'transformer', 'd_model': 16}, 'data': {'name': 'ptb'}}
    filled = workdir_lib.with_defaults(saved)
    self.assertEqual(filled['model']['d_model'], 16)  # Saved values win.
    self.assertEqual(filled['model']['positional'], 'learned')  # The family's default.
    self.assertEqual(filled['data']['spm_model_type'], 'bpe')
    self.assertEqual(filled['optim']['frozen'], '')
    self.assertIsInstance(filled['audit']['repetitions'], tuple)

  def test_command_line(self):
    common = [f'--workdir={self.transformer}']
    ok, bad = test_util.run_module_cases(
      'research.generate',
      [
        common + ['--prompt=the ', '--max_new_tokens=5', '--num_samples=2'],
        common + ['--prompt=a', '--prompt_file=/nonexistent'],
      ],
    )
    self.assertEqual(ok.returncode, 0, ok.stderr[-2000:])
    self.assertIn('--- sample 2 of 2 ---\nthe ', ok.stdout)
    self.assertEqual(bad.returncode, 2)
    self.assertEqual(
      [l for l in bad.stderr.splitlines() if l.startswith('error:')],
      ['error: give --prompt or --prompt_file, not both.'],
    )


if __name__ == '__main__':
  absltest.main()
