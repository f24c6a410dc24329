"""research.host: the allocator setting, its opt-outs, and what it is for;
the unrolled threefry lowering."""

import os
import subprocess
import sys

from absl.testing import absltest

from research import host

# Calls a jitted gradient whose scratch memory (XLA's temp buffer, over 64
# MiB here: above the 32 MiB that glibc's adaptive mmap threshold can reach,
# as a train step's is) is allocated and freed on every call, and prints the
# minor page faults per call: the cost research.host removes.
_FAULTS_PER_CALL = r"""
import resource, sys
from research import host
host.reexec_with_huge_pages()
print(host.tune_allocator(), file=sys.stderr)
import jax, jax.numpy as jnp
f = jax.jit(jax.grad(lambda w, x: jnp.tanh(x @ w).sum()))
w, x = jnp.zeros((64, 1024)), jnp.ones((16384, 64))
for _ in range(3):
  f(w, x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(w, x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


# Variables that would make a child process start already tuned or opted out.
_ALLOCATOR_VARIABLES = ('RESEARCH_KEEP_MALLOC', 'GLIBC_TUNABLES', 'RESEARCH_HOST_REEXECUTED')


def _python(code: str, *args: str, **env: str) -> str:
  """Stdout of `python -c code args` from the repository root, with this
  environment minus _ALLOCATOR_VARIABLES, plus `env`."""
  env = {
    **{k: v for k, v in os.environ.items() if k not in _ALLOCATOR_VARIABLES},
    'JAX_PLATFORMS': 'cpu',
    **env,
  }
  return subprocess.run(
    [sys.executable, '-c', code, *args],
    env=env,
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(__file__)),
  ).stdout


def _faults_per_call(**env) -> float:
  return float(_python(_FAULTS_PER_CALL, **env).split()[-1])


_REEXEC = r"""
import os, sys
from research import host
host.reexec_with_huge_pages()
print(os.environ.get('GLIBC_TUNABLES'), '|', host.tune_allocator(), '|',
      sys.argv[1:])
