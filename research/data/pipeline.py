"""Batches of a token stream: grain train iterators and exact eval batches.

Every batch is a dict of numpy arrays:
  inputs   int32   [B, T]  tokens
  targets  int32   [B, T]  the next token of each input
  weights  float32 [B, T]  1 for a real prediction, 0 for padding
  reset    bool    [B]     True: this row starts a new stream (an LSTM zeroes
                           its carry for the row before the batch)

Shape letters: N = tokens in the split, B = rows per batch (per process in
train batches), G = global batch rows, T = sequence length, L = tokens per
row, W = windows per epoch.

Training kinds:
  'stream'  (LSTM; Zaremba et al. 2014, the TF PTB tutorial): the stream is
    cut into G contiguous rows of L = N // G tokens; step k of an epoch reads
    columns [kT, (k+1)T) of every row (targets one further), so row i of step
    k+1 continues row i of step k. (L - 1) // T steps an epoch, same order
    every epoch; `reset` only on each epoch's first step.
  'windows' (Transformer): W = N // T - 1 windows per epoch; window j starts
    at j*T + u with u uniform in [0, T) (drawn per element with grain's
    index-seeded `random_map`, so every start s has s + T + 1 <= N), in an
    order shuffled by grain, reshuffled and redrawn every epoch. An epoch is
    W // G global steps (the last W % G windows of each permutation are
    dropped). Every row has `reset`.

  'poisson' (DP-SGD, research/privacy/): the stream is cut into N = (len - 1)
    // T fixed sequences (sequence i is tokens [iT, iT + T], targets one
    further). At every step each sequence is in the batch independently with
    probability q (Poisson sampling, drawn from the seed and the step alone: a
    DP run's secret, research/privacy/noise.py, or config.seed);
    the sampled ones are padded with zero-weight rows to a fixed G rows, so
    shapes stay static. A step that samples more than G keeps G of them at
    random (G is set far above the mean: research/privacy/sampler.py). An
    "epoch" is N q steps in expectation. Every row has `reset`.

All are grain `MapDataset`s indexed by step, so the iterator state is just a
position: `get_state()`/`set_state()` resume exactly, and each process builds
only its own rows [p*B, (p+1)*B) of the global batch, B = G / process_count.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import grain
import numpy as np

Batch = dict[str, np.ndarray]
KINDS = ('stream', 'windows', 'poisson')


def _check_sizes(batch_size: int, seq_len: int) -> None:
  if batch_size < 1 or seq_len < 1:
    raise ValueError(f'Need batch_size >= 1 and seq_len >= 1, got {batch_size} and {seq_len}.')


def steps_per_epoch(num_tokens: int, *, kind: str, batch_size: int, seq_len: int) -> int:
  """Global train steps in one epoch of `num_tokens` (batch_size is global)."""
  _check_sizes(batch_size, seq_len)
  if kind == 'stream':
    return max((num_tokens // batch_size - 1) // seq_len, 0)
  if kind == 'windows':
    return max(num_tokens // seq_len - 1, 0) // batch_size
  if kind == 'poisson':  # batch_size: the expected rows of a step.
    return num_sequences(num_tokens, seq_len) // batch_size
  raise ValueError(f'Unknown batching kind {kind!r}; valid: {KINDS}')


def num_sequences(num_tokens: int, seq_len: int) -> int:
  """N, the fixed sequences a 'poisson' split is cut into (the DP units)."""
  return max((num_tokens - 1) // seq_len, 0)


def poisson_batch(
  tokens_N: np.ndarray, seq_len: int, sampling_rate: float, rows: int, seed: int, step: int
) -> Batch:
  """The padded global batch of DP step `step` (module docstring)."""
  rng = np.random.default_rng([seed, step, 0x504F4953])  # 'POIS'
  chosen = np.flatnonzero(rng.random(num_sequences(len(tokens_N), seq_len)) < sampling_rate)
  if len(chosen) > rows:
    chosen = np.sort(rng.choice(chosen, rows, replace=False))
  batch = _windows_batch(tokens_N, seq_len, chosen * seq_len)
  pad = rows - len(chosen)
  for key, value in batch.items():
    batch[key] = np.concatenate([value, np.zeros((pad,) + value.shape[1:], value.dtype)])
  batch['reset'][:] = True
  return batch


def _poisson_rows(batch: Batch, first: int, count: int) -> Batch:
  return {k: v[first : first + count] for k, v in batch.items()}


def _min_tokens(kind: str, batch_size: int, seq_len: int) -> int:
  """Smallest N with one step per epoch (inverse of `steps_per_epoch`)."""
  if kind == 'stream':
    return batch_size * (seq_len + 1)
  return (batch_size + 1) * seq_len


def _make_batch(inputs_BxT: np.ndarray, targets_BxT: np.ndarray, reset: bool) -> Batch:
  b = inputs_BxT.shape[0]
  return {
    'inputs': inputs_BxT.astype(np.int32),
    'targets': targets_BxT.astype(np.int32),
    'weights': np.ones(inputs_BxT.shape, np.float32),
    'reset': np.full((b,), reset, bool),
  }


def _stream_batch(rows_BxL: np.ndarray, seq_len: int, step: int) -> Batch:
  start = step * seq_len
  return _make_batch(
    rows_BxL[:, start : start + seq_len],
    rows_BxL[:, start + 1 : start + seq_len + 1],
    reset=step == 0,
  )


def _window_start(window: int, rng: np.random.Generator, seq_len: int) -> int:
  return window * seq_len + int(rng.integers(seq_len))


def _windows_batch(tokens_N: np.ndarray, seq_len: int, starts_B: np.ndarray) -> Batch:
  # One fancy-indexing gather for the whole batch instead of a loop over rows.
  chunks_BxT1 = tokens_N[starts_B[:, None] + np.arange(seq_len + 1)]
  return _make_batch(chunks_BxT1[:, :-1], chunks_BxT1[:, 1:], reset=True)


def _shuffle_seed(seed: int) -> int:
  # grain reshuffles epoch e with seed + e, so seeds s and s+1 would share
  # permutations one epoch apart; hashing the seed decorrelates runs.
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


def train_dataset(
  tokens: np.ndarray,
  *,
  kind: str,
  batch_size: int,
  seq_len: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
  """Infinite train batches of this process's rows (see module docstring).

  Args:
    tokens: int32 [N] training stream.
    kind: 'stream' (LSTM) or 'windows' (Transformer).
    batch_size: global rows per step G, divisible by `process_count`.
    seq_len: T.
    seed: data-order seed (windows only; stream order is fixed).
    process_index: this process, in [0, process_count).
    process_count: processes sharing the global batch.

  Returns:
    A grain IterDataset; `iter()` of it is checkpointable with
    `get_state()`/`set_state()` (and grain.checkpoint for Orbax).
  """
  tokens_N = np.asarray(tokens, dtype=np.int32)
  num_steps = steps_per_epoch(len(tokens_N), kind=kind, batch_size=batch_size, seq_len=seq_len)
  if process_count < 1 or batch_size % process_count or not 0 <= process_index < process_count:
    raise ValueError(
      f'Global batch_size {batch_size} must be divisible by process_count'
      f' {process_count}, and process_index {process_index} in range.'
    )
  if num_steps < 1:
    raise ValueError(
      f'Split too small for one {kind!r} batch of {batch_size}x{seq_len}:'
      f' needs at least {_min_tokens(kind, batch_size, seq_len)} tokens,'
      f' has {len(tokens_N)}. Lower data.batch_size or data.seq_len, or'
      ' use a larger split.'
    )
  local = batch_size // process_count
  if kind == 'poisson':
    raise ValueError("kind='poisson' batches come from poisson_dataset, which takes q.")
  if kind == 'stream':
    row_len = len(tokens_N) // batch_size
    rows_GxL = tokens_N[: batch_size * row_len].reshape(batch_size, row_len)
    rows_BxL = rows_GxL[process_index * local : (process_index + 1) * local]
    ds = (
      grain.MapDataset.range(num_steps)
      .repeat(None)
      .map(functools.partial(_stream_batch, rows_BxL, seq_len))
    )
  else:
    # Shuffle window ids, keep whole batches of each epoch's permutation;
    # SliceMapDataset + repeat keep grain's per-epoch reshuffle.
    num_windows = len(tokens_N) // seq_len - 1
    ds = (
      grain.MapDataset.range(num_windows)
      .shuffle(seed=_shuffle_seed(seed))[: num_steps * batch_size]
      .repeat(None)
      .random_map(functools.partial(_window_start, seq_len=seq_len), seed=seed)
      # Runs of `local` global elements; run s*process_count + p is this
      # process's share of step s, so it draws exactly the windows (and
      # offsets) that a single process would put in rows [p*B, (p+1)*B).
      .batch(local, drop_remainder=True)[process_index::process_count]
      .map(functools.partial(_windows_batch, tokens_N, seq_len))
    )
  # The data is in memory: threads would only contend for the GIL.
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def poisson_dataset(
  tokens: np.ndarray,
  *,
  sampling_rate: float,
  rows: int,
  seq_len: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
  """Infinite DP-SGD batches: this process's share of `rows` padded rows per
  step, each of the N sequences in a step with probability `sampling_rate`.

  The batch of step k depends on (seed, k) alone, so the iterator's state is
  its position, as for the other kinds.
  """
  tokens_N = np.asarray(tokens, dtype=np.int32)
  _check_sizes(rows, seq_len)
  if num_sequences(len(tokens_N), seq_len) < 1:
    raise ValueError(f'Split too small for one sequence of {seq_len} tokens.')
  if rows % process_count:
    raise ValueError(f'DP batch rows {rows} must be divisible by process_count {process_count}.')
  local = rows // process_count
  make = functools.partial(poisson_batch, tokens_N, seq_len, sampling_rate, rows, seed)
  ds = (
    grain.MapDataset.range(2**62)
    .map(make)
    .map(functools.partial(_poisson_rows, first=process_index * local, count=local))
  )
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def eval_batches(tokens: np.ndarray, *, batch_size: int, seq_len: int) -> Iterator[Batch]:
  """Batches that score each of the N-1 next-token predictions exactly once.

  The predictions (inputs tokens[:-1], targets tokens[1:]) are cut into B
  contiguous rows of L = ceil((N-1)/B), zero-padded at the end of the stream
  (weight 0), then read in consecutive [B, T] segments (the last one padded).
  `reset` is True only on the first segment, so a recurrent model carries its
  state along each row. With B = 1 this is the plain stream.

  Args:
    tokens: int32 [N] evaluation stream, N >= 2.
    batch_size: B.
    seq_len: T.

  Returns:
    An iterator of batches (see module docstring).
  """
  _check_sizes(batch_size, seq_len)
  tokens_N = np.asarray(tokens, dtype=np.int32)
  num_predictions = len(tokens_N) - 1
  if num_predictions < 1:
    raise ValueError(f'Eval split has {len(tokens_N)} tokens; need at least 2 (one prediction).')
  row_len = math.ceil(num_predictions / batch_size)
  padded_len = math.ceil(row_len / seq_len) * seq_len
  pad = batch_size * row_len - num_predictions

  def rows(x_P: np.ndarray) -> np.ndarray:
    x_BxL = np.pad(x_P, (0, pad)).reshape(batch_size, row_len)
    return np.pad(x_BxL, ((0, 0), (0, padded_len - row_len)))

  # A plain function returning a generator, so bad sizes fail at the call.
  return _segments(
    rows(tokens_N[:-1]), rows(tokens_N[1:]), rows(np.ones(num_predictions, np.float32)), seq_len
  )


def _segments(
  inputs_BxL: np.ndarray, targets_BxL: np.ndarray, weights_BxL: np.ndarray, seq_len: int
) -> Iterator[Batch]:
  for start in range(0, inputs_BxL.shape[1], seq_len):
    cols = slice(start, start + seq_len)
    yield {
      'inputs': inputs_BxL[:, cols],
      'targets': targets_BxL[:, cols],
      'weights': weights_BxL[:, cols],
      'reset': np.full((inputs_BxL.shape[0],), start == 0, bool),
    }
