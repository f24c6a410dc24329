"""`python -m research.compress --workdir=DIR --method=int8|w8a8|prune:F`.

Compresses a finished run for deployment and measures what it costs: the
float model and the compressed one are scored with the same protocol as
training's final evaluation (research/evaluate.py), their parameter bytes
counted, and evaluation and generation timed on this machine. The result is
a new workdir (default DIR/compressed/NAME; `--out`) holding the compressed
parameters as an Orbax checkpoint, the config (with `config.compress` saying
how it was made), metrics.jsonl and a model card; `--mode=eval` and
research.generate read it like any run.

Methods:
  int8      post-training quantisation of every weight matrix to int8 with
            one absmax scale per output channel, through qwix (`qwix.quantize`,
            `qwix.dot_general`); the token embedding per row (it is looked up
            by row, and as the tied head its rows are the output channels).
            qwix then dequantises each weight before a float matmul: memory
            shrinks, time does not.
  w8a8      int8 weights as above, and every matmul's input quantised to int8
            per row at run time (dynamic absmax): int8 x int8 matmuls with
            int32 sums.
  prune:F   global magnitude pruning: the fraction F of the weight matrices'
            entries smallest in |w| (one threshold over all matrices) set to
            exactly zero; norms, biases and position tables never, embeddings
            only with --prune_embeddings. The parameters stay float and
            dense (the bytes do not change; the nonzero count does).
            --finetune_steps=N then trains N steps from the pruned model with
            its zeros held (config.optim.hold_zeros) in DIR/compressed/NAME-ftN.

Norms, biases and learned position tables stay float in every method; the
model card and the `compress` record in metrics.jsonl say so with the bytes.
"""

import contextlib
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research import checkpoint
from research import compression
from research import cli
from research import components as components_lib
from research import evaluate
from research import faults
from research import host
from research import metrics
from research import model_card
from research import provenance
from research import sampling
from research import workdir as workdir_lib
from research import workdir_lock


def parse_method(text: str) -> tuple[str, float]:
  """(a name in compression.METHODS, pruned fraction) of a --method value."""
  if text in compression.QUANTIZE:
    return text, 0.0
  if text.startswith('prune:'):
    try:
      fraction = float(text.split(':', 1)[1])
    except ValueError:
      fraction = -1.0
    if 0 < fraction < 1:
      return 'prune', fraction
  raise ValueError(
    f'--method={text!r} is not a method; use {", ".join(compression.QUANTIZE)} or prune:F '
    'with F in (0, 1), e.g. prune:0.5.'
  )


def method_name(method: str, fraction: float) -> str:
  """The folder name of a compressed run: 'int8', 'w8a8', 'prune50'."""
  return method if method != 'prune' else f'prune{round(fraction * 100):g}'


def measure(parts, params, config, *, generate_tokens: int = 128) -> dict:
  """Final figures of the valid and test splits (the training protocol), and
  the speed: evaluation tokens per second over both splits and seconds per
  evaluation call, after compiling on a slice; generation tokens per second
  of one sample of `generate_tokens` through the decoding loop (the cache),
  after compiling it."""
  seq_len = components_lib.eval_seq_len(config)
  evaluator = evaluate.Evaluator(parts, batch_size=config.data.eval_batch_size, seq_len=seq_len)
  splits = [s for s in ('valid', 'test') if s in parts.corpus.splits]
  evaluator.score(params, parts.corpus.splits['valid'][: seq_len * 2 + 1])  # Compiles.
  start = time.perf_counter()
  results = evaluator.splits(params, splits)
  seconds = time.perf_counter() - start
  tokens = sum(len(parts.corpus.splits[s]) - 1 for s in splits)
  batch_tokens = config.data.eval_batch_size * evaluate.segment_length(
    parts.model, config.data.eval_batch_size, seq_len
  )
  context = config.data.seq_len
  new = generate_tokens if parts.model.context is None else min(generate_tokens, context - 1)
  prompt = np.asarray(parts.corpus.splits['valid'][:1])

  def draw():
    return sampling.sample_batch(
      parts.model, params, prompt, jax.random.key(0), num_tokens=new, context=context,
      temperature=1.0, top_k=0, top_p=1.0,
    )  # fmt: skip

  draw()  # Compiles.
  start = time.perf_counter()
  draw()
  generate_seconds = time.perf_counter() - start
  return {
    'results': results,
    'eval_tokens_per_s': tokens / seconds,
    'eval_step_s': seconds * batch_tokens / max(tokens, 1),
    'generate_tokens_per_s': new / generate_seconds,
  }


