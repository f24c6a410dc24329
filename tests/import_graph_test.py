"""No import cycle in research/, `TYPE_CHECKING` and function-level imports
included; the model registry keeps its imports at the top.

A module's edges are the research modules it names in an import statement
anywhere in its file: `from pkg import name` is an edge to the submodule
`pkg.name` when there is one, else to `pkg`. Importing `a.b.c` also runs the
packages `a` and `a.b` first; those implied edges are not counted (every
package whose `__init__` imports its submodules would be a cycle).
"""

import ast
import os
import subprocess
import sys
import textwrap

from absl.testing import absltest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules(root: str, package: str) -> dict[str, str]:
  """{dotted module name: file path} of every .py file under root/package."""
  found = {}
  for folder, _, files in os.walk(os.path.join(root, package)):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, root)[: -len('.py')].replace(os.sep, '.')
        found[dotted.removesuffix('.__init__')] = path
  return found


def import_graph(root: str, package: str) -> dict[str, set[str]]:
  """{module: the modules of `package` it imports}, per the module docstring."""
  mods = modules(root, package)
  graph = {m: set() for m in mods}
  for module, path in mods.items():
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith('__init__.py')
    here = module if is_package else module.rpartition('.')[0]
    for node in ast.walk(tree):  # Every statement: TYPE_CHECKING blocks, functions.
      if isinstance(node, ast.Import):
        graph[module].update(a.name for a in node.names if a.name in mods)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          parts = here.split('.')
          parts = parts[: len(parts) - node.level + 1]
          base = '.'.join(parts + ([base] if base else []))
        for alias in node.names:
          if f'{base}.{alias.name}' in mods:
            graph[module].add(f'{base}.{alias.name}')
          elif base in mods:
            graph[module].add(base)
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle [a, b, ..., a] of `graph`, or None when it has none."""
  visiting, done = [], set()
  on_path = set()

  def visit(node):
    visiting.append(node)
    on_path.add(node)
    for nxt in sorted(graph[node]):
      if nxt in on_path:
        return visiting[visiting.index(nxt) :] + [nxt]
      if nxt not in done:
        cycle = visit(nxt)
        if cycle:
          return cycle
    on_path.discard(visiting.pop())
    done.add(node)
    return None

  for start in sorted(graph):
    if start not in done:
      cycle = visit(start)
      if cycle:
        return cycle
  return None


def imports_after_code(path: str) -> list[int]:
  """Line numbers of top-level imports that follow a top-level statement
  other than an import (the module docstring aside)."""
  with open(path, encoding='utf-8') as f:
    body = ast.parse(f.read(), path).body
  if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
    body = body[1:]
  lines, seen_code = [], False
  for node in body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      if seen_code:
        lines.append(node.lineno)
    else:
      seen_code = True
  return lines


def imported_by_tests(root: str) -> set[str]:
  """The research modules some test file imports at its top level (so into
  the pytest worker that collects it; a function's import may run in a child
  process, as tests/faults_test.py's `drive` does)."""
  mods = modules(root, 'research')
  found = set()
  for name in sorted(os.listdir(os.path.join(root, 'tests'))):
    if not name.endswith('.py'):
      continue
    with open(os.path.join(root, 'tests', name), encoding='utf-8') as f:
      tree = ast.parse(f.read(), name)
    for node in tree.body:
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('research'):
        for alias in node.names:
          sub = f'{node.module}.{alias.name}'
          found.add(sub if sub in mods else node.module)
      elif isinstance(node, ast.Import):
        found.update(a.name for a in node.names if a.name.startswith('research'))
  return found


class ImportGraphTest(absltest.TestCase):
  def test_the_modules_tests_import_coexist_in_one_process(self):
    # pytest -n 2 runs many test files in one worker, in an order that varies:
    # two modules defining the same absl flag (research.audit's and
    # research.generate's --workdir) break whichever is imported second.
    wanted = sorted(imported_by_tests(_ROOT))
    self.assertIn('research.generate', wanted)
    script = ''.join(f'import {m}\n' for m in wanted)
    done = subprocess.run(
      [sys.executable, '-c', script], cwd=_ROOT, capture_output=True, text=True, timeout=300
    )
    self.assertEqual(done.returncode, 0, done.stderr[-2000:])

  def test_research_has_no_import_cycle(self):
    graph = import_graph(_ROOT, 'research')
    self.assertIn('research.models.contract', graph['research.models.transformer'])
    cycle = find_cycle(graph)
    self.assertIsNone(cycle, f'import cycle: {" -> ".join(cycle or [])}')

  def test_the_model_contract_imports_no_family(self):
    graph = import_graph(_ROOT, 'research')
    families = {'research.models', 'research.models.lstm', 'research.models.transformer'}
    self.assertFalse(graph['research.models.contract'] & families)

  def test_the_model_registry_has_its_imports_at_the_top(self):
    path = os.path.join(_ROOT, 'research', 'models', '__init__.py')
    self.assertEqual(imports_after_code(path), [], f'{path}: imports after code, on these lines')

  def test_the_checks_find_what_they_look_for(self):
    # A cycle only through a TYPE_CHECKING import, one through a function's
    # import, a relative import, and an import below code: all are caught.
    root = self.create_tempdir().full_path
    files = {
      'pkg/__init__.py': 'X = 1\nfrom pkg import a\n',
      'pkg/a.py': 'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from pkg import b\n',
      'pkg/b.py': 'def f():\n  from . import c\n',
      'pkg/c.py': 'import pkg.a\n',
      'pkg/d.py': 'from .sub import e\n',
      'pkg/sub/__init__.py': '',
      'pkg/sub/e.py': 'from .. import d\n',
    }
    for name, text in files.items():
      os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
      with open(os.path.join(root, name), 'w') as f:
        f.write(textwrap.dedent(text))
    graph = import_graph(root, 'pkg')
    self.assertEqual(graph['pkg.a'], {'pkg.b'})
    self.assertEqual(graph['pkg.b'], {'pkg.c'})
    self.assertEqual(graph['pkg.c'], {'pkg.a'})
    self.assertEqual(graph['pkg.d'], {'pkg.sub.e'})
    self.assertEqual(graph['pkg.sub.e'], {'pkg.d'})
    self.assertEqual(find_cycle(graph), ['pkg.a', 'pkg.b', 'pkg.c', 'pkg.a'])
    graph['pkg.c'] = set()
    self.assertEqual(find_cycle(graph), ['pkg.d', 'pkg.sub.e', 'pkg.d'])
    graph['pkg.d'] = set()
    self.assertIsNone(find_cycle(graph))
    self.assertEqual(imports_after_code(os.path.join(root, 'pkg/__init__.py')), [2])


if __name__ == '__main__':
  absltest.main()
