"""Pre-train, then fine-tune: config.init_from loads parameters only, a
fine-tuning run resumes its own checkpoints, optim.frozen holds parameters
exactly, and mismatches are refused listing what differs."""

import contextlib
import io
import os

import numpy as np
from absl.testing import absltest

from experiments.finetune_transfer import prepare_kjv
from research import config_checks
from research import train
from tests import test_util


def _run(config, workdir):
  with contextlib.redirect_stdout(io.StringIO()) as out:
    train.train_and_evaluate(config, workdir)
  return out.getvalue()


def _config(tmp, **keys):
  config = test_util.tiny_config(tmp)
  with config.unlocked():
    config.num_train_steps = 4
    config.sample.num_tokens = 0
    for key, value in keys.items():
      parent, _, leaf = key.rpartition('.')
      (config.get(parent) if parent else config)[leaf] = value
  return config


class FinetuneTest(absltest.TestCase):
  def test_init_from_frozen_resume_and_mismatch(self):
    tmp = self.create_tempdir().full_path
    pretrained = os.path.join(tmp, 'pre')
    _run(_config(tmp), pretrained)
    before = test_util.final_state(_config(tmp), pretrained).params

    tuned = os.path.join(tmp, 'tuned')
    config = _config(tmp, init_from=pretrained, seed=7, **{'optim.frozen': '^embed/'})
    log = _run(config, tuned)
    self.assertIn(f'Parameters from {pretrained}/checkpoints step 4 (config.init_from)', log)
    with open(os.path.join(tuned, 'MODEL_CARD.md'), encoding='utf-8') as f:
      self.assertIn(f'Initialised from `{pretrained}`', f.read())
    after = test_util.final_state(config, tuned)
    self.assertEqual(int(after.step), 4)  # Its own steps, from 0.
    np.testing.assert_array_equal(after.params['embed']['embedding'], before['embed']['embedding'])
    self.assertFalse(np.array_equal(after.params['softmax']['kernel'], before['softmax']['kernel']))
    # Again: the run resumes its own checkpoint, not the pre-trained one.
    log = _run(config, tuned)
    self.assertIn('Resuming from the checkpoint at step 4', log)
    self.assertNotIn('config.init_from)', log)

    # A checkpoint step folder works too; other shapes are refused, listed.
    step_folder = os.path.join(pretrained, 'checkpoints', '4')
    _run(_config(tmp, init_from=step_folder), os.path.join(tmp, 'from_step'))
    with self.assertRaisesRegex(
      ValueError, r'does not fit this run: embed\.embedding: \(17, 16\) -> \(17, 24\); lstm_0'
    ):
      _run(_config(tmp, init_from=pretrained, **{'model.hidden_size': 24}), tmp + '/wider')
    with self.assertRaisesRegex(ValueError, 'is neither a workdir'):
      _run(_config(tmp, init_from=tmp + '/nowhere'), tmp + '/x')

  def test_bytes_carry_a_model_from_one_corpus_to_another(self):
    tmp = self.create_tempdir().full_path
    other = os.path.join(tmp, 'other.txt')
    with open(other, 'w', encoding='utf-8') as f:
      f.write('Thou art Zeus; quoth (he) 17 times!\n' * 200)  # Characters the first lacks.
    pretrained = os.path.join(tmp, 'pre')
    _run(_config(tmp, **{'data.level': 'byte'}), pretrained)
    log = _run(
      _config(tmp, init_from=pretrained, **{'data.level': 'byte', 'data.path': other}),
      os.path.join(tmp, 'tuned'),
    )
    self.assertIn(f'Parameters from {pretrained}/checkpoints step 4 (config.init_from)', log)
    # At the character level the two corpora have two vocabularies: refused, named.
    _run(_config(tmp), os.path.join(tmp, 'pre_char'))
    with self.assertRaisesRegex(ValueError, r"tokenizer: 'char:\w+' -> 'char:\w+'"):
      _run(
        _config(tmp, init_from=os.path.join(tmp, 'pre_char'), **{'data.path': other}),
        os.path.join(tmp, 'tuned_char'),
      )

  def test_prepare_kjv_keeps_headings_and_verses_without_numbers(self):
    dump = '\nGenesis 1\n\n  1 In the beginning.\n  2 And the earth.\n\n1 John 5\n\n  21 Amen.\n'
    text, chapters, verses = prepare_kjv.convert(dump)
    self.assertEqual(text, 'Genesis 1\nIn the beginning.\nAnd the earth.\n\n1 John 5\nAmen.\n')
    self.assertEqual((chapters, verses), (2, 3))
    with self.assertRaisesRegex(ValueError, 'Neither a chapter heading nor a numbered verse'):
      prepare_kjv.convert('Genesis 1\n  1 In.\n<html>\n')

  def test_frozen_patterns_are_checked(self):
    tmp = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, r"config.optim.frozen='\[' must be a regular"):
      config_checks.check(_config(tmp, **{'optim.frozen': '['}))
    with self.assertRaisesRegex(ValueError, "frozen='nothing_here' matches no parameter"):
      _run(_config(tmp, **{'optim.frozen': 'nothing_here'}), tmp + '/a')
    with self.assertRaisesRegex(ValueError, 'freezes every parameter'):
      _run(_config(tmp, **{'optim.frozen': '.'}), tmp + '/b')


if __name__ == '__main__':
  absltest.main()
