"""Shared helpers for tests: tiny corpora and tiny configs.

Nothing here reads ../shared or the network: corpora are generated.
"""

import json
import os
import select
import subprocess
import sys
import tempfile

from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from configs import common


def parse_config_flags(*args: str) -> ml_collections.ConfigDict:
  """Parses --config flags as research.main does, into fresh FlagValues."""
  argv = ['main'] + list(args)
  fv = flags.FlagValues()
  # Override flags are found in argv when the config flag is defined.
  config_flags.DEFINE_config_file(
    'config', None, 'config', flag_values=fv, lock_config=True, sys_argv=argv
  )
  fv(argv)
  return fv.config


def write_corpus(directory: str, num_lines: int = 400, seed: int = 0) -> str:
  """Writes a small, learnable text file (a few repeated phrases) and returns its path."""
  rng = np.random.default_rng(seed)
  words = ['the cat sat', 'on the mat', 'a dog ran', 'to the park', 'and sat down']
  lines = [' '.join(rng.choice(words, size=3)) for _ in range(num_lines)]
  path = os.path.join(directory, 'corpus.txt')
  # Written whole under another name, then renamed: every process that loads
  # tiny_config rewrites it, and a cell starting beside another must never
  # read it half-written (the runner test's parallel cells once read it empty).
  with tempfile.NamedTemporaryFile('w', encoding='utf-8', dir=directory, delete=False) as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(f.name, path)
  return path


def tiny_config(
  directory: str, model: str = 'lstm', level: str = 'char'
) -> ml_collections.ConfigDict:
  """A config that trains in seconds on the corpus of `write_corpus`."""
  c = common.base_config()
  c.data.name = 'text_file'
  c.data.path = write_corpus(directory)
  c.data.tfds_dir = os.path.join(directory, 'tfds')
  c.data.level = level
  c.data.split = '0.8,0.1,0.1'
  c.data.seq_len = 11
  c.data.batch_size = 8
  c.data.eval_batch_size = 4
  if model == 'lstm':
    c.model = common.lstm_model()
    c.model.hidden_size = 16
    c.model.dropout_rate = 0.1
  else:
    c.model = common.transformer_model()
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.d_model = 16
    c.model.d_ff = 32
    c.model.dropout_rate = 0.1
  c.num_train_steps = 12
  c.log_every_steps = 4
  c.eval_every_steps = 6
  c.checkpoint_every_steps = 4
  c.keep_checkpoints = 10
  c.optim.learning_rate = 3e-2
  c.optim.warmup_steps = 2
  c.optim.min_learning_rate = 1e-3
  c.sample.num_tokens = 8
  c.lock()
  return c


def tiny_config_file(directory: str, model: str = 'lstm') -> str:
  """A config file (DIRECTORY/tiny_MODEL.py) whose get_config() is
  `tiny_config(directory, model)`, for tests that run a command."""
  path = os.path.join(directory, f'tiny_{model}.py')
  with open(path, 'w') as f:
    f.write(
      'from tests import test_util\n\n\ndef get_config():\n'
      f'  return test_util.tiny_config({directory!r}, model={model!r})\n'
    )
  return path


def final_state(config: ml_collections.ConfigDict, workdir: str, devices=None):
  """The state of the workdir's latest checkpoint, restored onto `devices`
  (default: all) under `config`'s mesh and fetched to the host."""
  import jax  # pylint: disable=g-import-not-at-top
  from research import checkpoint, components  # pylint: disable=g-import-not-at-top

  parts = components.build(config, devices=devices)
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=100)
  structs, _ = components.abstract_state(parts, parts.train_rows)
  state = checkpoint.restore(manager, checkpoint.latest_step(manager), structs)
  manager.close()
  return jax.device_get(state)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_env() -> dict:
  """The environment of a command a test starts: the repository importable
  from anywhere (as after `pip install -e .`), on the CPU, the stock allocator."""
  return dict(os.environ, PYTHONPATH=ROOT, RESEARCH_KEEP_MALLOC='1', JAX_PLATFORMS='cpu')


def _read_at_start(env: dict) -> dict:
  """The variables read when JAX and Python start: children forked from one
  server share that server's, so each set of them gets its own server."""
  return {k: v for k, v in env.items() if k.startswith(('JAX_', 'XLA_', 'TF_', 'PYTHON'))}


