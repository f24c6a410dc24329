"""What every probe reads: a finished run's config, model and parameters, and
the model's log-likelihood of text.

Shape letters: B rows scored in one call, T segment length, W a group's padded
row width (a multiple of T), V vocabulary.

How a probe's text is read (`Context.sequence_logprob`):
1. Written as the run's corpus writes text (`normalise`): a vocabulary
   without cased words (the Penn Treebank's: 'N' alone, its number token) gets
   lower case; a word vocabulary without ',', ';', '!' or '?' in any word (the
   Penn Treebank's) gets words outside it stripped of sentence punctuation,
   numbers written 'N' when it holds 'N', and the clitics it holds split off
   as it writes them ("couldn't" -> "could n't", "he's" -> "he 's"); curly
   quotes become straight ones where the vocabulary lacks them. Byte and
   subword vocabularies read the text as it is.
2. Encoded as one line, '\\n' + text + '\\n' (a corpus without '\\n' in its
   vocabulary: its training split's first token, then the text).
3. The model reads the line from its initial state (the LSTM's zero carry)
   and the log-likelihood is the sum over every token after the first of
   log p(token | the tokens before it on the line), in nats. It equals minus
   the sum of the per-token losses research.evaluate.Evaluator computes on the
   same ids in one row: a Transformer reads a line longer than its training
   context in consecutive windows of that context, each from its start, as
   the evaluator does (tests/audit_probes_test.py checks the equality).

A word is unknown (`Context.unknown`) when the tokenizer cannot write it: a
word vocabulary would make it `<unk>` (the literal '<unk>' and '<eos>' are
unknown too), or a character vocabulary lacks one of its characters. Probes
never score such text: they report it.
"""

import functools
import hashlib
import re
import string
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import components as components_lib
from research import evaluate
from research import models
from research import sharding
from research import workdir as workdir_lib

# Logit floats (B * T * V) one scoring call may hold: about 64 MiB of float32.
_LOGITS_BUDGET = 2**24
_MAX_ROWS = 64  # Rows per scoring call at most.
_MIN_WIDTH = 16  # Row widths are powers of two from here, so few shapes compile.

# What a punctuation-free word corpus (the Penn Treebank) writes as separate words.
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
_NUMBER = re.compile(r'[0-9][0-9,.]*')
_QUOTES = {'\u2019': "'", '\u2018': "'", '\u201c': '"', '\u201d': '"'}
# Kept inside a word when stripping sentence punctuation: PTB writes "u.s.", "&", "$".
_WORD_MARKS = "'-&$."


class NotApplicable(ValueError):
  """A probe cannot apply to this model or tokenizer; the message says why."""


def shipped_bytes(path: str, sha256: str, where: str) -> bytes:
  """The bytes of a data file shipped under third_party/ (`where` names its
  README), refused with a ValueError unless their sha256 is the recorded one."""
  with open(path, 'rb') as f:
    raw = f.read()
  digest = hashlib.sha256(raw).hexdigest()
  if digest != sha256:
    raise ValueError(
      f'{path} has sha256 {digest}, not the recorded {sha256}; restore the shipped file ({where}).'
    )
  return raw


def _symbols(tokenizer) -> list[str] | None:
  """The vocabulary's entries, or None for byte and subword tokenizers (every text writes)."""
  vocab = getattr(tokenizer, 'vocab', None)
  return None if vocab is None else list(vocab)


def _is_word_level(tokenizer) -> bool:
  return getattr(tokenizer, 'unk_id', None) is not None