def _speed_record(model, params, measured: dict, float_params, float_measured: dict) -> dict:
  zeros, total = compression.zero_count(model, params)
  record = {
    'param_bytes': compression.param_bytes(params),
    'float_param_bytes': compression.param_bytes(float_params),
    'zero_fraction': zeros / max(total, 1),
    'eval_tokens_per_s': measured['eval_tokens_per_s'],
    'eval_step_s': measured['eval_step_s'],
    'generate_tokens_per_s': measured['generate_tokens_per_s'],
    'float_eval_tokens_per_s': float_measured['eval_tokens_per_s'],
    'float_generate_tokens_per_s': float_measured['generate_tokens_per_s'],
  }
  # Against the float model measured in the same process, minutes apart: what a table can
  # compare across cells when other jobs load the machine differently from cell to cell.
  record['size_ratio'] = record['param_bytes'] / record['float_param_bytes']
  record['eval_speedup'] = record['eval_tokens_per_s'] / record['float_eval_tokens_per_s']
  record['generate_speedup'] = (
    record['generate_tokens_per_s'] / record['float_generate_tokens_per_s']
  )
  for split, figures in float_measured['results'].items():
    record[f'float_{split}_loss'] = figures['loss']
  return record


def _line(name: str, measured: dict, params, headline: str) -> str:
  figures = ', '.join(
    f'{split} {metrics.headline(f, headline)}' for split, f in measured['results'].items()
  )
  return (
    f'{name:>10}: {figures} | {compression.param_bytes(params) / 2**20:.2f} MiB | eval '
    f'{measured["eval_tokens_per_s"]:,.0f} tokens/s | generation '
    f'{measured["generate_tokens_per_s"]:,.1f} tokens/s'
  )


def _finished(out: str) -> bool:
  runs = provenance.read_runs(out)
  return bool(runs) and runs[-1]['event'] == 'end' and runs[-1]['status'] == 'finished'


def _prepare(out: str, *, reuse: bool = False) -> bool:
  """Whether `out` already holds this finished result (`reuse`: then it is
  read, not remade). A finished one is otherwise refused (nothing is
  replaced); an unfinished one is moved aside to out/previous/TIME."""
  if _finished(out):
    if reuse:
      return True
    raise ValueError(
      f'{out} already holds a run; nothing there is replaced. Choose another --out, or move '
      'that folder aside.'
    )
  if os.path.isdir(out) and workdir_lib.move_aside(out):
    metrics.console('Moved the unfinished compression in %s aside.', out)
  return False


def _write(out, config, parts, params, step, measured, record, started: float) -> None:
  """A compressed run's workdir: config, checkpoint, metrics, model card
  (runs.jsonl's start at `started`, when the command began)."""
  workdir_lib.check_writable(out)
  provenance.record_start(out, started)
  workdir_lib.write_config(out, config)
  manager = checkpoint.make_manager(os.path.join(out, 'checkpoints'), max_to_keep=1)
  checkpoint.save_params(manager, step, params, config, parts.corpus.tokenizer.identity)
  manager.close()
  writer = metrics.MetricWriter(out)
  for split, figures in measured['results'].items():
    writer.write(step, split, figures)
  writer.write(step, 'compress', record)
  writer.close()
  model_card.write(out, config, parts, params, step, measured['results'], '')
  provenance.record_end(out, 'finished')


def _finetune_config(config, pruned_dir: str, steps: int, learning_rate: float):
  c = ml_collections.ConfigDict(config.to_dict())
  c.compress.method = ''  # A float model trained with its zeros held.
  c.init_from = pruned_dir
  c.optim.hold_zeros = True
  c.num_train_steps, c.num_epochs = steps, 0
  c.eval_every_steps = c.checkpoint_every_steps = steps
  c.log_every_steps = min(c.log_every_steps, steps)
  # A constant rate: where the float run's schedule ended, unless given.
  c.optim.learning_rate = learning_rate
  c.optim.warmup_steps, c.optim.min_learning_rate = 0, learning_rate
  c.optim.decay_after_epochs = 10**6
  return c


def run(
  workdir: str, method_text: str, *, out: str = '', finetune_steps: int = 0, **kwargs
) -> dict:
  """Compresses `workdir`'s latest checkpoint; returns {'float', NAME[, NAME-ftN]:
  (figures per split, speed record)} and writes the compressed run(s), holding
  their workdirs' locks (research.workdir_lock) meanwhile. `kwargs`: `_run`'s."""
  method, fraction = parse_method(method_text)
  workdir_lib.readable_workdir(workdir)  # Before a lock makes a folder inside it.
  out = out or os.path.join(workdir, 'compressed', method_name(method, fraction))
  written = [out]
  if finetune_steps:
    kwargs['finetune_out'] = kwargs.get('finetune_out') or f'{out}-ft{finetune_steps}'
    written.append(kwargs['finetune_out'])
  with contextlib.ExitStack() as held:
    for folder in written:
      held.enter_context(workdir_lock.held(folder, warn=metrics.warn))
    return _run(workdir, method_text, out=out, finetune_steps=finetune_steps, **kwargs)


