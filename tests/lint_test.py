"""The tree passes the linter and the formatter CI runs: ruff with the rules
and the format of ruff.toml (unused imports and names, undefined names, syntax
errors, one quote style; 2-space indents)."""

import os
import subprocess
import sys

from absl.testing import absltest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args: str) -> subprocess.CompletedProcess:
  """ruff on the tree's Python folders, from the repository root."""
  return subprocess.run(
    [sys.executable, '-m', 'ruff', *args, 'research', 'configs', 'tests', 'experiments'],
    cwd=_ROOT,
    capture_output=True,
    text=True,
    check=False,
  )


class LintTest(absltest.TestCase):
  def test_ruff_finds_nothing(self):
    result = _ruff('check', '--output-format=concise')
    self.assertEqual(
      result.returncode,
      0,
      f'ruff found problems (fix them, or run `ruff check --fix`):\n{result.stdout}{result.stderr}',
    )

  def test_ruff_format_changes_nothing(self):
    result = _ruff('format', '--check')
    self.assertEqual(
      result.returncode,
      0,
      f'ruff format would change these files (run `ruff format`):\n{result.stdout}{result.stderr}',
    )


if __name__ == '__main__':
  absltest.main()
