"""Every tool that reads a finished run (research.generate, research.compress,
--mode=eval, --mode=audit) reads its workdir the same way: one check
(`workdir.readable_workdir`) gives one `error:` line for every workdir it
cannot use, and the config is the one the run was trained with unless
--config is given."""

import concurrent.futures
import contextlib
import io
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import flagsaver

from research import cli
from research import compress
from research import faults
from research import generate
from research import train
from research import workdir as workdir_lib
from tests import test_util


_tool = test_util.run_module


def _errors(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.startswith('error:')]


class WorkdirToolsTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.config = test_util.tiny_config(cls.tmp)
    with cls.config.unlocked():
      cls.config.num_train_steps = 4
      cls.config.sample.num_tokens = 0
    cls.trained = os.path.join(cls.tmp, 'run')
    with contextlib.redirect_stdout(io.StringIO()):
      cls.results = train.train_and_evaluate(cls.config, cls.trained)
    # Folders no tool can use, each with what its one line must say.
    cls.file = test_util.write_corpus(cls.tmp)
    cls.empty = os.path.join(cls.tmp, 'empty')
    os.makedirs(os.path.join(cls.tmp, 'no_steps', 'checkpoints'))
    os.makedirs(cls.empty)
    cls.unusable = {
      'missing': (os.path.join(cls.tmp, 'missing'), None, r'does not exist\. Point --workdir'),
      'a file': (cls.file, None, r"is a file, not a run's folder"),
      'no checkpoints/': (cls.empty, None, r'holds no checkpoint .*Train first'),
      'empty checkpoints/': (
        os.path.join(cls.tmp, 'no_steps'),
        None,
        r'holds no checkpoint .*Train first',
      ),
      'no such step': (cls.trained, 3, r'--step=3 is not a checkpoint of .*; it has steps 4\. '),
    }

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_the_one_check_names_each_unusable_workdir_and_creates_nothing(self):
    self.assertEqual(workdir_lib.readable_workdir(self.trained), 4)
    self.assertEqual(workdir_lib.readable_workdir(self.trained, 4), 4)
    for name, (path, step, pattern) in self.unusable.items():
      with self.subTest(name):
        with self.assertRaisesRegex(ValueError, pattern) as raised:
          workdir_lib.readable_workdir(path, step)
        self.assertNotIn('\n', str(raised.exception))
    self.assertFalse(os.path.exists(self.unusable['missing'][0]))
    self.assertFalse(os.path.exists(os.path.join(self.empty, 'checkpoints')))

  def test_an_unreadable_workdir_is_named(self):
    locked = os.path.join(self.tmp, 'locked')
    shutil.copytree(self.trained, locked)
    os.chmod(locked, 0)
    self.addCleanup(os.chmod, locked, 0o755)
    patch = contextlib.nullcontext()
    if os.geteuid() == 0:  # root reads every folder: the permission check is made to fail.
      real = os.access
      patch = mock.patch.object(
        os, 'access', lambda p, mode: False if p == locked else real(p, mode)
      )
    with patch:
      with self.assertRaisesRegex(ValueError, r'locked cannot be read \(permissions\)\. Fix'):
        workdir_lib.readable_workdir(locked)
      with self.assertRaisesRegex(ValueError, r'cannot be read \(permissions\)'):
        compress.run(locked, 'int8')

  def test_generate_and_compress_refuse_each_with_one_line(self):
    for name, (path, step, pattern) in self.unusable.items():
      with self.subTest(name):
        # generate's main: the process would exit 2 with this one line on stderr.
        with (
          flagsaver.flagsaver(workdir=path, step=step, prompt='a'),
          contextlib.redirect_stderr(io.StringIO()) as err,
          self.assertRaises(SystemExit) as exit_,
        ):
          generate.main([])
        self.assertEqual(exit_.exception.code, faults.EXIT_BAD_INPUT)
        self.assertLen(err.getvalue().splitlines(), 1)
        self.assertRegex(err.getvalue(), '^error: ' + r'.*' + pattern)
        if step is None:  # compress reads the latest step: it has no --step.
          with self.assertRaisesRegex(ValueError, pattern):
            compress.run(path, 'int8')

  def test_overrides_without_a_config_file(self):
    saved, step = workdir_lib.saved_config(self.trained, None)
    self.assertEqual(step, 4)
    self.assertEqual(saved.to_dict(), workdir_lib.with_defaults(self.config.to_dict()))
    config = cli.override_config(saved, ['--config.eval.seq_len=5', '--config.sample.top_k=3'])
    self.assertEqual((config.eval.seq_len, config.sample.top_k), (5, 3))
    self.assertTrue(config.is_locked)
    with self.assertRaisesRegex(ValueError, r"has no key 'eval.seq_lem'\. Closest .*eval\.seq_len"):
      cli.override_config(saved, ['--config.eval.seq_lem=5'])
    with self.assertRaisesRegex(ValueError, r'config\.eval\.seq_len takes an integer'):
      cli.override_config(saved, ['--config.eval.seq_len=long'])

  def test_command_lines_from_another_folder(self):
    elsewhere = self.create_tempdir().full_path  # Not the repository: paths are from here.
    eval_run = ['research.main', '--mode=eval', f'--workdir={self.trained}']
    cases = {
      'eval, no --config': eval_run + ['--config.eval.extra_seq_lens=(5,)'],
      'eval, a key that needs --config': eval_run + ['--config.optim.learning_rate=1'],
      'eval, missing': ['research.main', '--mode=eval', f'--workdir={self.tmp}/missing'],
      'train, no --config': ['research.main', f'--workdir={self.tmp}/new'],
      'compress, a file': ['research.compress', f'--workdir={self.file}', '--method=int8'],
      'generate, no checkpoint': ['research.generate', f'--workdir={self.empty}'],
    }
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      done = dict(zip(cases, pool.map(lambda args: _tool(args, elsewhere), cases.values())))

    ok = done.pop('eval, no --config')
    self.assertEqual(ok.returncode, 0, ok.stderr[-2000:])
    # The figures of the end of training, and the override's extra context.
    want = f'valid: loss {self.results["valid"]["loss"]:.4f}'
    self.assertIn(want, ok.stdout)
    self.assertIn('valid@5: loss', ok.stdout)
    expected = {
      'eval, a key that needs --config': r'--config\.optim\.learning_rate needs --config: '
      r'without it the config is the one the run was trained with',
      'eval, missing': r'--workdir=.*/missing does not exist\. Point --workdir at the folder of a trained run',
      'train, no --config': r'--config is required, e\.g\. --config=/.*/configs/default\.py \(config files: /.*'
      r'; --mode=eval and --mode=audit read it from the workdir\.',
      'compress, a file': r"--workdir=.*corpus\.txt is a file, not a run's folder",
      'generate, no checkpoint': r'--workdir=.*/empty holds no checkpoint .*Train first',
    }
    for name, result in done.items():
      with self.subTest(name):
        self.assertEqual(result.returncode, faults.EXIT_BAD_INPUT, result.stderr[-2000:])
        self.assertNotIn('Traceback', result.stderr)
        errors = _errors(result.stderr)
        self.assertLen(errors, 1, result.stderr)
        self.assertRegex(errors[0], '^error: ' + expected[name])


if __name__ == '__main__':
  absltest.main()
