"""Bad input to `research.main` (a broken config, unreadable data, a workdir
that cannot be written, ...) stops with one `error:` line and status 2, and
nothing already written is lost."""

import os
import textwrap

import numpy as np
from absl.testing import absltest

from research import faults
from research import train
from tests import test_util


def _errors(out):
  """(exit status, the `error:` lines) of a `research.main` run."""
  return out.returncode, [l for l in out.stderr.splitlines() if l.startswith('error:')]


class BadInputTest(absltest.TestCase):
  def _config_file(self, tmp, name, body):
    path = os.path.join(tmp, f'config_{name.replace(" ", "_")}.py')
    with open(path, 'w') as f:
      f.write(
        textwrap.dedent(f"""\
          from tests import test_util
          def get_config():
            c = test_util.tiny_config({tmp!r})
          """)
        + textwrap.indent(textwrap.dedent(body) + '\n', '  ')
        + '  return c\n'
      )
    return path

  def test_each_bad_input_gives_one_error_line_and_status_2(self):
    tmp = self.create_tempdir().full_path
    empty = os.path.join(tmp, 'empty.txt')
    open(empty, 'w').close()
    latin1 = os.path.join(tmp, 'latin1.txt')
    with open(latin1, 'wb') as f:
      f.write('café au lait\n'.encode('latin-1') * 50)
    blocker = os.path.join(tmp, 'a_file')
    open(blocker, 'w').close()
    cases = {
      'empty file': (f'c.data.path = {empty!r}', 'is empty'),
      'not UTF-8': (f'c.data.path = {latin1!r}', 'UTF-8'),
      'split too small': ('c.data.batch_size = 2000', 'too small'),
      'unknown dataset': (
        "c.data.name = 'nope'",
        "config.data.name='nope' must be one of the known datasets",
      ),
      'unknown model': (
        "c.model.name = 'nope'",
        "config.model.name='nope' must be one of the known models",
      ),
    }
    runs = {
      name: [
        f'--config={self._config_file(tmp, name, body)}',
        f'--workdir={os.path.join(tmp, "w_" + name[:5])}',
      ]
      for name, (body, _) in cases.items()
    }
    runs['unknown variant'] = ['--config=configs/ptb_lstm.py:huge', f'--workdir={tmp}/v']
    runs['workdir cannot be written'] = [
      f'--config={self._config_file(tmp, "plain", "")}',
      f'--workdir={blocker}/run',
    ]
    results = dict(zip(runs, test_util.run_module_cases('research.main', list(runs.values()))))
    for name, (_, message) in cases.items():
      with self.subTest(name):
        status, errors = _errors(results[name])
        self.assertEqual(status, faults.EXIT_BAD_INPUT)
        self.assertLen(errors, 1)
        self.assertIn(message, errors[0])
    with self.subTest('unknown variant'):
      status, errors = _errors(results['unknown variant'])
      self.assertNotEqual(status, 0)
    with self.subTest('workdir cannot be written'):
      status, errors = _errors(results['workdir cannot be written'])
      self.assertEqual(status, faults.EXIT_BAD_INPUT)
      self.assertIn('Cannot write to the workdir', errors[0])

  def test_a_single_giant_line_is_valid_input(self):
    tmp = self.create_tempdir().full_path
    path = os.path.join(tmp, 'one_line.txt')
    with open(path, 'w') as f:
      f.write(' '.join(['the cat sat on the mat'] * 20000))  # 460k chars, no newline.
    for level in ('char', 'word'):
      config = test_util.tiny_config(tmp)
      config.data.path, config.data.level = path, level
      config.num_train_steps = 2
      results = train.train_and_evaluate(config, os.path.join(tmp, level))
      self.assertTrue(np.isfinite(results['valid']['loss']))


if __name__ == '__main__':
  absltest.main()
