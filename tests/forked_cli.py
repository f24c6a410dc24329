"""Runs commands and test drivers each in its own process, forked from one
interpreter that imported the libraries first: what a user sees from each
command, without paying JAX's import (about 3 s on 2 cores) for every one.

Tests of command-line mistakes start dozens of processes that each fail in
under a second once imported, and the kill-and-resume tests start a process
per fault; the import was most of their time. The server imports libraries
only (`PRELOAD`), never the module a case runs, so each child runs it as
`__main__` from scratch (its flags defined and parsed once, in the child, as
in a fresh process) through `runpy`, exactly as `python -m` does; or, for a
test driver, executes the case's code as `python -c` would. No JAX backend
may exist before a fork (its threads would not survive it): the server checks
none does.

Protocol (`test_util.forked`): one JSON request per line on stdin, a list of
cases, each {'module': M, 'args': [...]} or {'code': C} with 'env' (the
child's os.environ), and 'parallel' (how many children at once); one JSON
line back per request: [exit status, stdout, stderr] per case, in order. A
child killed by a signal has status -signal, as subprocess reports it.
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


def _child(case: dict, out_path: str, err_path: str) -> None:
  """In the forked child: fds 1 and 2 to the files, then the case; never returns."""
  code = 1
  try:
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # Not the server's requests.
    for fd, path in ((1, out_path), (2, err_path)):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout = sys.__stdout__  # The server points sys.stdout away from its replies.
    os.environ.clear()
    os.environ.update(case['env'])
    try:
      if 'module' in case:
        sys.argv = [case['module'], *case['args']]
        runpy.run_module(case['module'], run_name='__main__', alter_sys=True)
      else:
        sys.argv = ['-c']
        exec(compile(case['code'], '<string>', 'exec'), {'__name__': '__main__'})  # pylint: disable=exec-used
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


def run_cases(cases: list[dict], parallel: int) -> list:
  """Each case in a forked child, at most `parallel` at once: [status, stdout, stderr]s."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  assert not xla_bridge.backends_are_initialized(), 'a JAX backend exists before the fork'
  results = [None] * len(cases)
  running = {}  # pid -> case index
  with tempfile.TemporaryDirectory() as tmp:
    paths = lambda i: (os.path.join(tmp, f'{i}.out'), os.path.join(tmp, f'{i}.err'))

    def reap():
      pid, status = os.wait()
      i = running.pop(pid)
      out, err = paths(i)
      with open(out) as o, open(err) as e:
        results[i] = [os.waitstatus_to_exitcode(status), o.read(), e.read()]

    for i, case in enumerate(cases):
      while len(running) >= max(1, parallel):
        reap()
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(case, *paths(i))
      running[pid] = i
    while running:
      reap()
  return results


def main() -> None:
  for name in PRELOAD:
    importlib.import_module(name)
  reply = sys.stdout
  sys.stdout = sys.stderr  # Nothing but replies on the reply channel.
  for line in sys.stdin:
    request = json.loads(line)
    reply.write(json.dumps(run_cases(request['cases'], request.get('parallel', 1))) + '\n')
    reply.flush()


if __name__ == '__main__':
  main()
