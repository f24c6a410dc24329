"""Host settings that the entry points apply before any JAX work: memory
(below) and how JAX's random-bit hash is lowered on CPU (`unroll_threefry`);
and `compile_within_arena`, how the train step is compiled on one CPU device
so that its scratch memory fits in what glibc keeps for a worker thread.

Why. XLA's CPU runtime allocates each executable's scratch memory with
malloc at every call and frees it at the end: 54 MiB for the
shakespeare_char:cpu train step, several GiB for shakespeare_char at batch
64x256. glibc serves blocks above its mmap threshold (128 KiB, adapting up to
32 MiB) with a fresh mmap and unmaps them on free, so every step touched
brand-new 4 KiB pages: 12,000 minor page faults and 35-40 ms of kernel time
per step for shakespeare_char:cpu on this task's 2-core VM, more than half of
the step, and 2.1 million faults per step for shakespeare_char.

What. Two settings, each with its own opt-out:

1. `tune_allocator()`, via mallopt(3) in this process: raise the mmap and trim
   thresholds to 1 GiB, so blocks are carved from the heap and kept there
   after free, and the same pages serve the next step.
2. `reexec_with_huge_pages()`, for what stays above that (blocks over 1 GiB,
   and blocks over 64 MiB asked for by a worker thread, which glibc's
   per-thread arenas cannot hold): glibc's `glibc.malloc.hugetlb=1` tunable
   asks the kernel for transparent huge pages, so such a block faults once
   per 2 MiB instead of once per 4 KiB. Tunables are read only at process
   start, so the entry point re-executes itself once (same PID, same
   arguments) with GLIBC_TUNABLES set. Kernels with transparent huge pages
   off ignore it.

Measured on this task's 2-core VM (AMD EPYC; research.bench, which prints the
faults per step; timings vary about 15% between runs, fault counts do not):

  config                     faults/step          step (median)
  shakespeare_char:cpu       12,000 -> 0-120      71-85 -> 40-50 ms
  ptb_lstm:small             12,900 -> 0-1        83-99 -> 54-64 ms
  shakespeare_char (64x256)  2.1 M -> 4,300-4,800 21.5 -> 16.7-17.2 s

(With the mallopt setting alone, ptb_lstm:small kept 150-340 faults per step
and the 64x256 step all 2.1 million; with huge pages alone, 27,000.)

The cost: the process keeps its peak heap until it exits, which is what a
training process wants. Only where memory comes from changes, never a
number computed. Set RESEARCH_KEEP_MALLOC=1 to skip both; exporting glibc's
own MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_ or
GLIBC_TUNABLES also leaves the allocator to you.
"""

import ctypes
import os
import sys
from typing import Any

# mallopt(3) parameters and values.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1 << 30  # Blocks up to 1 GiB come from the heap,
_TRIM_THRESHOLD_BYTES = 1 << 30  # up to 1 GiB of free heap is kept,
_TOP_PAD_BYTES = 64 << 20  # and the heap grows in 64 MiB steps.
HUGE_PAGE_TUNABLES = 'glibc.malloc.hugetlb=1'
_OPT_OUT = 'RESEARCH_KEEP_MALLOC'
# Set by reexec_with_huge_pages() in the environment it re-executes with: the
# GLIBC_TUNABLES there are ours, not the user's.
_REEXECUTED = 'RESEARCH_HOST_REEXECUTED'
_GLIBC_VARIABLES = (
  'MALLOC_MMAP_THRESHOLD_',
  'MALLOC_TRIM_THRESHOLD_',
  'MALLOC_TOP_PAD_',
  'GLIBC_TUNABLES',
)


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library if it is glibc, else None."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (ValueError, OSError, AttributeError):
    return None
  if name != 'glibc':
    return None
  return tuple(int(p) for p in version.split('.')[:2])


def _left_alone_because() -> str | None:
  if glibc_version() is None:
    return 'the C library is not glibc'
  if os.environ.get(_OPT_OUT, '') not in ('', '0'):
    return f'{_OPT_OUT} is set'
  if (
    any(name in os.environ for name in _GLIBC_VARIABLES)
    and os.environ.get(_REEXECUTED) != HUGE_PAGE_TUNABLES
  ):
    return 'glibc malloc variables are set in the environment'
  return None


def reexec_with_huge_pages() -> None:
  """Re-executes this process once with HUGE_PAGE_TUNABLES (docstring, 2).

  For the entry points' `__main__` only, before any other work: it replaces
  the running program (os.execve keeps the PID, so signals and job schedulers
  see the same process). Does nothing when already done, when glibc is older
  than 2.35 (no such tunable), or when left alone (see `tune_allocator`).
  """
  if _left_alone_because() or _REEXECUTED in os.environ or glibc_version() < (2, 35):
    return
  env = {**os.environ, 'GLIBC_TUNABLES': HUGE_PAGE_TUNABLES, _REEXECUTED: HUGE_PAGE_TUNABLES}
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def tune_allocator() -> str:
  """Raises glibc's mmap and trim thresholds (docstring, 1).

  Returns:
    What was done, for the log: 'tuned' (plus ', huge pages' after
    `reexec_with_huge_pages`), or why it was left alone.
  """
  reason = _left_alone_because()
  if reason:
    return f'left alone: {reason}'
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  accepted = (
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    and mallopt(_M_TOP_PAD, _TOP_PAD_BYTES)
  )
  if not accepted:
    return 'left alone: mallopt refused the values'
  huge = os.environ.get(_REEXECUTED) == HUGE_PAGE_TUNABLES
  return 'tuned, huge pages' if huge else 'tuned'