"""


def _run_reexec(**env) -> list[str]:
  out = _python(_REEXEC, 'an', 'argument', **env)
  return [part.strip() for part in out.split('|')]


def _glibc_at_least(major: int, minor: int) -> bool:
  version = host.glibc_version()
  return version is not None and version >= (major, minor)


def _transparent_huge_pages() -> bool:
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      return '[never]' not in f.read()
  except OSError:
    return False


class HostTest(absltest.TestCase):
  @absltest.skipUnless(_glibc_at_least(2, 35), 'glibc.malloc.hugetlb needs 2.35')
  def test_reexecutes_once_with_huge_pages_and_the_same_arguments(self):
    tunables, allocator, argv = _run_reexec()
    self.assertEqual(tunables, host.HUGE_PAGE_TUNABLES)
    self.assertEqual(allocator, 'tuned, huge pages')
    self.assertEqual(argv, "['an', 'argument']")

  def test_reexec_respects_the_opt_outs(self):
    tunables, allocator, _ = _run_reexec(RESEARCH_KEEP_MALLOC='1')
    self.assertEqual(tunables, 'None')
    self.assertStartsWith(allocator, 'left alone')
    mine = 'glibc.malloc.trim_threshold=0'
    tunables, allocator, _ = _run_reexec(GLIBC_TUNABLES=mine)
    self.assertEqual(tunables, mine)
    self.assertStartsWith(allocator, 'left alone')

  @absltest.skipUnless(
    _glibc_at_least(2, 35) and _transparent_huge_pages(),
    'needs glibc >= 2.35 and transparent huge pages',
  )
  def test_tuned_allocator_stops_per_call_page_faults(self):
    untuned = _faults_per_call(RESEARCH_KEEP_MALLOC='1')
    tuned = _faults_per_call()
    # Untuned, each call maps fresh 4 KiB pages for its scratch memory
    # (about 20,000 here); tuned, the block comes from a worker thread and
    # is over 64 MiB, so it is still mapped afresh, but in 2 MiB pages.
    self.assertGreater(untuned, 10_000)
    self.assertLess(tuned, untuned / 10)

  def test_opt_outs_leave_the_allocator_alone(self):
    for name, value in (
      ('RESEARCH_KEEP_MALLOC', '1'),
      ('MALLOC_MMAP_THRESHOLD_', '131072'),
      ('GLIBC_TUNABLES', 'glibc.malloc.trim_threshold=0'),
    ):
      with absltest.mock.patch.dict(os.environ, {name: value}):
        self.assertStartsWith(host.tune_allocator(), 'left alone')

  @absltest.skipUnless(_glibc_at_least(2, 0), 'glibc only')
  def test_tunes_by_default_on_linux(self):
    env = {
      k: v
      for k, v in os.environ.items()
      if k not in _ALLOCATOR_VARIABLES and not k.startswith('MALLOC_')
    }
    with absltest.mock.patch.dict(os.environ, env, clear=True):
      self.assertEqual(host.tune_allocator(), 'tuned')


class UnrollThreefryTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    # Put JAX's own CPU lowering back afterwards: the same bits, but other
    # programs, and the suite's compilation cache is keyed by them.
    from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
    from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top

    rolled = threefry2x32._threefry2x32_cpu_lowering_rule  # pylint: disable=protected-access
    self.addCleanup(mlir.register_lowering, threefry2x32.threefry2x32_p, rolled, platform='cpu')

  def test_same_bits_without_the_loop(self):
    import jax  # pylint: disable=g-import-not-at-top

    def draws(key):  # A new function each time: traced and lowered anew.
      with jax.threefry_partitionable(False):
        return jax.random.normal(key, (1001,)), jax.random.bits(key, (7, 3))

    key = jax.random.key(3)
    rolled = jax.jit(lambda k: draws(k)).lower(key).as_text()
    before = jax.jit(lambda k: draws(k))(key)
    self.assertEqual(host.unroll_threefry(), 'unrolled')
    unrolled = jax.jit(lambda k: draws(k)).lower(key).as_text()
    after = jax.jit(lambda k: draws(k))(key)
    self.assertIn('while', rolled)
    self.assertNotIn('while', unrolled)
    for a, b in zip(before, after):
      self.assertTrue(bool((a == b).all()))


class _Compiled:  # What compile_within_arena reads of an executable.
  def __init__(self, name, scratch):
    self.name, self.scratch = name, scratch

  def memory_analysis(self):
    return absltest.mock.Mock(temp_size_in_bytes=self.scratch)


class _Lowered:
  """A lowering whose executables have the given scratch sizes (None: XLA
  refuses the memory schedule), recording the options each compile got."""

  def __init__(self, default, memory):
    self.sizes, self.calls = {'default': default, 'memory': memory}, []

  def compile(self, compiler_options=None):
    import jax  # pylint: disable=g-import-not-at-top

    self.calls.append(compiler_options)
    name = 'memory' if compiler_options == host.MEMORY_SCHEDULE else 'default'
    if self.sizes[name] is None:
      raise jax.errors.JaxRuntimeError('INVALID_ARGUMENT: No such compile option')
    return _Compiled(name, self.sizes[name])


class CompileWithinArenaTest(absltest.TestCase):
  def test_memory_schedule_only_where_it_alone_fits_a_thread_arena(self):
    mib = 1 << 20
    cases = [  # default scratch, memory scratch -> chosen, compiles, what is said
      (10 * mib, 5 * mib, 'default', 1, 'default schedule'),
      (64 * mib, 5 * mib, 'default', 1, 'default schedule'),
      (72 * mib, 63 * mib, 'memory', 2, 'memory schedule: 63.0 MiB'),
      (72 * mib, 65 * mib, 'default', 2, 'over a thread arena either way'),
      (72 * mib, None, 'default', 2, 'No such compile option'),
      (100 * mib, 5 * mib, 'default', 1, 'too far over'),  # Not worth a second compile.
    ]
    for default, memory, want, compiles, words in cases:
      lowered = _Lowered(default, memory)
      compiled, said = host.compile_within_arena(lowered)
      self.assertEqual((compiled.name, len(lowered.calls)), (want, compiles), (default, memory))
      self.assertIn(words, said)

  def test_train_step_on_one_cpu_runs_the_chosen_executable_with_the_same_numbers(self):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from research import components, sharding, train  # pylint: disable=g-import-not-at-top
    from tests import test_util  # pylint: disable=g-import-not-at-top

    config = test_util.tiny_config(self.create_tempdir().full_path, model='lstm')
    parts = components.build(config)
    it = components.train_iterator(parts, config)
    batches = [sharding.global_batch(next(it), parts.mesh) for _ in range(3)]
    key = jax.random.key(1)

    def run(step):  # Three steps from the same initial state.
      state, _ = components.create_state(parts, jax.random.key(0), parts.train_rows)
      for batch in batches:
        state, m = step(state, batch, key)
      return jax.device_get((state.params, m['loss']))

    _, shardings = components.create_state(parts, jax.random.key(0), parts.train_rows)
    fresh = lambda: train.make_train_step(parts, shardings, config)  # noqa: E731
    state, _ = components.create_state(parts, jax.random.key(0), parts.train_rows)
    probe = fresh().jitted.lower(state, batches[0], key, None)
    default = probe.compile().memory_analysis().temp_size_in_bytes
    memory = probe.compile(compiler_options=host.MEMORY_SCHEDULE).memory_analysis()
    # The premise: on the tiny LSTM XLA's memory schedule needs less scratch.
    self.assertLess(memory.temp_size_in_bytes, default)

    plain = fresh()
    self.assertIsInstance(plain.jitted, host.CompiledAtFirstCall)
    # jax.jit's own compile and call: the default schedule.
    want = run(lambda state, batch, key: plain.jitted.jitted(state, batch, key, None))
    reported = []
    with absltest.mock.patch.object(host, 'THREAD_ARENA_BYTES', memory.temp_size_in_bytes):
      chosen = fresh()
      chosen.jitted.report = lambda *args: reported.append(args)
      got = run(chosen)
    self.assertTrue(chosen.jitted.schedule.startswith('memory schedule'), chosen.jitted.schedule)
    self.assertLen(reported, 1)  # Compiled once, at the first call, and said so.
    # Rows of half the length get an executable of their own, as under jax.jit.
    half = jax.tree.map(lambda x: x[:, : x.shape[1] // 2] if x.ndim == 2 else x, batches[0])
    state, _ = components.create_state(parts, jax.random.key(0), parts.train_rows)
    loss = plain.jitted.jitted(state, half, key, None)[1]['loss']
    state, _ = components.create_state(parts, jax.random.key(0), parts.train_rows)
    self.assertEqual(float(chosen(state, half, key)[1]['loss']), float(loss))
    self.assertLen(chosen.jitted.executables, 2)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_array_equal(a, b)


if __name__ == '__main__':
  absltest.main()
