"""MODEL_CARD.md: written by every finished run and by --mode=eval, each field
read from the run itself."""

import contextlib
import io
import os

from absl.testing import absltest

from research import evaluate
from research import model_card
from research import train
from tests import test_util


def _card(workdir):
  with open(os.path.join(workdir, model_card.FILE), encoding='utf-8') as f:
    return f.read()


class ModelCardTest(absltest.TestCase):
  def test_every_field_comes_from_the_run(self):
    tmp = self.create_tempdir().full_path
    cards = {}
    for hidden, seed, steps in ((16, 0, 4), (24, 5, 6)):
      config = test_util.tiny_config(tmp)
      with config.unlocked():
        config.model.hidden_size = hidden
        config.seed = seed
        config.num_train_steps = steps
      workdir = os.path.join(tmp, f'h{hidden}')
      with contextlib.redirect_stdout(io.StringIO()):
        results = train.train_and_evaluate(config, workdir)
      cards[hidden] = card = _card(workdir)
      self.assertIn(f'"hidden_size": {hidden}', card)
      self.assertIn(f'trained for {steps} steps with seed {seed}', card)
      self.assertIn(f'valid: loss {results["valid"]["loss"]:,.4f}', card)
      self.assertIn(f'Training tokens: {steps * 8 * 11:,}', card)  # steps x 8 rows x 11.
      for section in (
        'Model details',
        'Intended use',
        'Training data',
        'Evaluation',
        'Compute',
        'Privacy',
        'Limitations',
        'Sample',
      ):
        self.assertIn(f'## {section}', card)
      self.assertIn('Not trained with differential privacy', card)
      self.assertIn('sha256 ', card)  # The text file's checksum.
      self.assertIn('Hardware: CPU', card)
    params = {h: [l for l in cards[h].splitlines() if l.startswith('- Parameters:')] for h in cards}
    self.assertNotEqual(params[16], params[24])
    # --mode=eval writes it again from its own scores.
    os.remove(os.path.join(tmp, 'h16', model_card.FILE))
    config = test_util.tiny_config(tmp)
    with config.unlocked():
      config.num_train_steps = 4
    with contextlib.redirect_stdout(io.StringIO()):
      evaluate.evaluate_checkpoint(config, os.path.join(tmp, 'h16'))
    self.assertIn('test: loss', _card(os.path.join(tmp, 'h16')))


if __name__ == '__main__':
  absltest.main()