def normalise(tokenizer, text: str) -> str:
  """`text` as the tokenizer's corpus writes text (module docstring, step 1), on one line."""
  text = ' '.join(text.split())
  vocab = _symbols(tokenizer)
  if vocab is None:
    return text
  chars = set(''.join(vocab))
  for curly, straight in _QUOTES.items():
    if curly not in chars:
      text = text.replace(curly, straight)
  word_level = _is_word_level(tokenizer)
  # A single-letter entry (PTB's 'N') does not make a word vocabulary cased.
  cased = any(e != e.lower() and (len(e) > 1 or not word_level) for e in vocab)
  if not cased:
    text = text.lower()
  if not word_level:
    return text
  known = set(vocab)
  bare = not any(c in e for e in vocab for c in ',;!?')
  strip = ''.join(c for c in string.punctuation + '"' if c not in _WORD_MARKS)
  words = []
  for word in text.split():
    if word in known:
      words.append(word)
      continue
    pieces = [word]
    if bare:  # Outer dots too ("home." -> "home"), inner ones kept ("u.s.").
      pieces = word.translate(str.maketrans(strip, ' ' * len(strip))).split()
      pieces = [p if p in known else p.strip('.') for p in pieces]
    for piece in filter(None, pieces):
      if 'N' in known and _NUMBER.fullmatch(piece):
        words.append('N')
        continue
      clitic = next(
        (c for c in _CLITICS if c in known and piece.endswith(c) and len(piece) > len(c)), None
      )
      if bare and clitic and piece not in known:
        words += [piece[: -len(clitic)], clitic]
      else:
        words.append(piece)
  return ' '.join(words)


def unknown_words(tokenizer, text: str) -> list[str]:
  """The words of `normalise(text)` the tokenizer cannot write (module docstring)."""
  vocab = _symbols(tokenizer)
  if vocab is None:
    return []
  words = normalise(tokenizer, text).split()
  if _is_word_level(tokenizer):
    known = set(vocab) - {'<unk>', '<eos>'}
    return [w for w in words if w not in known]
  chars = set(vocab)
  return [w for w in words if not set(w) <= chars]


def line_ids(tokenizer, text: str, first_token: int) -> np.ndarray:
  """The ids of `normalise(text)` as one line (module docstring, step 2)."""
  text = normalise(tokenizer, text)
  vocab = _symbols(tokenizer)
  if vocab is not None and not _is_word_level(tokenizer) and '\n' not in vocab:
    return np.concatenate([[first_token], tokenizer.encode(text)]).astype(np.int32)
  return np.asarray(tokenizer.encode('\n' + text + '\n'), np.int32)


def _row_loss_step(params, carry, inputs_BxT, targets_BxT, weights_BxT, *, model: models.Model):
  """(Summed weighted token losses of each row in nats, the carry after the segment)."""
  logits_BxTxV, carry = model.apply(params, carry, inputs_BxT, train=False, rng=None)
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  # As metrics.cross_entropy_token_sums: logsumexp minus the target logit.
  target_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], -1)[..., 0]
  nll_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1) - target_BxT
  return jnp.sum(nll_BxT * weights_BxT, axis=1), carry


def _width(predictions: int) -> int:
  return max(_MIN_WIDTH, 1 << (predictions - 1).bit_length())