# What one of glibc's per-thread arenas can hold in one block (HEAP_MAX_SIZE on
# 64-bit systems): XLA's CPU runtime asks for an executable's scratch memory on
# its worker threads, and a bigger block is mapped and unmapped at every call.
THREAD_ARENA_BYTES = 64 << 20
# XLA:CPU's schedule that orders instructions for the least live memory; its
# default orders them so that independent ones can run at once.
MEMORY_SCHEDULE = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
# The memory schedule took 7-22% off the scratch of the repository's configs'
# train steps, so a step whose scratch is over 1.5 arenas is not compiled twice
# (DP-SGD's on ptb_lstm.py:small, 177 MiB, compiles in about 10 s).
_MOST_A_SCHEDULE_SAVES = 1.5


def compile_within_arena(lowered) -> tuple[Any, str]:
  """`lowered.compile()`, or, where its scratch memory exceeds one thread
  arena's THREAD_ARENA_BYTES and XLA's memory-minimising schedule brings it
  within, that schedule's executable instead.

  Only the order of the same instructions changes, so the numbers do not
  (`configs/default.py`'s run: the same parameters after 280 steps to the bit,
  the same perplexities). Why: the default schedule gave `configs/default.py`'s
  step 75.3 MB of scratch and 519-997 page faults a step; the memory schedule
  63.8 MiB and none, the step 62.2 -> 56.4 ms (median of 6 interleaved rounds;
  2-core AMD EPYC, BENCHMARKS.md). Where the default schedule fits it stays: on
  `shakespeare_char.py:cpu` the memory schedule was slower (47.2 against 41.3
  ms), its independent instructions no longer running side by side.

  Returns:
    (the executable, what was chosen, for the log).
  """
  import jax  # pylint: disable=g-import-not-at-top

  def scratch(compiled) -> int:
    analysis = compiled.memory_analysis()
    return analysis.temp_size_in_bytes if analysis is not None else 0

  compiled = lowered.compile()
  default = scratch(compiled)
  if default <= THREAD_ARENA_BYTES:
    return compiled, 'default schedule'
  mib = lambda n: f'{n / 2**20:.1f} MiB'  # noqa: E731
  if default > _MOST_A_SCHEDULE_SAVES * THREAD_ARENA_BYTES:  # Not worth a second compile.
    return compiled, f'default schedule ({mib(default)} of scratch, too far over a thread arena)'
  try:
    smaller = lowered.compile(compiler_options=MEMORY_SCHEDULE)
  except jax.errors.JaxRuntimeError as e:  # An XLA without that option.
    return compiled, f'default schedule ({mib(default)} of scratch; no memory schedule: {e})'
  memory = scratch(smaller)
  if memory > THREAD_ARENA_BYTES:
    return compiled, f'default schedule ({mib(default)} of scratch, over a thread arena either way)'
  return smaller, (
    f'memory schedule: {mib(memory)} of scratch against the default '
    f"schedule's {mib(default)}, over a thread arena's {mib(THREAD_ARENA_BYTES)}"
  )


class CompiledAtFirstCall:
  """`jitted` (a jax.jit function with `.lower`) compiled by
  `compile_within_arena` at its first call (or `compile`) with arguments of
  each new set of shapes and dtypes, as jax.jit compiles once for each;
  calls run those executables. `report(message, schedule)` is called when it
  picks XLA's memory schedule."""

  def __init__(self, jitted, report=None):
    self.jitted, self.report = jitted, report
    self.executables, self.schedule = {}, ''

  def lower(self, *args):
    return self.jitted.lower(*args)

  def compile(self, *args):
    import jax  # pylint: disable=g-import-not-at-top

    leaves, tree = jax.tree.flatten(args)
    signature = (
      tree,
      tuple((getattr(x, 'shape', ()), getattr(x, 'dtype', type(x))) for x in leaves),
    )
    if signature not in self.executables:
      self.executables[signature], self.schedule = compile_within_arena(self.lower(*args))
      if self.report and self.schedule.startswith('memory'):
        self.report('Train step compiled with XLA:CPU %s.', self.schedule)
    return self.executables[signature]

  def __call__(self, *args):
    return self.compile(*args)(*args)


def unroll_threefry() -> str:
  """Lowers JAX's threefry2x32 hash on CPU unrolled, as JAX itself lowers it
  for GPU and TPU: its 20 rounds as one pass over the counters, where the
  CPU lowering is a 5-step loop that reads and writes every counter array 5
  times. The same bits either way (exact uint32 arithmetic; tested). 4.65M
  Gaussian draws, DP-SGD's noise for ptb_lstm:small, took 13.9-14.0 ms
  rolled and 10.4-11.4 ms unrolled on a 2-core AMD EPYC, the DP step 90.1
  against 85.4 ms (interleaved rounds). It goes through JAX's private
  modules (jax._src); where they have moved, it leaves JAX's lowering alone.

  Returns:
    What was done, for the log.
  """
  try:
    from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
    from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top

    rule = threefry2x32._threefry2x32_lowering_rule  # pylint: disable=protected-access
    mlir.register_lowering(threefry2x32.threefry2x32_p, rule, platform='cpu')
  except (ImportError, AttributeError) as e:
    return f'left rolled: {e}'
  return 'unrolled'
