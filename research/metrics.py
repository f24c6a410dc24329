"""Losses, perplexity, bits per character and byte, throughput, and writers.

Shape letters: B batch rows, T time steps, V vocabulary.

Every event goes to three places: a console line, TensorBoard event files
(tensorboardX, no TensorFlow) and `metrics.jsonl` in the workdir, one JSON
object per line with at least `step`, `split` and `time` (Unix seconds).
"""

import json
import math
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from tensorboardX import SummaryWriter


class CrossEntropySums(NamedTuple):
  """Sums over a batch's tokens weighted by w, z = log sum_v exp(logit_v)."""

  loss: jax.Array  # sum of w * (z - the target's logit): the weighted token losses, nats.
  weight: jax.Array  # sum of w: the token count.
  log_z: jax.Array  # sum of w * z, nats (its mean is the step's `log_z`).
  log_z_squared: jax.Array  # sum of w * z^2: PaLM's z-loss before its coefficient.


def cross_entropy_token_sums(
  logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array
) -> CrossEntropySums:
  """The cross-entropy's sums and those of z, the logsumexp it computes anyway.

  Computed in float32 whatever the logits' dtype, as logsumexp minus the
  target logit: unlike a full log-softmax this never materialises a second
  BxTxV array; for 1,120 tokens over PTB's 10,000 words its gradient took
  36 ms instead of 60 ms on a 2-core CPU. The sums of z are over BxT values
  only (what a caller does not use, jit drops).
  """
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  target_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], -1)[..., 0]
  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  nll_BxT = log_z_BxT - target_BxT
  # The three weighted sums as one reduction. Written as three, XLA's CPU
  # scheduler kept a second BxTxV buffer alive through the step: for
  # ptb_lstm:small 68.8 MB of temporaries instead of 53.5, 250-800 page
  # faults and 3.3 ms (7%) a step on a 2-core AMD EPYC. The gradients are
  # the same either way.
  stacked_3xBxT = jnp.stack([nll_BxT, log_z_BxT, jnp.square(log_z_BxT)])
  sums_3 = jnp.sum((stacked_3xBxT * weights_BxT).reshape(3, -1), axis=1)
  return CrossEntropySums(
    loss=sums_3[0], weight=jnp.sum(weights_BxT), log_z=sums_3[1], log_z_squared=sums_3[2]
  )