def _run(
  workdir: str,
  method_text: str,
  *,
  out: str,
  finetune_steps: int = 0,
  finetune_out: str = '',
  finetune_learning_rate: float = 0.0,
  prune_embeddings: bool = False,
  locations: dict | None = None,
) -> dict:
  from research import train  # pylint: disable=g-import-not-at-top

  started = time.time()
  method, fraction = parse_method(method_text)
  if finetune_steps and method != 'prune':
    raise ValueError('--finetune_steps applies to pruning (prune:F) only.')
  config, step = workdir_lib.saved_config(workdir, None, locations)
  if config.compress.method:
    raise ValueError(
      f'{workdir} is already compressed ({config.compress.method}); compress its float model, '
      f'{config.compress.source}.'
    )
  name = method_name(method, fraction)
  finetuned = finetune_out or f'{out}-ft{finetune_steps}'
  if finetune_steps and _finished(finetuned):
    raise ValueError(f'{finetuned} already holds a finished fine-tuning; nothing is replaced.')
  # An unfinished fine-tuning resumes from the finished pruning it started from.
  reuse = _prepare(out, reuse=bool(finetune_steps))
  parts, step, params = evaluate.restore(config, workdir, 'research.compress', step)
  headline = parts.corpus.headline
  float_measured = measure(parts, params, config)
  print(_line('float', float_measured, params, headline), flush=True)

  cconfig = ml_collections.ConfigDict(config.to_dict())
  cconfig.compress.update(
    method=method,
    source=os.path.abspath(workdir),
    prune_fraction=fraction,
    prune_embeddings=prune_embeddings,
  )
  if reuse:
    _, _, cparams = evaluate.restore(cconfig, out, 'research.compress')
  else:
    cparams = compression.compress_params(parts.model, params, cconfig.compress)
  measured = measure(parts, cparams, cconfig)
  record = _speed_record(parts.model, cparams, measured, params, float_measured)
  if not reuse:
    _write(out, cconfig, parts, cparams, step, measured, record, started)
  print(_line(name, measured, cparams, headline), flush=True)
  outcome = {'float': float_measured, name: measured | {'record': record, 'workdir': out}}
  if not finetune_steps:
    return outcome

  rate = finetune_learning_rate or float(parts.schedule(parts.num_train_steps - 1))
  ft_config = _finetune_config(cconfig, out, finetune_steps, rate)
  metrics.console(
    'Fine-tuning %s for %d steps at learning rate %g, zeros held.', out, finetune_steps, rate
  )
  train.train_and_evaluate(ft_config, finetuned)
  ft_parts, ft_step, ft_params = evaluate.restore(ft_config, finetuned, 'research.compress')
  zeros_before, _ = compression.zero_count(parts.model, cparams)
  zeros_after, _ = compression.zero_count(parts.model, ft_params)
  if zeros_after < zeros_before:
    raise RuntimeError(
      f'Fine-tuning moved pruned weights: {zeros_before} zeros became {zeros_after}.'
    )
  ft_measured = measure(ft_parts, ft_params, ft_config)
  ft_record = _speed_record(parts.model, ft_params, ft_measured, params, float_measured)
  writer = metrics.MetricWriter(finetuned)
  writer.write(ft_step, 'compress', ft_record)
  writer.close()
  print(_line(f'{name}-ft', ft_measured, ft_params, headline), flush=True)
  outcome[f'{name}-ft{finetune_steps}'] = ft_measured | {'record': ft_record, 'workdir': finetuned}
  return outcome


def _define_flags() -> None:
  """The program's flags, defined only when it runs (research.generate, which
  tests import beside this module, has flags of the same names)."""
  flags.DEFINE_string('workdir', None, 'A finished run (its latest checkpoint).')
  flags.DEFINE_string('method', None, 'int8, w8a8 or prune:F (module docstring).')
  flags.DEFINE_string('out', '', "The compressed run's workdir ('' : WORKDIR/compressed/NAME).")
  flags.DEFINE_integer(
    'finetune_steps', 0, 'prune:F only: train this many steps with the zeros held.', lower_bound=0
  )
  flags.DEFINE_string('finetune_out', '', "The fine-tuned run's workdir ('' : OUT-ftN).")
  flags.DEFINE_float(
    'finetune_learning_rate',
    0.0,
    "Constant rate of the fine-tuning (0: where the run's schedule ended).",
  )
  flags.DEFINE_boolean('prune_embeddings', False, 'Prune the embedding tables too.')
  flags.DEFINE_string('data_path', '', "config.data.path here ('' : as trained).")
  flags.DEFINE_string('tfds_dir', '', "config.data.tfds_dir here ('' : as trained).")
  flags.mark_flags_as_required(['workdir', 'method'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  host.tune_allocator()
  try:
    f = flags.FLAGS
    run(
      f.workdir,
      f.method,
      out=f.out,
      finetune_steps=f.finetune_steps,
      finetune_out=f.finetune_out,
      finetune_learning_rate=f.finetune_learning_rate,
      prune_embeddings=f.prune_embeddings,
      locations={'path': f.data_path, 'tfds_dir': f.tfds_dir},
    )
  except faults.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    return faults.EXIT_PREEMPTED
  except (faults.RunError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  return 0


if __name__ == '__main__':
  _define_flags()
  host.reexec_with_huge_pages()
  app.run(main, flags_parser=cli.flags_parser(None))
