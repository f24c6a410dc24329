"""The repository's own bookkeeping: BUILD lists every file, CI runs the README,
the README's options table lists every registered name."""

import ast
import glob
import importlib
import os
import re

from absl.testing import absltest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Files aim at 400 lines; 500 is the limit. Split a file by concern when it
# outgrows its concern, not to dodge the count.
_MAX_LINES = 500

# The README's options table: each key's row lists every name of its registry
# (module, attribute), so a registry entry without its row fails here.
_OPTION_REGISTRIES = (
  ('model.name', 'research.models', 'MODELS'),
  ('model.norm', 'research.models.transformer_options', 'NORMS'),
  ('model.norm_position', 'research.models.transformer_options', 'NORM_POSITIONS'),
  ('model.qk_norm', 'research.models.transformer_options', 'QK_NORMS'),
  ('model.parametrization', 'research.models.mup', 'PARAMETRIZATIONS'),
  ('model.positional', 'research.models.positional', 'POSITIONAL'),
  ('model.mlp', 'research.models.transformer_options', 'MLPS'),
  ('model.attention', 'research.models.attention', 'ATTENTION_KINDS'),
  ('optim.name', 'research.optim', 'OPTIMIZERS'),
  ('optim.loss', 'research.losses', 'OBJECTIVES'),
  ('optim.weight_decay_mode', 'research.optim', 'WEIGHT_DECAY_MODES'),
  ('data.name', 'research.data', 'DATASETS'),
  ('data.level', 'research.data.tokenizers', 'TOKENIZERS'),
)


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
        self.assertLessEqual(len(f.readlines()), _MAX_LINES, path)

  def test_readme_options_table_lists_every_registered_name(self):
    readme = open(os.path.join(_ROOT, 'README.md')).read().splitlines()
    problems = []
    for key, module, attr in _OPTION_REGISTRIES:
      names = list(getattr(importlib.import_module(module), attr))
      self.assertNotEqual(names, [], f'{module}.{attr} is empty')
      rows = [line for line in readme if line.startswith(f'| `{key}` |')]
      if not rows:
        problems.append(
          f'no row `| `{key}` | ... |` in the options table ({module}.{attr}: {names})'
        )
        continue
      listed = set(re.findall(r'`([^`]+)`', rows[0]))
      problems += [
        f'`{name}` ({module}.{attr}) is missing from the `{key}` row of the options table'
        for name in names
        if name not in listed
      ]
    if problems:
      self.fail("README.md's options table (add each name in backticks):\n" + '\n'.join(problems))


if __name__ == '__main__':
  absltest.main()