def run_module(args: list[str], cwd: str = ROOT) -> subprocess.CompletedProcess:
  """`python -m ARGS...` run from `cwd` (default: the repository root), in
  `_child_env()`; output captured, never raising. From the root, it is forked
  (`forked`); from elsewhere, a fresh interpreter (whose sys.path starts there)."""
  if cwd == ROOT:
    return forked([{'module': args[0], 'args': args[1:]}])[0]
  return subprocess.run(
    [sys.executable, '-m', *args],
    cwd=cwd,
    env=_child_env(),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


class _ForkServer:
  """tests/forked_cli.py started with `env`, kept for the test process."""

  TIMEOUT_S = 600  # For one request: a hung child fails the test, not the suite.

  def __init__(self, env: dict):
    self._log = tempfile.TemporaryFile('w+')
    self._process = subprocess.Popen(
      [sys.executable, '-m', 'tests.forked_cli'],
      cwd=ROOT,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self._log,
      text=True,
    )

  def alive(self) -> bool:
    return self._process.poll() is None

  def run(self, cases: list[dict], parallel: int) -> list:
    self._process.stdin.write(json.dumps({'cases': cases, 'parallel': parallel}) + '\n')
    self._process.stdin.flush()
    ready, _, _ = select.select([self._process.stdout], [], [], self.TIMEOUT_S)
    line = self._process.stdout.readline() if ready else ''
    if not line:
      self._process.kill()
      self._log.seek(0)
      why = 'timed out' if not ready else 'stopped'
      raise RuntimeError(f'tests/forked_cli.py {why}:\n{self._log.read()[-3000:]}')
    return json.loads(line)


_FORK_SERVERS = {}  # The variables read at start (sorted items) -> its server.


def forked(
  cases: list[dict], parallel: int = 1, env: dict | None = None
) -> list[subprocess.CompletedProcess]:
  """Each case ({'module': M, 'args': [...]}: `python -m M ARGS`; {'code': C}:
  `python -c C`) in its own process, forked from an interpreter that imported
  the libraries once (tests/forked_cli.py), from the repository root, in
  `_child_env()` updated with `env`, at most `parallel` at once; results in
  order. A child sees the environment of the call (what a command reads as it
  runs); what JAX reads when imported picks the server."""
  env = {**_child_env(), **(env or {})}
  key = tuple(sorted(_read_at_start(env).items()))
  if key not in _FORK_SERVERS or not _FORK_SERVERS[key].alive():
    _FORK_SERVERS[key] = _ForkServer(env)
  results = _FORK_SERVERS[key].run([dict(c, env=env) for c in cases], parallel)
  return [
    subprocess.CompletedProcess(
      ['-m', c['module'], *c['args']] if 'module' in c else ['-c', c['code']], *result
    )
    for c, result in zip(cases, results)
  ]


def on_fake_devices(module: str, call: str, *, devices: int = 8, cache: bool = True) -> dict:
  """`module.call` (a Python expression returning JSON-able data, e.g. "mesh_worker('/tmp/x')")
  evaluated in a forked process that sees `devices` fake CPU devices; returns its value.
  cache=False switches the persistent compilation cache off for the process."""
  env = {'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  if not cache:
    env['JAX_ENABLE_COMPILATION_CACHE'] = 'false'
  code = f'import json; import {module} as m; print("RESULT", json.dumps(m.{call}))'
  (out,) = forked([{'code': code}], env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT ') :])


def run_module_cases(module: str, cases: list[list[str]]) -> list[subprocess.CompletedProcess]:
  """`python -m MODULE ARGS` for each ARGS of `cases` (`forked`), two at a time."""
  return forked([{'module': module, 'args': args} for args in cases], parallel=2)


def apply_only_model(apply, *, init=None, recurrent: bool = False):
  """A `Model` test double for code that calls only `apply` (and `init` and
  `init_carry`): the fields such a test never reaches are None or empty, so
  a call to one of them fails loudly instead of doing something plausible."""
  from research import models  # pylint: disable=g-import-not-at-top

  return models.Model(
    init=init,
    apply=apply,
    init_carry=lambda rows: {},
    recurrent=recurrent,
    init_cache=None,
    decode=None,
    context=None,
    partition_rules=(),
    flops_per_token=None,
    compressible=(),
  )


def fake_cell(path: str, records: list[dict], status: str = 'finished', diverged_at: int = 0):
  """An experiment cell's workdir as research.main and the runner leave it,
  without training: `records` as its metrics.jsonl lines (NaN and Infinity are
  written and read back so), then 'finished'; 'diverged': stopped by a
  non-finite loss at step `diverged_at` (exit status 3, as the runner records
  it); 'running': started, not ended."""
  from research import provenance  # pylint: disable=g-import-not-at-top
  from research.experiments import runner  # pylint: disable=g-import-not-at-top

  os.makedirs(path)
  provenance.record_start(path)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  if status == 'running':
    return
  provenance.record_end(path, 'failed' if status == 'diverged' else 'finished')
  if status == 'diverged':
    with open(os.path.join(path, runner.CELL_FILE), 'w') as f:
      reason = f'exit status 3: error: Non-finite loss (nan) at step {diverged_at}.'
      json.dump({'status': 'diverged', 'reason': reason, 'command': 'x'}, f)