def make_row_losses(
  model: models.Model, params, mesh, vocab_size: int
) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
  """`row_losses(rows)`: for each 1-D id array of at least 2 ids, the summed
  loss in nats of predicting its ids 2..L from the ones before, read from the
  model's initial state (module docstring, step 3); float64 [len(rows)].

  Rows are scored shortest first, in groups padded to a power-of-two width and
  to a fixed row count, so a handful of shapes compile.
  """
  step = jax.jit(functools.partial(_row_loss_step, model=model))
  replicated = sharding.replicated(mesh)

  def put(array: np.ndarray):  # Every process holds the whole batch, as the evaluator's.
    return jax.make_array_from_callback(array.shape, replicated, lambda idx: array[idx])

  def row_losses(rows: Sequence[np.ndarray]) -> np.ndarray:
    rows = [np.asarray(r, np.int32).reshape(-1) for r in rows]
    short = [i for i, r in enumerate(rows) if len(r) < 2]
    if short:
      raise ValueError(f'Rows {short[:5]} have fewer than 2 tokens: nothing to predict.')
    order = np.argsort([len(r) for r in rows], kind='stable')
    out = np.zeros(len(rows), np.float64)
    start = 0
    while start < len(order):
      last = order[min(start + _MAX_ROWS, len(order)) - 1]
      width = _width(len(rows[last]) - 1)
      seg = width if model.context is None else min(width, model.context)
      width = -(-width // seg) * seg
      rows_per_call = max(1, min(_MAX_ROWS, _LOGITS_BUDGET // (seg * vocab_size)))
      rows_per_call = 1 << (rows_per_call.bit_length() - 1)  # A power of two: few shapes.
      group = order[start : start + rows_per_call]
      inputs_BxW = np.zeros((rows_per_call, width), np.int32)
      targets_BxW = np.zeros_like(inputs_BxW)
      weights_BxW = np.zeros((rows_per_call, width), np.float32)
      for b, i in enumerate(group):
        n = len(rows[i]) - 1
        inputs_BxW[b, :n], targets_BxW[b, :n], weights_BxW[b, :n] = rows[i][:-1], rows[i][1:], 1
      carry = model.init_carry(rows_per_call)
      total_B = np.zeros(rows_per_call, np.float64)
      for s in range(0, width, seg):
        cols = slice(s, s + seg)
        sums_B, carry = step(
          params,
          carry,
          put(inputs_BxW[:, cols]),
          put(targets_BxW[:, cols]),
          put(weights_BxW[:, cols]),
        )
        total_B += np.asarray(sums_B, np.float64)
      out[group] = total_B[: len(group)]
      start += len(group)
    return out

  return row_losses


class Context(NamedTuple):
  """A finished run as the probes read it (research/audits/__init__.py)."""

  workdir: str
  config: ml_collections.ConfigDict  # The config the run was trained with.
  parts: components_lib.Components  # components.build(config): corpus, model, mesh.
  params: Any  # The checkpoint's parameters.
  step: int  # The checkpoint's step.
  row_losses: Callable[[Sequence[np.ndarray]], np.ndarray]  # `make_row_losses`'.

  @property
  def tokenizer(self):
    return self.parts.corpus.tokenizer

  def normalise(self, text: str) -> str:
    return normalise(self.tokenizer, text)

  def encode(self, text: str) -> np.ndarray:
    """The ids of `normalise(text)`, without the line end a word tokenizer adds."""
    ids = np.asarray(self.tokenizer.encode(self.normalise(text)), np.int32)
    if _is_word_level(self.tokenizer) and len(ids) and ids[-1] == self.tokenizer.eos_id:
      ids = ids[:-1]
    return ids

  def unknown(self, text: str) -> list[str]:
    """The words of `text` the vocabulary cannot write ([] for byte and subword levels)."""
    return unknown_words(self.tokenizer, text)

  def sequence_logprob(self, texts: Sequence[str]) -> np.ndarray:
    """Total log-likelihood in nats of each text read as a line (module docstring)."""
    first = int(self.parts.corpus.splits['train'][0])
    return -self.row_losses([line_ids(self.tokenizer, t, first) for t in texts])

  def token_losses(self, rows_NxT: np.ndarray) -> np.ndarray:
    """Per-row summed loss in nats of predicting each row's ids 2..T from the
    ones before, every row read from the model's initial state."""
    return self.row_losses(list(np.asarray(rows_NxT)))


def load(workdir: str, locations: dict | None = None, step: int | None = None) -> Context:
  """The Context of `workdir`'s checkpoint at `step` (default: the latest).

  `locations`: config.data keys ('path', 'tfds_dir') where the data lies here.

  Raises:
    ValueError: research.workdir.readable_workdir's one line when `workdir`
      holds no readable run; a config or tokenizer that does not match.
  """
  config, step = workdir_lib.saved_config(workdir, step, locations)
  parts, step, params = evaluate.restore(config, workdir, 'research.audit', step)
  row_losses = make_row_losses(parts.model, params, parts.mesh, parts.corpus.tokenizer.vocab_size)
  return Context(workdir, config, parts, params, step, row_losses)
