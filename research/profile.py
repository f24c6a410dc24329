"""Where a compiled step's time goes: a `jax.profiler` trace of a few calls,
each executed XLA instruction's time attributed to a kind of work.

XLA's CPU runtime records one trace event per executed thunk (a fusion, a
dot, a copy, a while loop), named after its HLO instruction; the compiled
module's text (`compiled.as_text()`) gives each instruction its opcode, the
computations it calls and its `op_name` metadata, the JAX scope it came
from: 'jit(train_step)/jvp(Transformer)/block_0/attn/reduce_max' is the
forward pass's attention, 'transpose(jvp(...))/...' its gradient, and an
op outside the model's and the loss's scopes belongs to the optimizer update
(clipping, the AdamW moments, the parameter update). `breakdown` sums each
instruction's exclusive time (its events' durations less those of the events
nested in them on the same thread, so a while loop's body is counted once,
as its instructions) per kind (`kind`), over every thread of the runtime.

The shares are of the instructions' CPU time, summed over the threads that
ran them; the wall time is what one step took under the profiler (which adds
its own cost: compare it with the benchmark's untraced step time), and the
host share is the part of the wall time during which no instruction ran
(Python, dispatch, waiting for threads).
"""

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile

import jax
import numpy as np

# Kinds, in the order the table lists them.
KINDS = (
  'matmul',
  'attention softmax and masks',
  'norms',
  'embedding lookup',
  'embedding gradient',
  'loss (log-softmax, target gather)',
  'optimizer update and clipping',
  'DP-SGD per-row clipping and sums',
  'DP-SGD noise',
  'layout copies and transposes',
  'other elementwise (activations, residuals, gates, dropout)',
  'thunk executor (scheduling)',
)
_WAITS = ('wait', 'Await')  # Runtime events that wait for other threads: not work.

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S.*?\s([\w\-]+)\(')
_CALLS = re.compile(
  r'(?:calls|body|condition|to_apply)=%?([\w.\-]+)|branch_computations=\{([^}]*)\}'
)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MODEL_SCOPE = re.compile(r'jvp\([A-Z]\w*\)')  # A Flax module's scope: jvp(Transformer).
_MATMULS = ('dot', 'convolution')


@dataclasses.dataclass
class Instruction:
  opcode: str
  op_name: str
  calls: tuple  # Names of the computations it calls (a fusion's body, a loop's body).
  computation: str  # The computation it is in.


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(instruction name -> Instruction, computation name -> opcodes in it) of
  an HLO module's text."""
  instructions, opcodes = {}, collections.defaultdict(set)
  current = ''
  for line in text.splitlines():
    if line[:1] not in ('', ' ') and line.rstrip().endswith('{'):  # A computation's header.
      current = line.removeprefix('ENTRY ').split(' ', 1)[0].lstrip('%')
      continue
    found = _INSTRUCTION.match(line)
    if not found:
      continue
    name, opcode = found.groups()
    op_name = _OP_NAME.search(line)
    calls = tuple(
      c.strip().lstrip('%')
      for groups in _CALLS.findall(line)
      for group in groups
      for c in group.split(',')
      if c.strip()
    )
    instructions[name] = Instruction(opcode, op_name.group(1) if op_name else '', calls, current)
    opcodes[current].add(opcode)
  return instructions, opcodes


def loop_computations(instructions: dict) -> set:
  """Computations run inside a while loop (a scan's body, and what it calls)."""
  callers = collections.defaultdict(list)
  for instruction in instructions.values():
    callers[instruction.computation].append(instruction)
  inside, stack = set(), [c for i in instructions.values() if i.opcode == 'while' for c in i.calls]
  while stack:
    name = stack.pop()
    if name not in inside:
      inside.add(name)
      stack += [c for i in callers[name] for c in i.calls]
  return inside


def _contains(instruction: Instruction, opcodes: dict, wanted: tuple) -> bool:
  """Whether the instruction is, or fuses, one of the `wanted` opcodes."""
  if instruction.opcode in wanted:
    return True
  return instruction.opcode == 'fusion' and any(
    opcodes.get(name, set()) & set(wanted) for name in instruction.calls
  )


_MOVES = {'parameter', 'copy', 'transpose', 'bitcast', 'reshape', 'slice', 'concatenate'}


def _only_moves(instruction: Instruction, opcodes: dict) -> bool:
  """Whether the instruction only moves data: a copy or transpose, or a
  fusion of nothing else."""
  if instruction.opcode in ('copy', 'transpose'):
    return True
  return instruction.opcode == 'fusion' and all(
    opcodes.get(name, {'?'}) <= _MOVES for name in instruction.calls
  )


def kind(instruction: Instruction | None, opcodes: dict) -> str:
  """The kind of work (one of KINDS) an executed instruction does."""
  if instruction is None:  # A runtime event, not an instruction of the module.
    return 'thunk executor (scheduling)'
  scope = instruction.op_name
  backward = 'transpose(' in scope
  in_model = bool(_MODEL_SCOPE.search(scope))
  if in_model and ('/embed/' in scope or scope.endswith('/embed')):
    return 'embedding gradient' if backward else 'embedding lookup'
  if _contains(instruction, opcodes, _MATMULS):
    return 'matmul'
  if in_model and '/attn/' in scope:
    return 'attention softmax and masks'
  if in_model and re.search(r'/(ln_\w+|\w*norm\w*)/', scope):
    return 'norms'
  if not in_model and '/dp_sgd/' in scope:  # research/privacy/dp_sgd.py's named scope.
    random = any(r in scope for r in ('_normal', 'random_bits', 'threefry', 'erf_inv'))
    return 'DP-SGD noise' if random else 'DP-SGD per-row clipping and sums'
  if not in_model and ('jvp()' in scope or 'take_along_axis' in scope):
    return 'loss (log-softmax, target gather)'
  if _only_moves(instruction, opcodes):
    return 'layout copies and transposes'
  if not in_model and scope:
    return 'optimizer update and clipping'
  return 'other elementwise (activations, residuals, gates, dropout)'


def exclusive_times(events: list) -> dict:
  """Instruction or event name -> its events' summed durations (µs) less the
  durations of the events nested inside them on the same thread."""
  by_thread = collections.defaultdict(list)
  for e in events:
    by_thread[e['tid']].append(e)
  total = collections.Counter()
  for thread_events in by_thread.values():
    thread_events.sort(key=lambda e: (e['ts'], -e['dur']))
    stack = []  # [end time, name] of the open events.
    for e in thread_events:
      while stack and stack[-1][0] <= e['ts']:
        stack.pop()
      if stack:
        total[stack[-1][1]] -= e['dur']
      total[e['name']] += e['dur']
      stack.append([e['ts'] + e['dur'], e['name']])
  return total


def busy_time(events: list) -> float:
  """µs during which at least one event ran, over all threads."""
  spans = sorted((e['ts'], e['ts'] + e['dur']) for e in events)
  busy, end = 0.0, float('-inf')
  for start, stop in spans:
    if stop > end:
      busy += stop - max(start, end)
      end = stop
  return busy


def _runtime_events(trace: dict, instructions: dict) -> list:
  """The trace's complete events on the runtime's threads (those that ran an
  instruction of the module), Python's and the client's left out."""
  events = [e for e in trace['traceEvents'] if e.get('ph') == 'X' and 'dur' in e]
  threads = {e['tid'] for e in events if e['name'] in instructions}
  return [e for e in events if e['tid'] in threads and not e['name'].startswith('end: ')]


_CALL = 'research.profile call'  # The annotation around each traced call.


def _one_call(events: list, instructions: dict, opcodes: dict, loops: set) -> dict:
  """Seconds of each kind, waits, inside loops, busy, and per instruction, in
  one call's runtime events."""
  times = exclusive_times(events)
  figures = dict.fromkeys(KINDS, 0.0) | {'waits': 0.0, 'in_loops': 0.0}
  for name, us in times.items():
    if name not in instructions and any(w in name for w in _WAITS):
      figures['waits'] += us / 1e6
    elif name in instructions or name.startswith('ThunkExecutor'):
      figures[kind(instructions.get(name), opcodes)] += us / 1e6
    if name in instructions and instructions[name].computation in loops:
      figures['in_loops'] += us / 1e6
  figures['busy'] = busy_time([e for e in events if e['name'] in instructions]) / 1e6
  figures['instructions'] = {n: us / 1e6 for n, us in times.items() if n in instructions}
  return figures


def breakdown(run_once, hlo_text: str, calls: int = 5) -> dict:
  """Traces `calls` calls of `run_once()` (one step, blocking until its results
  are ready; it threads its own state) under the profiler, after one untraced
  call, and attributes the executed instructions of the compiled module whose
  text is `hlo_text` to KINDS. Every figure is the median over the calls (one
  call disturbed by the profiler's own work does not move it).

  Returns {'wall_s', 'busy_s', 'host_share', 'kinds': {kind: seconds per
  call, summed over threads}, 'waits_s' (the runtime's events that wait for
  other threads, not counted as work), 'in_loops_s' (the instructions run
  inside while loops, the LSTM's scan), 'top': [(instruction, kind, op_name,
  seconds per call)] of the ten costliest, 'calls'}.
  """
  instructions, opcodes = parse_hlo(hlo_text)
  loops = loop_computations(instructions)
  run_once()
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      for i in range(calls):
        with jax.profiler.TraceAnnotation(f'{_CALL} {i}'):
          run_once()
    (path,) = glob.glob(os.path.join(log_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  windows = sorted(
    (e['ts'], e['ts'] + e['dur'])
    for e in trace['traceEvents']
    if e.get('ph') == 'X' and e.get('name', '').startswith(_CALL)
  )
  events = _runtime_events(trace, instructions)
  per_call = [
    _one_call([e for e in events if start <= e['ts'] < end], instructions, opcodes, loops)
    for start, end in windows
  ]
  median = lambda key: float(np.median([c[key] for c in per_call]))  # noqa: E731
  wall = float(np.median([(end - start) / 1e6 for start, end in windows]))
  names = {n for c in per_call for n in c['instructions']}
  top = sorted(
    (
      (n, kind(instructions[n], opcodes), instructions[n].op_name)
      + (float(np.median([c['instructions'].get(n, 0.0) for c in per_call])),)
      for n in names
    ),
    key=lambda t: -t[3],
  )[:10]
  return {
    'calls': len(windows),
    'wall_s': wall,
    'busy_s': median('busy'),
    'host_share': max(0.0, 1 - median('busy') / wall),
    'kinds': {k: median(k) for k in KINDS},
    'waits_s': median('waits'),
    'in_loops_s': median('in_loops'),
    'top': top,
  }


def markdown(result: dict) -> str:
  """The breakdown as a markdown table (kind, ms per step, share)."""
  total = sum(result['kinds'].values())
  lines = [
    f'Medians over {result["calls"]} traced steps. A step under the profiler: '
    f'{1e3 * result["wall_s"]:.1f} ms wall, instructions running '
    f'{1e3 * result["busy_s"]:.1f} ms of it (host, dispatch and idle: '
    f'{100 * result["host_share"]:.0f}%); work {1e3 * total:.1f} ms of CPU time over all '
    f'threads, besides {1e3 * result["waits_s"]:.1f} ms of the runtime waiting for threads.',
    '',
    '| kind | ms per step (all threads) | share |',
    '| --- | --- | --- |',
  ]
  for name, seconds in result['kinds'].items():
    lines.append(f'| {name} | {1e3 * seconds:.2f} | {100 * seconds / total:.1f}% |')
  lines += [
    f"| of which inside while loops (the LSTM's scan over time) | "
    f'{1e3 * result["in_loops_s"]:.2f} | {100 * result["in_loops_s"] / total:.1f}% |'
  ]
  lines += [
    '',
    '| costliest instruction | kind | JAX scope | ms per step |',
    '| --- | --- | --- | --- |',
  ]
  for name, k, scope, seconds in result['top']:
    lines.append(f'| `{name}` | {k} | `{scope}` | {1e3 * seconds:.2f} |')
  return '\n'.join(lines)
