"""Where a number came from: code revision, hardware and wall time of a run.

Every `research.main` process appends to `WORKDIR/runs.jsonl` a `start` line
(time, code revision, hardware, command line) and, when it finishes, an `end`
line. A run stopped and resumed has several segments; `wall_seconds` adds
them up, so a table can report the time the result cost, not the time since
the first launch.
"""

import json
import os
import platform
import subprocess
import sys
import time

import jax

RUNS_FILE = 'runs.jsonl'


def revision(path: str | None = None) -> str:
  """The git commit of the code at `path` (default: this package), with a
  `+dirty` suffix when tracked files differ from it; 'unknown' outside git."""
  path = path or os.path.dirname(os.path.abspath(__file__))
  try:
    head = subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=path, check=True, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
      ['git', 'status', '--porcelain', '--untracked-files=no'],
      cwd=path,
      check=True,
      capture_output=True,
      text=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  return head + ('+dirty' if dirty else '')


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def hardware() -> str:
  """'1 x NVIDIA H100 80GB HBM3' for accelerators; the CPU model and core
  count for CPU runs (JAX calls every CPU device 'cpu')."""
  devices = jax.devices()
  if devices[0].platform == 'cpu':
    return f'CPU: {_cpu_model()}, {os.cpu_count()} cores, {len(devices)} JAX device(s)'
  return f'{len(devices)} x {devices[0].device_kind}'


def utc_date() -> str:
  """Now, as a benchmark record dates itself: '2026-12-06 18:40 UTC'."""
  return time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())


def record_start(workdir: str, started: float | None = None) -> None:
  """Appends this process's `start` line to the workdir's runs.jsonl, at
  `started` (a time.time() taken earlier; None: now)."""
  _append(
    workdir,
    {
      'event': 'start',
      'time': time.time() if started is None else started,
      'revision': revision(),
      'hardware': hardware(),
      'argv': sys.argv,
      'host': platform.node(),
    },
  )


def record_end(workdir: str, status: str) -> None:
  _append(workdir, {'event': 'end', 'time': time.time(), 'status': status})


def _append(workdir: str, record: dict) -> None:
  with open(os.path.join(workdir, RUNS_FILE), 'a') as f:
    f.write(json.dumps(record) + '\n')


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSON-lines file (runs.jsonl, metrics.jsonl); [] if
  it does not exist."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def read_runs(workdir: str) -> list[dict]:
  return read_jsonl(os.path.join(workdir, RUNS_FILE))


def wall_seconds(runs: list[dict], record_times: list[float]) -> float:
  """Sums the segments of a run.

  A segment runs from a `start` line to its `end` line; a segment that was
  killed has no `end`, and lasts until its last metrics record (`record_times`,
  the `time` field of metrics.jsonl).
  """
  starts = [r['time'] for r in runs if r['event'] == 'start']
  total = 0.0
  for i, start in enumerate(starts):
    stop = starts[i + 1] if i + 1 < len(starts) else float('inf')
    ends = [r['time'] for r in runs if r['event'] == 'end' and start <= r['time'] < stop]
    if ends:
      total += ends[0] - start
    else:
      inside = [t for t in record_times if start <= t < stop]
      total += (max(inside) - start) if inside else 0.0
  return total
