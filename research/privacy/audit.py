"""Memorisation audit: canaries and their exposure (Carlini et al. 2019,
"The Secret Sharer").

A canary is a fixed prefix followed by a secret of k tokens drawn uniformly
from an alphabet of a tokens, so the randomness space R has |R| = a^k
secrets. Canaries are inserted into the training split, each a configured
number of times; held-out canaries of the same format are never inserted.

The log-perplexity of a canary is -log2 Pr(secret | prefix) under the model
(bits, the secret's tokens only). Its exposure compares it with the other
secrets of R:

- exact (the paper's definition, section 4.2): exposure = log2 |R| - log2
  rank, the rank counted among the candidates (1 = the most likely); when R
  is too large to score, among a uniform sample of m candidates, log2 m -
  log2 rank (the same ratio estimated);
- extrapolated (section 4.3): -log2 F(log-perplexity), F the CDF of a skew
  normal fitted to the candidates' log-perplexities (scipy's skewnorm), which
  reaches beyond log2 m when a canary is more likely than every candidate.

A memorised canary has exposure near log2 |R|; a canary the model has not
learnt has exposure about 1/ln 2 = 1.44 bits on average (the expectation of
-log2 of a uniform rank fraction), which the held-out canaries measure.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Canary:
  prefix_ids: tuple[int, ...]
  secret_ids: tuple[int, ...]
  repetitions: int  # Copies inserted into the training split (0: held out).

  @property
  def ids(self) -> np.ndarray:
    return np.asarray(self.prefix_ids + self.secret_ids, np.int32)


def alphabet(vocab_size: int, excluded: set[int], size: int, seed: int) -> np.ndarray:
  """`size` distinct token ids outside `excluded` (unknown, end of line ...),
  drawn with `seed`; the secrets' symbols."""
  allowed = np.array([i for i in range(vocab_size) if i not in excluded], np.int32)
  if size > len(allowed):
    raise ValueError(
      f'config.audit.alphabet_size={size} exceeds the {len(allowed)} tokens the vocabulary '
      'offers for secrets; lower it.'
    )
  return np.sort(np.random.default_rng([seed, 0xA1]).choice(allowed, size, replace=False))


def make_canaries(
  prefix_ids: np.ndarray,
  symbols: np.ndarray,
  secret_length: int,
  repetitions: tuple[int, ...],
  per_count: int,
  seed: int,
) -> list[Canary]:
  """`per_count` canaries for each repetition count, and `per_count` held out
  (repetitions 0); distinct secrets, drawn with `seed`."""
  rng = np.random.default_rng([seed, 0xCA])
  counts = [r for r in repetitions for _ in range(per_count)] + [0] * per_count
  space = len(symbols) ** secret_length
  if len(counts) > space:
    raise ValueError(
      f'The audit needs {len(counts)} distinct secrets but |R| = {space}; raise '
      'config.audit.alphabet_size or audit.secret_length.'
    )
  secrets, canaries = set(), []
  for count in counts:
    while True:
      secret = tuple(int(s) for s in rng.choice(symbols, secret_length))
      if secret not in secrets:
        break
    secrets.add(secret)
    canaries.append(Canary(tuple(int(p) for p in prefix_ids), secret, count))
  return canaries


def insert(tokens_N: np.ndarray, canaries: list[Canary], boundaries_N: np.ndarray, seed: int):
  """The stream with every canary's copies inserted at random positions from
  `boundaries_N` (indices where a new line starts), in one pass."""
  copies = [c.ids for c in canaries for _ in range(c.repetitions)]
  if not copies:
    return np.asarray(tokens_N, np.int32)
  rng = np.random.default_rng([seed, 0x1E])
  at = np.sort(rng.choice(boundaries_N, len(copies), replace=len(copies) > len(boundaries_N)))
  order = rng.permutation(len(copies))
  pieces, start = [], 0
  for position, k in zip(at, order):
    pieces += [tokens_N[start:position], copies[k]]
    start = position
  pieces.append(tokens_N[start:])
  return np.concatenate(pieces).astype(np.int32)


def candidates(symbols: np.ndarray, secret_length: int, size: int, seed: int) -> np.ndarray:
  """Secrets to rank against, [M, k]: all of R when |R| <= size, else `size`
  drawn uniformly (with replacement) with `seed`."""
  space = len(symbols) ** secret_length
  if space <= size:
    grids = np.meshgrid(*[symbols] * secret_length, indexing='ij')
    return np.stack([g.ravel() for g in grids], axis=-1).astype(np.int32)
  rng = np.random.default_rng([seed, 0xCC])
  return rng.choice(symbols, (size, secret_length)).astype(np.int32)


def exposure_exact(log_perplexity: float, reference: np.ndarray, space: int) -> float:
  """log2 |R| - log2 rank; rank = 1 + candidates strictly more likely. With
  a sample (len(reference) < space) the rank is scaled to R."""
  rank = 1 + int(np.sum(np.asarray(reference) < log_perplexity))
  return math.log2(space) - math.log2(rank * space / len(reference))


def exposure_extrapolated(log_perplexity: float, reference: np.ndarray) -> float:
  """-log2 of the fitted skew normal's CDF at the canary's log-perplexity."""
  # Imported here: scipy.stats is seconds of every start-up, and only the audit fits.
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel

  params = scipy_stats.skewnorm.fit(np.asarray(reference, np.float64))
  cdf = scipy_stats.skewnorm.cdf(log_perplexity, *params)
  return float(-np.log2(max(cdf, np.finfo(np.float64).tiny)))


def log_perplexities(model, params, prefix_ids, secrets_MxK: np.ndarray, chunk: int = 256):
  """-log2 Pr(secret | prefix) in bits for every row of `secrets_MxK`, each
  read from the model's initial state (the LSTM's zero carry), in chunks."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  prefix = np.asarray(prefix_ids, np.int32)
  k = secrets_MxK.shape[1]

  @jax.jit
  def score(sequences_BxL):
    logits_BxTxV, _ = model.apply(
      params, model.init_carry(sequences_BxL.shape[0]), sequences_BxL[:, :-1], train=False, rng=None
    )
    log_probs_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    targets_BxT = sequences_BxL[:, 1:]
    picked_BxT = jnp.take_along_axis(log_probs_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return -jnp.sum(picked_BxT[:, -k:], axis=1) / jnp.log(2.0)

  out = []
  for start in range(0, len(secrets_MxK), chunk):
    part = secrets_MxK[start : start + chunk]
    rows = np.concatenate([np.broadcast_to(prefix, (len(part), len(prefix))), part], axis=1)
    padded = np.zeros((chunk, rows.shape[1]), np.int32)  # One compiled shape.
    padded[: len(part)] = rows
    out.append(np.asarray(score(jnp.asarray(padded)))[: len(part)])
  return np.concatenate(out).astype(np.float64)
