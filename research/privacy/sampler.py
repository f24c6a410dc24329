"""How a DP run draws its batches: the Poisson sampling rate, the padded
batch size, and delta, from the config and the training split.

With N training sequences and an expected batch of E rows (data.batch_size),
each sequence enters each step with probability q = E / N; the number of rows
is Binomial(N, q). Batches are padded to a fixed G rows so shapes stay
static; G is E plus 8 standard deviations (rounded up to what the mesh and
the microbatches divide), so a step with more than G rows, whose excess is
dropped, has probability below 1e-15 and changes no figure.
"""

import math

import ml_collections

from research.data import pipeline


def padded_rows(expected: float, sampling_rate: float, multiple: int) -> int:
  """G: the expected rows plus 8 standard deviations, a multiple of `multiple`."""
  rows = math.ceil(expected + 8 * math.sqrt(expected * (1 - sampling_rate)))
  return -(-rows // multiple) * multiple


def default_delta(num_sequences: int) -> float:
  """The largest power of ten below 1 / N (the usual delta << 1/N rule)."""
  return 10.0 ** math.floor(math.log10(1.0 / num_sequences) - 1e-9)


def sampling(config: ml_collections.ConfigDict, num_tokens: int) -> tuple[int, float, float]:
  """(N sequences, q, delta) of a DP run over a training split of `num_tokens`.

  Raises:
    ValueError: naming data.batch_size when it is not below N.
  """
  n = pipeline.num_sequences(num_tokens, config.data.seq_len)
  if config.data.batch_size >= n:
    raise ValueError(
      f'config.data.batch_size={config.data.batch_size} is the expected rows of a DP step and '
      f'must be below the {n} training sequences of {config.data.seq_len} tokens; lower it.'
    )
  delta = config.privacy.delta or default_delta(n)
  return n, config.data.batch_size / n, delta
