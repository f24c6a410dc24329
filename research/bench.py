"""`python -m research.bench --config=configs/x.py[:variant] [--steps=N]`.

Times the real jitted train step (`train.make_train_step`, the one training
runs) after warm-up and prints compile time, step time (median and spread),
tokens/s, achieved FLOP/s and MFU against the device's peak (research/flops.py;
on CPU a float32 matmul peak measured on the spot), the optimizer state's
bytes per parameter, peak memory, and the tokens/s the data pipeline alone
supplies.

  --dp               also time the same config under DP-SGD (privacy.enabled;
                     noise multiplier 1 unless the config sets the noise) and
                     print the DP step's time as a multiple of the plain one.
  --generate         time sampling instead of training: tokens/s of one sample
                     of the model's whole context decoded through the cache,
                     against re-reading the window for every token (random
                     parameters: the cost does not depend on them), and the
                     bytes of the decoding cache of that one sample.
  --profile          also run 10 steps under jax.profiler and print where the
                     time goes: each executed XLA instruction's time by kind
                     (matmuls, attention, norms, embedding gradient, loss,
                     optimizer update, layout copies, the LSTM's scan) and
                     the ten costliest (research/profile.py); glibc's allocator
                     left alone (the tuned one and the profiler slow each other).
  --json=PATH        also write the figures as JSON.
  --record=FILE      append them to FILE (JSON lines; default none), then
  --table=MD         rebuild the markdown table MD from FILE's latest run per
                     (config, device). `BENCHMARKS.md` is made this way. Only
                     the part between the two marker comments (`GENERATED_START`,
                     `GENERATED_END`) is rewritten; text outside them is kept
                     byte for byte. A file without the markers is replaced
                     by a title and the generated part.
  --suite=accelerator  instead of one config, the accelerator check
                     (research/bench_suite.py; no --config): devices, bf16 and
                     dot_product against float32, four timings, --json and
                     --markdown=PATH (default: printed); tiny sizes on CPU or
                     with --tiny; --shakespeare_path, --ptb_path: the corpora.
"""

import json
import os
import resource
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from ml_collections import config_flags
import tensorflow_datasets as tfds

from research import bench_suite
from research import cli
from research import components
from research import distill
from research import faults
from research import flops
from research import host
from research import profile
from research import provenance
from research import sampling
from research import sharding
from research import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:variant].')
_STEPS = flags.DEFINE_integer('steps', 50, 'Timed steps (after warm-up).')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed steps after compilation.')
_DP = flags.DEFINE_bool(
  'dp', False, 'Also time the config under DP-SGD and print the cost against the plain step.'
)
_GENERATE = flags.DEFINE_bool(
  'generate', False, 'Time sampling (cache against recomputing) instead of training.'
)
_PROFILE = flags.DEFINE_bool(
  'profile', False, 'Also trace steps and print where the time goes (research/profile.py).'
)
_JSON = flags.DEFINE_string('json', None, 'Write the figures to this JSON file.')
_RECORD = flags.DEFINE_string('record', None, 'Append the figures to this JSON-lines file.')
_TABLE = flags.DEFINE_string('table', None, 'Rebuild this markdown table from --record.')
_SUITE = flags.DEFINE_enum('suite', None, list(bench_suite.SUITES), 'Run the accelerator check.')
_TINY = flags.DEFINE_bool('tiny', False, '--suite at tiny sizes (always on CPU).')
_MARKDOWN = flags.DEFINE_string('markdown', None, '--suite: write its table here (default: print).')
_SHAKESPEARE = flags.DEFINE_string('shakespeare_path', '', "--suite: input.txt ('' = download).")
_PTB_PATH = flags.DEFINE_string('ptb_path', '', "--suite: Mikolov's PTB folder ('' = package).")


def _peak_memory_bytes(device) -> tuple[int, str]:
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak bytes in use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process peak RSS'


def optimizer_state_bytes_per_param(state) -> float:
  """Bytes of every array in the optimizer state (moments, factored
  statistics, counters) per parameter: Adam's two float32 moments give 8."""
  size = lambda tree: sum(int(leaf.size) for leaf in jax.tree.leaves(tree))
  nbytes = sum(int(leaf.size) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state.opt_state))
  return nbytes / size(state.params)


