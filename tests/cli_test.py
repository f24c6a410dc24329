"""Every command-line mistake ends with one `error:` line, exit 2, no traceback.

Each case runs `python -m research.main` in a process of its own, as a user
would (forked from a preloaded interpreter: `test_util.forked`): absl flags
are process-global, and the point is what the user sees.
"""

import os
import subprocess

from absl.testing import absltest

from tests import test_util


_run = test_util.run_module


def _run_main(args: list[str]) -> subprocess.CompletedProcess:
  return _run(['research.main', *args])


class CliTest(absltest.TestCase):
  def test_each_class_of_mistake_is_one_error_line(self):
    tmp = self.create_tempdir().full_path
    corpus = test_util.write_corpus(tmp)
    broken = os.path.join(tmp, 'broken.py')
    with open(broken, 'w') as f:
      f.write('def get_config(:\n  pass\n')
    raises = os.path.join(tmp, 'raises.py')
    with open(raises, 'w') as f:
      f.write('def get_config(arg=None):\n  return {}["x"]\n')
    wd = f'--workdir={tmp}/wd'
    default = '--config=configs/default.py'
    cpu = '--config=configs/shakespeare_char.py:cpu'
    # (arguments, what the one line must say)
    cases = [
      ([default, wd, '--config.no_such_key=1'], r"has no key 'no_such_key'\. Closest valid keys: "),
      ([default, wd, '--config.model.hiden_size=3'], r'Closest valid keys: model\.hidden_size'),
      (
        ['--config=configs/no_such_file.py', wd],
        r'does not exist\. Config files: .*configs/default\.py',
      ),
      (['--config=configs', wd], r"'configs' is not a file"),
      ([f'--config={broken}', wd], r'failed to load \(line 1\): SyntaxError'),
      ([f'--config={raises}', wd], r"failed to load: KeyError: 'x'"),
      (
        ['--config=configs/ptb_lstm.py:huge', wd],
        r"Unknown config variant 'huge'; valid variants: \['audit', 'audit_dp', 'large', 'medium', 'small'\]",
      ),
      (
        [default, wd, '--config.num_train_steps=lots'],
        r'config\.num_train_steps takes an integer \(default -1\)',
      ),
      ([default, wd, '--config.eval_on_test=maybe'], r'takes True or False'),
      ([default, wd, '--config.model=3'], r'config\.model is a group of keys'),
      ([default, wd, '--mode=fit'], r'value should be one of <train\|eval\|audit>'),
      (
        [default, wd, '--no_such_flag=1'],
        r"Unknown command line flag 'no_such_flag'\. Flags: --config, --fresh, --mode, --workdir",
      ),
      ([wd], r'--config is required, e.g\. --config=configs/default\.py'),
      ([default], r'--workdir is required'),
      ([default, wd, 'extra'], r"unexpected arguments \['extra'\]"),
      (
        [default, wd, '--config.optim.learning_rate=0'],
        r'config\.optim\.learning_rate=0\.0 must be positive',
      ),
      (
        [default, wd, '--config.model.dropout_rate=1'],
        r'config\.model\.dropout_rate=1\.0 must be in \[0, 1\)',
      ),
      (
        [cpu, wd, '--config.model.num_heads=5'],
        r'd_model=128 is not divisible by config\.model\.num_heads=5',
      ),
      (
        [cpu, wd, '--config.data.name=text_file', f'--config.data.path={tmp}'],
        r"config\.data\.path='.*' is a folder; data\.name='text_file' reads one "
        r'UTF-8 text file',
      ),
      (
        [default, wd, f'--config.data.path={corpus}'],
        r'is not a folder; data\.name=.ptb. reads a folder',
      ),
      (
        [default, wd, f'--config.data.tfds_dir={corpus}'],
        r'config\.data\.tfds_dir=.* is not a folder',
      ),
      (
        [default, wd, '--config.optim.grad_accum_steps=3'],
        r'grad_accum_steps=3 does not divide config\.data\.batch_size=20',
      ),
    ]
    results = test_util.run_module_cases('research.main', [args for args, _ in cases])
    for (args, pattern), result in zip(cases, results):
      with self.subTest(args=' '.join(args)):
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 2, output)
        self.assertNotIn('Traceback', output)
        errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
        self.assertLen(errors, 1, output)
        self.assertRegex(errors[0], pattern)
        # Parsing fails before anything runs: nothing else was printed.
        self.assertEqual(result.stdout, '', output)
        self.assertEqual(result.stderr.strip(), errors[0])

  def test_the_experiment_runner_fails_in_one_line_too(self):
    cases = [
      (['run'], r'expected run\|report\|status and an experiment folder'),
      (
        ['run', 'experiments/zaremba2014', '--no_such_flag'],
        r"Unknown command line flag 'no_such_flag'\. Flags: --cells",
      ),
      (['run', 'experiments/zaremba2014', '--parallel=x'], r'flag --parallel=x: invalid literal'),
    ]
    results = test_util.run_module_cases('research.experiments', [args for args, _ in cases])
    for (args, pattern), result in zip(cases, results):
      self.assertEqual(result.returncode, 2, result.stderr)
      self.assertNotIn('Traceback', result.stderr)
      self.assertRegex(result.stderr.strip(), '^error: ' + pattern)
      self.assertLen(result.stderr.strip().splitlines(), 1)

  def test_a_workdir_that_is_a_file_is_one_error_line(self):
    tmp = self.create_tempdir().full_path
    config = os.path.join(tmp, 'tiny.py')
    corpus = test_util.write_corpus(tmp)
    with open(config, 'w') as f:
      f.write(
        'from tests import test_util\n'
        'def get_config(arg=None):\n'
        f'  c = test_util.tiny_config({tmp!r})\n'
        '  c.unlock()\n'
        f'  c.data.path = {corpus!r}\n'
        '  return c\n'
      )
    result = _run_main([f'--config={config}', f'--workdir={corpus}'])
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    self.assertRegex(result.stderr, r'error: Cannot write to the workdir')


if __name__ == '__main__':
  absltest.main()
