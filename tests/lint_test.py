"""The tree passes the linter and the formatter CI runs: ruff with the rules
and the format of ruff.toml (unused imports and names, undefined names, syntax
errors, one quote style; 2-space indents)."""

import os
import subprocess
import sys

from absl.testing import absltest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LintTest(absltest.TestCase):
  def test_ruff_finds_nothing(self):
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'ruff',
        'check',
        '--output-format=concise',
        'research',
        'configs',
        'tests',
        'experiments',
      ],
      cwd=_ROOT,
      capture_output=True,
      text=True,
      check=False,
    )
    self.assertEqual(
      result.returncode,
      0,
      f'ruff found problems (fix them, or run `ruff check --fix`):\n{result.stdout}{result.stderr}',
    )

  def test_ruff_format_changes_nothing(self):
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'ruff',
        'format',
        '--check',
        'research',
        'configs',
        'tests',
        'experiments',
      ],
      cwd=_ROOT,
      capture_output=True,
      text=True,
      check=False,
    )
    self.assertEqual(
      result.returncode,
      0,
      f'ruff format would change these files (run `ruff format`):\n{result.stdout}{result.stderr}',
    )


if __name__ == '__main__':
  absltest.main()
