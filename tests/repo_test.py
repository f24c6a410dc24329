"""The repository's own bookkeeping: BUILD lists every file, CI runs the README."""

import ast
import glob
import os
import re

from absl.testing import absltest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_targets():
  """(kind, name, srcs, deps) of every rule in BUILD."""
  tree = ast.parse(open(os.path.join(_ROOT, 'BUILD')).read())
  rules = []
  for node in tree.body:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
      kw = {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
      rules.append((node.value.func.id, kw['name'], kw.get('srcs', []), kw.get('deps', [])))
  return rules


def _python_files(pattern):
  return {
    os.path.relpath(p, _ROOT) for p in glob.glob(os.path.join(_ROOT, pattern), recursive=True)
  }


class RepoTest(absltest.TestCase):
  def test_build_lists_every_module_and_test(self):
    listed = {src for _, _, srcs, _ in _build_targets() for src in srcs}
    on_disk = (
      _python_files('research/**/*.py')
      | _python_files('tests/*.py')
      | _python_files('configs/*.py')
      | _python_files('experiments/*/*.py')
    )
    self.assertSetEqual(on_disk - listed, set(), 'add these files to BUILD')
    self.assertSetEqual(listed - on_disk, set(), 'BUILD lists missing files')

  def test_every_test_file_is_a_py_test(self):
    tests = {srcs[0] for kind, _, srcs, _ in _build_targets() if kind == 'py_test'}
    self.assertSetEqual(tests, _python_files('tests/*_test.py'))

  def test_build_deps_name_existing_targets(self):
    names = {name for _, name, _, _ in _build_targets()}
    for _, name, _, deps in _build_targets():
      for dep in deps:
        if dep.startswith(':'):
          self.assertIn(dep[1:], names, f'{name} depends on unknown {dep}')

  def test_ci_runs_the_readme_test_command(self):
    readme = open(os.path.join(_ROOT, 'README.md')).read()
    commands = re.findall(r'```(?:bash|sh)\n(.*?)\n```', readme, re.S)
    self.assertGreaterEqual(len(commands), 2)
    main_command, test_command = commands[0], commands[1]
    self.assertIn('python -m research.main --config=configs/default.py', main_command)
    ci = open(os.path.join(_ROOT, '.ci', 'run')).read()
    self.assertIn(test_command.strip(), ci)

  def test_no_file_is_too_long(self):
    for path in (
      _python_files('research/**/*.py')
      | _python_files('configs/*.py')
      | _python_files('tests/*.py')
    ):
      with open(os.path.join(_ROOT, path)) as f:
        self.assertLessEqual(len(f.readlines()), 400, path)


if __name__ == '__main__':
  absltest.main()
