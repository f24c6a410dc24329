"""Runs `python -m MODULE ARGS...` once per ARGS, each in its own process
forked from one interpreter that imported the module's libraries first: what
a user sees from each command, without paying JAX's import for every one.

Tests of command-line mistakes start dozens of processes that each fail in
under a second once imported; the import (about 3 s on 2 cores) was most of
their time. The parent imports libraries only (`PRELOAD`), never MODULE, so
each child runs MODULE as `__main__` from scratch (its flags defined and
parsed once, in the child, as in a fresh process) through `runpy`, exactly as
`python -m` does. No JAX backend may exist before the fork (its threads would
not survive it): the parent checks none does.

Used through `test_util.run_module_cases`; reads a JSON request on stdin,
writes one JSON line of results on stdout.
"""

import importlib
import json
import os
import runpy
import sys
import tempfile
import traceback

# What research.main and research.experiments import that takes time; the
# children find them in sys.modules.
PRELOAD = (
  'jax',
  'optax',
  'orbax.checkpoint',
  'tensorflow_datasets',
  'research.train',
  'research.evaluate',
  'research.experiments.runner',
)


def _child(module: str, args: list[str], out_path: str, err_path: str) -> None:
  """In the forked child: fds 1 and 2 to the files, MODULE run as __main__;
  never returns."""
  code = 1
  try:
    for fd, path in ((1, out_path), (2, err_path)):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [module, *args]
    try:
      runpy.run_module(module, run_name='__main__', alter_sys=True)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if e.code is not None and not isinstance(e.code, int):
        print(e.code, file=sys.stderr)
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()  # As the interpreter would, on an uncaught exception.
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def main() -> None:
  request = json.load(sys.stdin)
  for name in PRELOAD:
    importlib.import_module(name)
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  assert not xla_bridge.backends_are_initialized(), 'a preloaded module started a JAX backend'
  parallel = max(1, request.get('parallel', 2))
  results = [None] * len(request['cases'])
  running = {}  # pid -> case index
  with tempfile.TemporaryDirectory() as tmp:

    def reap():
      pid, status = os.wait()
      i = running.pop(pid)
      with open(os.path.join(tmp, f'{i}.out')) as out, open(os.path.join(tmp, f'{i}.err')) as err:
        results[i] = (os.waitstatus_to_exitcode(status), out.read(), err.read())

    for i, args in enumerate(request['cases']):
      while len(running) >= parallel:
        reap()
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(
          request['module'], args, os.path.join(tmp, f'{i}.out'), os.path.join(tmp, f'{i}.err')
        )
      running[pid] = i
    while running:
      reap()
  print(json.dumps(results))


if __name__ == '__main__':
  main()