def data_tokens_per_s(parts, config, batches: int = 200) -> float:
  """Tokens/s the grain pipeline delivers alone (host side, no training)."""
  it = components.train_iterator(parts, config)
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * config.data.batch_size * config.data.seq_len / (time.perf_counter() - start)


def private(config):
  """`config` under DP-SGD: privacy.enabled, and a noise multiplier of 1 when
  the config names no noise (the step's cost does not depend on it)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.privacy.enabled = True
    if not config.privacy.noise_multiplier and not config.privacy.target_epsilon:
      config.privacy.noise_multiplier = 1.0
  return config


def run(
  config,
  steps: int,
  warmup: int,
  config_name: str = '',
  allocator: str = 'not set',
  profile_steps: int = 0,
) -> dict:
  """Benchmarks the train step of `config`; returns the figures.

  `allocator` is what research.host.tune_allocator() reported; host page
  faults per step are counted because they showed where CPU time went. With
  `profile_steps`, that many more steps run under the profiler and
  'profile' holds research.profile.breakdown's figures. A
  DP-SGD step's tokens are its expected rows' (data.batch_size); it computes
  the sampled rows of a batch padded to `train_rows`.
  """
  parts = components.build(config)
  # config.distill's teacher, timed inside the step as it trains.
  teacher, parts = distill.prepare(parts, config)
  state, shardings = components.create_state(parts, jax.random.key(config.seed), parts.train_rows)
  step_fn = train.make_train_step(parts, shardings, config, teacher)
  it = components.train_iterator(parts, config)
  batches = [sharding.global_batch(next(it), parts.mesh) for _ in range(8)]
  key = jax.random.key(1)

  start = time.perf_counter()
  compiled = step_fn.compile(state, batches[0], key)  # The first call reuses it.
  compile_s = time.perf_counter() - start
  state, m = step_fn(state, batches[0], key)
  jax.block_until_ready(m)
  for i in range(warmup):
    state, m = step_fn(state, batches[i % len(batches)], key)
  jax.block_until_ready((state, m))
  times = []
  faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for i in range(steps):
    t0 = time.perf_counter()
    state, m = step_fn(state, batches[i % len(batches)], key)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t0)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
  breakdown = None
  if profile_steps:
    box = [state]

    def once():
      box[0], m = step_fn(box[0], batches[0], key)
      jax.block_until_ready((box[0], m))

    breakdown = profile.breakdown(once, compiled.as_text(), profile_steps)
    state = box[0]
  del compiled

  tokens = config.data.batch_size * config.data.seq_len
  per_token = parts.model.flops_per_token(state.params)
  summary = flops.describe(times)
  stats = _stats_figures(parts, config, state, batches, summary)
  device = jax.devices()[0]
  peak_total, peak_source = flops.total_peak()
  flops_per_s = per_token * tokens / summary['step_time_median_s']
  memory, memory_kind = _peak_memory_bytes(device)
  return {
    'config': config_name,
    'device': provenance.hardware(),
    'device_kind': device.device_kind,
    'commit': provenance.revision(),
    'date': provenance.utc_date(),
    'batch': f'{config.data.batch_size}x{config.data.seq_len}'
    + (f' (DP: expected rows, padded to {parts.train_rows})' if parts.privacy else ''),
    'steps_timed': steps,
    'compile_s': compile_s,
    'schedule': getattr(step_fn.jitted, 'schedule', 'jax.jit'),
    **summary,
    'tokens_per_s': tokens / summary['step_time_median_s'],
    'flops_per_token': per_token,
    'flops_per_s': flops_per_s,
    'peak_flops_per_s': peak_total,
    'peak_source': peak_source,
    'mfu': flops_per_s / peak_total if peak_total else None,
    'optimizer_state_bytes_per_param': optimizer_state_bytes_per_param(state),
    'peak_memory_bytes': memory,
    'peak_memory_kind': memory_kind,
    'page_faults_per_step': faults / steps,
    'host_allocator': allocator,
    'data_tokens_per_s': data_tokens_per_s(parts, config),
    **stats,
    **({'profile': breakdown} if breakdown else {}),
  }


def _stats_figures(parts, config, state, batches, summary: dict, calls: int = 10) -> dict:
  """The cost of the train lines' statistics pass (`train.stats_function`):
  its median time and that time as a share of the `log_every_steps` steps
  it is taken once per; {} where the run takes none."""
  stats_fn = train.stats_function(parts, config)
  if stats_fn is None:
    return {}
  jax.block_until_ready(stats_fn(state.params, state.carry, batches[0]['inputs']))
  times = []
  for i in range(calls):
    t0 = time.perf_counter()
    jax.block_until_ready(stats_fn(state.params, state.carry, batches[i % len(batches)]['inputs']))
    times.append(time.perf_counter() - t0)
  pass_s = float(np.median(times))
  return {
    'stats_pass_s': pass_s,
    'stats_cost_per_step': pass_s / (config.log_every_steps * summary['step_time_median_s']),
  }


def generation(config, config_name: str = '', repeats: int = 3) -> dict:
  """Tokens/s of sampling the model's context (one prompt token, then T - 1
  new ones; 200 for a model without a context) with the decoding cache and
  by re-reading the window for each token; the median of `repeats` timed
  calls after a compiling one, each. `cache_bytes`: the decoding cache of
  that one sample (the Transformer's keys and values of every layer and
  position: L P G K twice, shrinking with fewer key/value heads)."""
  parts = components.build(config)
  params = parts.model.init(jax.random.key(config.seed))
  context = parts.model.context or config.data.seq_len
  new = context - 1 if parts.model.context else 200
  prompt = np.zeros((1,), np.int32)
  figures = {
    'config': config_name,
    'device': provenance.hardware(),
    'commit': provenance.revision(),
    'date': provenance.utc_date(),
    'context': context,
    'new_tokens': new,
    'cache_bytes': sum(
      leaf.size * leaf.dtype.itemsize
      for leaf in jax.tree.leaves(jax.eval_shape(lambda: parts.model.init_cache(1)))
    ),
  }
  for name, recompute in (('cached', False), ('recompute', True)):
    run = lambda: sampling.sample(  # noqa: E731
      parts.model,
      params,
      prompt,
      jax.random.key(0),
      num_tokens=new,
      context=context,
      temperature=1.0,
      top_k=0,
      top_p=1.0,
      recompute=recompute,
    )
    start = time.perf_counter()
    run()
    figures[f'{name}_first_call_s'] = time.perf_counter() - start
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    figures[f'{name}_tokens_per_s'] = new / float(np.median(times))
  figures['speedup'] = figures['cached_tokens_per_s'] / figures['recompute_tokens_per_s']
  return figures


def _print_generation(f: dict) -> None:
  print(
    f'{f["config"]} on {f["device"]} (commit {f["commit"][:12]}): sampling {f["new_tokens"]} '
    f'tokens after 1 (context {f["context"]})\n'
    f'  cached decoding    {f["cached_tokens_per_s"]:,.1f} tokens/s '
    f'(first call, compiling: {f["cached_first_call_s"]:.1f} s)\n'
    f'  recomputing        {f["recompute_tokens_per_s"]:,.1f} tokens/s '
    f'(first call, compiling: {f["recompute_first_call_s"]:.1f} s)\n'
    f'  speed-up           {f["speedup"]:.1f}x\n'
    f'  decoding cache     {f["cache_bytes"]:,} bytes (one sample, whole context)',
    flush=True,
  )


def _print(figures: dict) -> None:
  ms = lambda s: f'{1e3 * s:.1f} ms'
  mfu = f'{100 * figures["mfu"]:.1f}%' if figures['mfu'] else 'n/a'
  peak = (
    f'{figures["peak_flops_per_s"] / 1e9:.1f} GFLOP/s' if figures['peak_flops_per_s'] else 'unknown'
  )
  print(
    f'{figures["config"]} on {figures["device"]} (commit {figures["commit"][:12]})\n'
    f'  compile            {figures["compile_s"]:.2f} s ({figures["schedule"]})\n'
    f'  step time          median {ms(figures["step_time_median_s"])}, '
    f'p10 {ms(figures["step_time_p10_s"])}, p90 {ms(figures["step_time_p90_s"])} '
    f'({figures["steps_timed"]} steps, batch {figures["batch"]})\n'
    f'  tokens/s           {figures["tokens_per_s"]:,.0f}\n'
    f'  achieved           {figures["flops_per_s"] / 1e9:.1f} GFLOP/s '
    f'({figures["flops_per_token"] / 1e6:.2f} MFLOP per token)\n'
    f'  peak               {peak} ({figures["peak_source"]})\n'
    f'  MFU                {mfu}\n'
    f'  optimizer state    {figures["optimizer_state_bytes_per_param"]:.2f} bytes per parameter\n'
    f'  peak memory        {figures["peak_memory_bytes"] / 2**20:,.0f} MiB '
    f'({figures["peak_memory_kind"]})\n'
    f'  page faults        {figures["page_faults_per_step"]:,.0f} per step '
    f'(host allocator {figures["host_allocator"]})\n'
    f'  data pipeline      {figures["data_tokens_per_s"]:,.0f} tokens/s'
    + (
      f'\n  model statistics   {ms(figures["stats_pass_s"])} a pass, once per log line: '
      f'{100 * figures["stats_cost_per_step"]:.2f}% of the step time'
      if 'stats_pass_s' in figures
      else ''
    ),
    flush=True,
  )


def _faults(record: dict) -> str:
  if 'page_faults_per_step' not in record:
    return 'n/a'
  return f'{record["page_faults_per_step"]:,.0f} ({record["host_allocator"]})'


GENERATED_START = '<!-- generated by research.bench: start -->'
GENERATED_END = '<!-- generated by research.bench: end -->'


def _table_lines(records_path: str, table_path: str) -> list[str]:
  """The generated part's lines: the latest record per (config, device)."""
  records = provenance.read_jsonl(records_path)
  latest = {}
  for r in records:
    latest[(r['config'], r['device'])] = r
  lines = [
    '<!-- Made by `python -m research.bench --config=... '
    f'--record={records_path} --table={table_path}` from the latest record '
    'per (config, device); do not edit between the markers by hand, the next '
    'run rewrites it. Text outside the markers is kept. -->',
    '',
    'The real jitted train step after warm-up. MFU: achieved FLOP/s (6 N per '
    'token plus the attention term, research/flops.py) over the peak: on '
    'CPU a float32 matmul measured in the same process, on accelerators the '
    'dense bf16 datasheet figure.',
    '',
    '| config | batch | device | step median (p10-p90) | tokens/s | GFLOP/s | peak GFLOP/s | MFU | compile | page faults/step | data tokens/s | commit | date |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for r in latest.values():
    mfu = f'{100 * r["mfu"]:.1f}%' if r['mfu'] else 'n/a'
    peak = f'{r["peak_flops_per_s"] / 1e9:.0f}' if r['peak_flops_per_s'] else 'n/a'
    lines.append(
      f'| `{r["config"]}` | {r["batch"]} | {r["device"]} | '
      f'{1e3 * r["step_time_median_s"]:.1f} ms ({1e3 * r["step_time_p10_s"]:.1f}-'
      f'{1e3 * r["step_time_p90_s"]:.1f}) | {r["tokens_per_s"]:,.0f} | '
      f'{r["flops_per_s"] / 1e9:.1f} | {peak} | {mfu} | {r["compile_s"]:.1f} s | '
      f'{_faults(r)} | '
      f'{r["data_tokens_per_s"]:,.0f} | {r["commit"][:12]} | {r["date"]} |'
    )
  return lines


def write_table(records_path: str, table_path: str) -> None:
  """Rewrites the generated part of `table_path` (BENCHMARKS.md) from records.

  The generated part is everything between `GENERATED_START` and
  `GENERATED_END`; the text before and after them (a title, hand-written
  notes) is kept byte for byte, so notes can live in the same file. A file
  that does not exist or holds neither marker is replaced by a title and the
  generated part. The file is replaced atomically.

  Raises:
    ValueError: the file holds one marker without the other, a marker twice,
      or the end marker before the start marker (nothing is written).
  """
  block = '\n'.join([GENERATED_START, *_table_lines(records_path, table_path), GENERATED_END])
  old = None
  if os.path.exists(table_path):
    with open(table_path, encoding='utf-8', newline='') as f:
      old = f.read()  # newline='': line ends are kept as they are.
  if old is None or (GENERATED_START not in old and GENERATED_END not in old):
    text = f'# Benchmarks\n\n{block}\n'
  else:
    starts, ends = old.count(GENERATED_START), old.count(GENERATED_END)
    start, end = old.find(GENERATED_START), old.find(GENERATED_END)
    if (starts, ends) != (1, 1) or end < start:
      raise ValueError(
        f'{table_path} must hold the line {GENERATED_START} once and, after '
        f'it, {GENERATED_END} once (found {starts} and {ends}); restore the '
        'markers around the generated table, or delete the file to start anew.'
      )
    text = old[:start] + block + old[end + len(GENERATED_END) :]
  tmp = f'{table_path}.tmp'
  with open(tmp, 'w', encoding='utf-8', newline='') as f:
    f.write(text)
  os.replace(tmp, table_path)


def suite(settings, data, json_path: str | None, markdown_path: str | None, allocator='') -> int:
  """`--suite=accelerator` with this module's timers; returns the exit status
  (bad data paths: one `error:` line, exit 2)."""
  train_timer = lambda *args: run(*args, allocator=allocator or 'not set')  # noqa: E731
  try:
    report = bench_suite.run(settings, data, bench_suite.Timers(train_timer, generation))
  except (faults.RunError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  bench_suite.write(report, json_path, markdown_path)
  return bench_suite.status(report)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  allocator = host.tune_allocator()
  host.unroll_threefry()
  if _SUITE.value:
    if _CONFIG.value is not None:
      cli.fail('--suite runs its own configs: drop --config.')
    tiny = _TINY.value or jax.devices()[0].platform == 'cpu'
    data = bench_suite.Data(shakespeare=_SHAKESPEARE.value, ptb=_PTB_PATH.value)
    settings = bench_suite.TINY if tiny else bench_suite.ACCELERATOR
    return suite(settings, data, _JSON.value, _MARKDOWN.value, allocator)
  if _CONFIG.value is None:
    cli.fail(cli.required_message('--config') + ' Or --suite=accelerator, the accelerator check.')
  name = next((a.split('=', 1)[1] for a in os.sys.argv if a.startswith('--config=')), '')
  overrides = [
    a
    for a in os.sys.argv
    if a.startswith('--config.')
    and not a.startswith(('--config.data.path', '--config.data.tfds_dir'))
  ]
  if overrides:
    name += ' ' + ' '.join(overrides)
  if _GENERATE.value:
    try:
      figures = generation(_CONFIG.value, name)
    except (faults.RunError, ValueError, FileNotFoundError) as e:
      cli.fail(str(e))
    _print_generation(figures)
    if _JSON.value:
      with open(_JSON.value, 'w') as f:
        json.dump(figures, f, indent=2)
    return
  configs = [(_CONFIG.value, name)]
  if _DP.value:
    if _CONFIG.value.privacy.enabled:
      cli.fail('--dp compares a plain config with its DP-SGD version: drop config.privacy.enabled.')
    configs.append((private(_CONFIG.value), name + ' [DP-SGD]'))
  runs = []
  for config, config_name in configs:
    try:
      figures = run(
        config, _STEPS.value, _WARMUP.value, config_name, allocator, 10 if _PROFILE.value else 0
      )
    except (faults.RunError, ValueError, FileNotFoundError) as e:
      cli.fail(str(e))  # Bad config or data: one line, as research.main.
    if runs:
      figures['dp_step_ratio'] = figures['step_time_median_s'] / runs[0]['step_time_median_s']
    _print(figures)
    if 'profile' in figures:
      print(profile.markdown(figures['profile']), flush=True)
    runs.append(figures)
  if _DP.value:
    print(
      f'DP-SGD step / plain step: {runs[1]["dp_step_ratio"]:.2f}x (medians; the DP step '
      f'clips each of about {_CONFIG.value.data.batch_size} sampled rows; how it groups them: '
      "the 'DP-SGD rows' line above, else microbatches of "
      f'{_CONFIG.value.privacy.microbatch_size})',
      flush=True,
    )
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(runs if len(runs) > 1 else runs[0], f, indent=2)
  if _RECORD.value:
    with open(_RECORD.value, 'a') as f:
      for figures in runs:
        f.write(json.dumps(figures) + '\n')
    if _TABLE.value:
      write_table(_RECORD.value, _TABLE.value)


if __name__ == '__main__':
  if '--profile' in os.sys.argv:
    # Traced under the huge-page allocator, LayerNorm's broadcasts took 6.7 ms, not 0.2 (AMD EPYC).
    os.environ['RESEARCH_KEEP_MALLOC'] = '1'
  host.reexec_with_huge_pages()
  app.run(main, flags_parser=cli.flags_parser('config'))
