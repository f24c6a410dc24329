"""The audit of a run (config.audit): its canaries built from the config and
the vocabulary, inserted into the training split, and scored after training
or by `--mode=audit` (research/privacy/audit.py has the definitions).

The canaries depend on the config and the tokenizer alone, so a finished
workdir's audit rebuilds exactly the canaries its training split held.
"""

import math

import ml_collections
import numpy as np

from research import metrics
from research.privacy import audit


def _line_end(tokenizer) -> int:
  return int(tokenizer.encode('\n')[-1])


def build(config: ml_collections.ConfigDict, tokenizer) -> tuple[list[audit.Canary], np.ndarray]:
  """(canaries, the secrets' alphabet) of `config.audit`.

  Raises:
    ValueError: naming config.audit.prefix when it has a token outside the
      vocabulary, or the alphabet's size when the vocabulary cannot give it.
  """
  a = config.audit
  try:
    prefix = tokenizer.encode(a.prefix)
  except ValueError as e:
    raise ValueError(f'config.audit.prefix={a.prefix!r} cannot be encoded: {e}') from e
  unknown = getattr(tokenizer, 'vocab', None) and '<unk>' in tokenizer.vocab
  unk_id = tokenizer.vocab.index('<unk>') if unknown else -1
  prefix = prefix[prefix != _line_end(tokenizer)]  # A word prefix ends its line.
  if len(prefix) == 0 or np.any(prefix == unk_id):
    raise ValueError(
      f'config.audit.prefix={a.prefix!r} must be non-empty text whose every token is in the '
      'vocabulary (words outside it become <unk>); choose words of the corpus.'
    )
  excluded = {_line_end(tokenizer), unk_id}
  symbols = audit.alphabet(tokenizer.vocab_size, excluded, a.alphabet_size, a.seed)
  canaries = audit.make_canaries(
    prefix, symbols, a.secret_length, tuple(a.repetitions), a.canaries_per_count, a.seed
  )
  return canaries, symbols


def insert(train_N: np.ndarray, config: ml_collections.ConfigDict, tokenizer) -> np.ndarray:
  """The training stream with the canaries' copies at random line starts,
  each copy ending its own line."""
  canaries, _ = build(config, tokenizer)
  end = _line_end(tokenizer)
  lined = [audit.Canary(c.prefix_ids, c.secret_ids + (end,), c.repetitions) for c in canaries]
  boundaries = np.flatnonzero(train_N == end) + 1
  return audit.insert(train_N, lined, boundaries, config.audit.seed)


def run(model, params, config: ml_collections.ConfigDict, tokenizer) -> list[dict]:
  """Scores every canary: one record per canary (split 'audit': repetitions,
  log_perplexity in bits, exposure by rank and extrapolated) and one per
  repetition count (split 'audit_rN', mean exposure; N = 0: held out)."""
  canaries, symbols = build(config, tokenizer)
  a = config.audit
  space = len(symbols) ** a.secret_length
  reference = audit.candidates(symbols, a.secret_length, a.reference_size, a.seed)
  prefix = canaries[0].prefix_ids
  # One call, so the scoring function is compiled once for both.
  both = audit.log_perplexities(
    model, params, prefix, np.concatenate([reference, [c.secret_ids for c in canaries]])
  )
  scores, mine = both[: len(reference)], both[len(reference) :]
  records = []
  for i, (canary, value) in enumerate(zip(canaries, mine)):
    records.append(
      {
        'split': 'audit',
        'canary': i,
        'repetitions': canary.repetitions,
        'log_perplexity': float(value),
        'exposure': audit.exposure_exact(value, scores, space),
        'exposure_extrapolated': audit.exposure_extrapolated(value, scores),
        'log2_space': math.log2(space),
      }
    )
  per_canary = list(records)
  for count in sorted({c.repetitions for c in canaries}):
    mine_r = [r for r in per_canary if r['repetitions'] == count]
    records.append(
      {
        'split': f'audit_r{count}',
        'exposure': float(np.mean([r['exposure'] for r in mine_r])),
        'exposure_extrapolated': float(np.mean([r['exposure_extrapolated'] for r in mine_r])),
        'canaries': len(mine_r),
        'log2_space': math.log2(space),
      }
    )
  return records


def log(step: int, records: list[dict], writer) -> None:
  """Writes the records at `step` and prints one console line per count."""
  for record in records:
    figures = {k: v for k, v in record.items() if k != 'split'}
    writer.write(step, record['split'], figures)
    if record['split'].startswith('audit_r'):
      metrics.console(
        'audit at step %d | %d repetitions | exposure %.2f bits (extrapolated %.2f) of %.2f',
        step,
        int(record['split'][len('audit_r') :]),
        record['exposure'],
        record['exposure_extrapolated'],
        record['log2_space'],
      )