def cross_entropy_sums(
  logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Returns (sum of weighted token losses in nats, sum of weights), as
  `cross_entropy_token_sums` computes them."""
  sums = cross_entropy_token_sums(logits_BxTxV, targets_BxT, weights_BxT)
  return sums.loss, sums.weight


def top1_hits(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array) -> jax.Array:
  """Sum of the weights of the tokens whose largest logit is the target.

  Padding has weight 0, so it never counts; ties go to the lowest id, and a
  NaN counts as the largest, as in `jnp.argmax`. Computed as two plain
  reductions (the largest logit, then the lowest id holding it) because XLA's
  CPU backend runs argmax's (value, index) reduction unvectorised: 11.6 ms
  against 2.3 ms for 520 x 10,000 logits (2-core AMD EPYC), nearly half of
  an evaluation call of configs/default.py.
  """
  V = logits_BxTxV.shape[-1]  # pylint: disable=invalid-name
  max_BxTx1 = jnp.max(logits_BxTxV, axis=-1, keepdims=True)  # NaN where a NaN is.
  is_max_BxTxV = jnp.where(jnp.isnan(max_BxTx1), jnp.isnan(logits_BxTxV), logits_BxTxV == max_BxTx1)
  ids_V = jnp.arange(V, dtype=jnp.int32)
  first_BxT = jnp.min(jnp.where(is_max_BxTxV, ids_V, V), axis=-1)
  return jnp.sum(jnp.where(first_BxT == targets_BxT, weights_BxT, 0.0))


def bits_per_unit(loss: float, tokens: int, units: int) -> float:
  """Bits per character (or byte) of a text of `units` characters (bytes)
  that `tokens` tokens encode, from the mean loss per token in nats: total
  nats / (units * ln 2), total nats = loss * tokens. When tokens == units it
  is computed as loss / ln 2, so character-level bpc is exactly that."""
  if tokens == units:
    return loss / math.log(2)
  return loss * tokens / (units * math.log(2))


def split_figures(loss: float, size, accuracy: float | None = None) -> dict[str, float]:
  """Every figure of a split's mean loss, whatever its tokenizer.

  Args:
    loss: mean loss in nats per predicted token of the split.
    size: what the split holds (`research.data.SplitSize`: `tokens`,
      `characters`, `bytes`); its characters (bytes) per token turn the
      per-token loss into bits per character (byte).
    accuracy: top-1 next-token accuracy (a fraction), if measured.

  Returns:
    'loss' (nats per token), 'perplexity' (e ** loss), 'bpc' and 'bpb' (bits
    per character and per UTF-8 byte), and 'accuracy' when given.
  """
  figures = {
    'loss': loss,
    'perplexity': math.exp(min(loss, 700.0)),
    'bpc': bits_per_unit(loss, size.tokens, size.characters),
    'bpb': bits_per_unit(loss, size.tokens, size.bytes),
  }
  if accuracy is not None:
    figures['accuracy'] = accuracy
  return figures


_HEADLINES = {'perplexity': 'ppl {:.2f}', 'bpc': 'bpc {:.4f}', 'bpb': 'bpb {:.4f}'}


def headline(figures: dict[str, float], figure: str) -> str:
  """'ppl 123.45' or 'bpc 1.2345' (`figure`: the corpus's headline, see
  `research.data.Corpus.headline`) for a console line, then 'acc 41.2%' when
  the figures hold an accuracy."""
  line = _HEADLINES[figure].format(figures[figure])
  if 'accuracy' in figures:
    line += f' | acc {100 * figures["accuracy"]:.1f}%'
  return line


class Throughput:
  """Tokens per second and time left, measured between log events."""

  def __init__(
    self,
    tokens_per_step: int,
    total_steps: int,
    flops_per_token: float = 0.0,
    peak_flops_per_s: float | None = None,
  ):
    self._tokens_per_step = tokens_per_step
    self._total_steps = total_steps
    self._flops_per_token = flops_per_token
    self._peak = peak_flops_per_s
    self._last_time = None
    self._last_step = None

  def reset(self, step: int) -> None:
    self._last_time, self._last_step = time.perf_counter(), step

  def update(self, step: int) -> dict[str, float]:
    """Figures for the steps since the last call; restarts the clock."""
    now = time.perf_counter()
    steps = step - self._last_step
    seconds = max(now - self._last_time, 1e-9)
    step_time = seconds / max(steps, 1)
    self._last_time, self._last_step = now, step
    tokens_per_s = steps * self._tokens_per_step / seconds
    figures = {
      'tokens_per_s': tokens_per_s,
      'step_time_s': step_time,
      'eta_s': (self._total_steps - step) * step_time,
      'flops_per_s': tokens_per_s * self._flops_per_token,
    }
    if self._peak:
      figures['mfu'] = figures['flops_per_s'] / self._peak
    return figures


def process_prefix() -> str:
  """'' in process 0 or a one-process run, else '[process I] '.

  Asked only once jax.distributed is initialized: asking earlier would start
  JAX's backend before the processes have joined.
  """
  index = jax.process_index() if jax.distributed.is_initialized() else 0
  return f'[process {index}] ' if index else ''


# What every epsilon printed for a DP run with seeded noise adds (research/privacy/noise.py):
# the guarantee holds only against whoever does not know the seed.
SEEDED_NOISE = ' (seeded noise: assumes config.seed is secret)'


def console(message: str, *args) -> None:
  """A line for the person watching the run (stdout, flushed at once).

  Library chatter goes through absl logging at WARNING and above; these lines
  are the run's own report. In a multi-process run only process 0 prints
  them: every process would print the same line.
  """
  if not process_prefix():
    print(message % args if args else message, flush=True)


def warn(message: str, *args) -> None:
  """A warning or error line (stderr, flushed at once), from every process:
  a follower's starts with its index ('[process 1] warning: ...')."""
  print(process_prefix() + (message % args if args else message), file=sys.stderr, flush=True)


def hours_minutes_seconds(seconds: float) -> tuple[int, int, int]:
  """Whole hours, minutes and seconds of `seconds` (rounded to a second)."""
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return h, m, s


def _format_eta(seconds: float) -> str:
  return '{}:{:02d}:{:02d}'.format(*hours_minutes_seconds(seconds))


class MetricWriter:
  """Writes scalars and text to the console, TensorBoard and metrics.jsonl."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self._enabled = enabled
    self._jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard')) if enabled else None

  def truncate_after(self, step: int, also_at_step: tuple[str, ...] = ()) -> None:
    """Drops events past `step` (and those of `also_at_step` splits at it).

    A resumed run rewrites what it redoes, so the file never holds two
    records of one event.
    """
    if not self._enabled or not os.path.exists(self._jsonl_path):
      return

    def keep(record):
      return record['step'] < step or (
        record['step'] == step and record['split'] not in also_at_step
      )

    with open(self._jsonl_path) as f:
      lines = [l for l in f if l.strip() and keep(json.loads(l))]
    tmp = self._jsonl_path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(lines)
    os.replace(tmp, self._jsonl_path)

  def write(self, step: int, split: str, scalars: dict[str, Any]) -> None:
    """One event: a JSON line, TensorBoard scalars under `split/`."""
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, 'time': time.time()}
    record.update({k: float(v) for k, v in scalars.items()})
    with open(self._jsonl_path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in scalars.items():
      self._tb.add_scalar(f'{split}/{k}', float(v), step)

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self._enabled:
      self._tb.add_text(tag, text, step)

  def log_train(
    self, step: int, total: int, figures: dict[str, float], headline_figure: str
  ) -> None:
    """The console line of a log interval, showing `headline_figure`."""
    mfu = f' | MFU {100 * figures["mfu"]:.1f}%' if 'mfu' in figures else ''
    privacy = ''
    if 'epsilon' in figures:
      privacy = (
        f' | eps {figures["epsilon"]:.3f} (RDP {figures["rdp_epsilon"]:.3f}) at delta '
        f'{figures["delta"]:.0e}' + (SEEDED_NOISE if figures.get('seeded_noise') else '')
      )
    console(
      'step %d/%d | loss %.4f | %s | lr %.3g | %.0f tok/s%s%s | ETA %s',
      step,
      total,
      figures['loss'],
      headline(figures, headline_figure),
      figures['learning_rate'],
      figures['tokens_per_s'],
      mfu,
      privacy,
      _format_eta(figures['eta_s']),
    )

  def flush(self) -> None:
    if self._enabled:
      self._tb.flush()

  def close(self) -> None:
    if self._enabled:
      self._tb.close()
