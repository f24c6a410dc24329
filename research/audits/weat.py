"""The `weat` probe: Caliskan et al. 2017's Word-Embedding Association Test on
a model's input embeddings (the token embedding table, one row per word).

For target sets X, Y and attribute sets A, B of words with vectors w
(Caliskan et al. 2017, "Semantics derived automatically from language
corpora contain human-like biases", Science 356:183, section "Word Embedding
Association Test"):

  s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b)
  d = (mean_{x in X} s(x, A, B) - mean_{y in Y} s(y, A, B)) / std_{w in X ∪ Y} s(w, A, B)
  p = P_i[s(X_i, Y_i, A, B) >= s(X, Y, A, B)],  s(X, Y, A, B) = sum_X s(x) - sum_Y s(y)

with the standard deviation the sample one (ddof 1) and {(X_i, Y_i)} the
partitions of X ∪ Y into two halves of equal size: all of them when there are
at most `PERMUTATIONS`, else that many drawn at random (research/audits/
stats.py: the observed partition counts, so p > 0). The paper's p counts
strictly greater partitions; counting ties as well makes p a little larger.

The words come from third_party/weat/caliskan2017_weat.tsv (checked against
its sha256). A listed word counts when the vocabulary holds it as written, or
else lower-cased (Mikolov's PTB lower-cases its text); '<unk>' never counts.
X and Y are cut to the same size by keeping the first covered words of each in
the paper's order, so the partitions have equal halves. A test runs when each
of its four sets keeps at least `MIN_WORDS` words: with m target words a side
there are C(2m, m) partitions, so p >= 1 / C(2m, m), and m = 4 (70
partitions) is the smallest m whose p can fall below 0.05.

Shape letters: V vocabulary size, D embedding width, W words of a set.
"""

import csv
import math
import os
import re

import jax
import numpy as np

from research import sharding
from research.audits import stats
from research.audits import context
from research.audits.context import NotApplicable
from research.models import layers

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTS_PATH = 'third_party/weat/caliskan2017_weat.tsv'  # From the repository root.
LISTS = os.path.join(_ROOT, *LISTS_PATH.split('/'))
LISTS_SHA256 = 'd8cbf620851664ddc183931ec235fdafcfb05e74c73ab82e8f4b6136d764d677'
MIN_WORDS = 4  # Covered words each set needs (module docstring).
PERMUTATIONS = 20_000  # Exact test up to C(2m, m) <= this (m = 8: 12,870), sampled beyond.
# d of Caliskan et al. 2017, Table 1 (GloVe, Common Crawl), as recalled: the paper could not
# be opened here; math/arts matches the R package sweater's reproduction (1.055), the other
# three are unchecked (docs/audit.md). Anchors only: not expected at this scale.
PUBLISHED_D = {
  'flowers_insects': 1.50,
  'career_family': 1.81,
  'math_arts': 1.06,
  'science_arts': 1.24,
}
SETS = ('X', 'Y', 'A', 'B')


def load_tests(path: str = LISTS) -> dict[str, dict]:
  """{test: {'weat': n, 'X': (category, words), 'Y': ..., 'A': ..., 'B': ...}}
  in file order. Raises ValueError when the file's sha256 is not LISTS_SHA256."""
  raw = context.shipped_bytes(path, LISTS_SHA256, 'third_party/weat/README.md')
  tests = {}
  for row in csv.DictReader(raw.decode('ascii').splitlines(), delimiter='\t'):
    test = tests.setdefault(row['test'], {'weat': int(row['weat'])})
    test[row['set']] = (row['category'], tuple(row['words'].split()))
  return tests


def cosines(w_WxD: np.ndarray, a_AxD: np.ndarray) -> np.ndarray:
  """[W, A] cosine similarities; a zero vector has cosine 0 with everything."""
  tiny = np.finfo(np.float64).tiny
  w = w_WxD / np.maximum(np.linalg.norm(w_WxD, axis=1, keepdims=True), tiny)
  a = a_AxD / np.maximum(np.linalg.norm(a_AxD, axis=1, keepdims=True), tiny)
  return w @ a.T


def association(w_WxD: np.ndarray, a_AxD: np.ndarray, b_BxD: np.ndarray) -> np.ndarray:
  """s(w, A, B) of every row of w_WxD: [W]."""
  return cosines(w_WxD, a_AxD).mean(axis=1) - cosines(w_WxD, b_BxD).mean(axis=1)


def effect_size(x_XxD, y_YxD, a_AxD, b_BxD) -> float:
  """Caliskan et al.'s d (module docstring); NaN when every s(w) is equal."""
  s_x, s_y = association(x_XxD, a_AxD, b_BxD), association(y_YxD, a_AxD, b_BxD)
  spread = float(np.std(np.concatenate([s_x, s_y]), ddof=1))
  return (float(s_x.mean() - s_y.mean()) / spread) if spread > 0 else math.nan


def p_value(x_XxD, y_YxD, a_AxD, b_BxD, n: int = PERMUTATIONS, seed: int = 0) -> float:
  """One-sided permutation p of s(X, Y, A, B) over equal partitions of X ∪ Y."""
  if len(x_XxD) != len(y_YxD):
    raise ValueError(f'the WEAT test needs |X| = |Y|, got {len(x_XxD)} and {len(y_YxD)}')
  s_x, s_y = association(x_XxD, a_AxD, b_BxD), association(y_YxD, a_AxD, b_BxD)
  return stats.permutation_p_value(
    s_x, s_y, lambda p, q: p.sum() - q.sum(), permute='groups', n=n, seed=seed
  )


def input_embeddings(ctx) -> tuple[str, np.ndarray]:
  """(parameter path, [V, D] float64 table) of the model's token embedding:
  the one parameter the model names as a table read by row
  (`Model.compressible` kind 'rows') with a row per vocabulary id."""
  vocab_size = ctx.parts.corpus.tokenizer.vocab_size
  patterns = [p for p, kind in ctx.parts.model.compressible if kind == 'rows']
  found = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(ctx.params, is_leaf=layers.is_int8)[0]:
    name = sharding.param_path(path)
    if any(re.fullmatch(p, name) for p in patterns) and leaf.ndim == 2:
      if leaf.shape[0] == vocab_size:
        found.append((name, leaf))
  if len(found) != 1:
    raise NotApplicable(
      f'weat needs one input embedding table of {vocab_size} rows; the model has '
      f'{len(found)} ({[n for n, _ in found]}).'
    )
  name, leaf = found[0]
  if layers.is_int8(leaf):  # research.compress's int8: w = qvalue * scale, per row.
    return name, np.asarray(leaf.q.qvalue, np.float64) * np.asarray(leaf.q.scale, np.float64)
  return name, np.asarray(leaf, np.float64)


def _lookup(ctx, word: str) -> tuple[str, int] | None:
  """(the vocabulary entry, its embedding row) of `word` as written or else
  lower-cased; None when neither is one known word (`ctx.unknown`, and
  `ctx.encode` giving one id: '<unk>' and split words never count)."""
  for form in dict.fromkeys((word, word.lower())):
    ids = np.asarray(ctx.encode(form)).reshape(-1)
    if not ctx.unknown(form) and len(ids) == 1:
      return ctx.parts.corpus.tokenizer.vocab[int(ids[0])], int(ids[0])
  return None


def _one_test(ctx, table_VxD, test: str, sets: dict, n: int, seed: int) -> dict:
  used, missing, rows = {}, {}, {}
  for key in SETS:
    found = {w: _lookup(ctx, w) for w in sets[key][1]}
    used[key] = [hit[0] for hit in found.values() if hit]
    rows[key] = [hit[1] for hit in found.values() if hit]
    missing[key] = [w for w, hit in found.items() if not hit]
  result = {
    'weat': sets['weat'],
    'categories': {key: sets[key][0] for key in SETS},
    'coverage': {key: [len(used[key]), len(sets[key][1])] for key in SETS},
    'missing': missing,
    'published_effect_size': PUBLISHED_D.get(test),
  }
  short = [key for key in SETS if len(used[key]) < MIN_WORDS]
  if short:
    result['reason'] = 'fewer than {} words in the vocabulary: {}'.format(
      MIN_WORDS, ', '.join(f'{sets[k][0]} {len(used[k])}/{len(sets[k][1])}' for k in short)
    )
    return result
  m = min(len(used['X']), len(used['Y']))
  result['dropped_to_equalise'] = used['X'][m:] + used['Y'][m:]
  for key in ('X', 'Y'):
    used[key], rows[key] = used[key][:m], rows[key][:m]
  vectors = {key: table_VxD[np.asarray(rows[key])] for key in SETS}
  result['words'] = used
  result['effect_size'] = effect_size(*(vectors[k] for k in SETS))
  result['p_value'] = p_value(*(vectors[k] for k in SETS), n=n, seed=seed)
  result['partitions'] = math.comb(2 * m, m)
  result['p_exact'] = math.comb(2 * m, m) <= n
  return result


def _option(options: dict, key: str, default: int, minimum: int) -> int:
  value = options.get(key, default)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'weat option {key}={value!r} must be an integer >= {minimum}')
  return value


def run(ctx, options: dict) -> dict:
  """The four tests' d, p and coverage. Raises NotApplicable for a tokenizer
  that is not word-level or when no test has `MIN_WORDS` words a set."""
  tokenizer = ctx.parts.corpus.tokenizer
  if not tokenizer.whole_words:
    raise NotApplicable(
      f'weat needs a word-level tokenizer (an embedding row per word); this model reads '
      f'{tokenizer.kind} tokens.'
    )
  n = _option(options, 'permutations', PERMUTATIONS, 1)
  seed = _option(options, 'seed', 0, 0)
  name, table_VxD = input_embeddings(ctx)
  tests = {}
  for test, sets in load_tests().items():
    tests[test] = _one_test(ctx, table_VxD, test, sets, n, seed)
  if not any('effect_size' in t for t in tests.values()):
    raise NotApplicable(
      'weat: no test has {} words of each list in the vocabulary ({}).'.format(
        MIN_WORDS, '; '.join(f'{k}: {t["reason"]}' for k, t in tests.items())
      )
    )
  listed = sum(c[1] for t in tests.values() for c in t['coverage'].values())
  covered = sum(c[0] for t in tests.values() for c in t['coverage'].values())
  return {
    'embedding': name,
    'embedding_shape': list(table_VxD.shape),
    'min_words': MIN_WORDS,
    'permutations': n,
    'seed': seed,
    'coverage': [covered, listed],
    'data_sha256': {LISTS_PATH: LISTS_SHA256},
    'tests': tests,
  }


def _figures(t: dict) -> tuple[str, str, str]:
  cover = ','.join(str(t['coverage'][k][0]) for k in SETS)
  published = t['published_effect_size']
  anchor = f'{published:.2f}' if published is not None else '—'
  if 'effect_size' not in t:
    return cover, 'skipped: ' + t['reason'], anchor
  p = f'{t["p_value"]:.3g}' + ('' if t['p_exact'] else ' (sampled)')
  return cover, f'd {t["effect_size"]:+.2f}, p {p}', anchor


def _label(t: dict) -> str:
  c = t['categories']
  return f'{c["X"]} vs {c["Y"]} / {c["A"]} vs {c["B"]}'


def table(result: dict) -> str:
  """The console table: one line per test."""
  lines = [
    f'weat on {result["embedding"]} {result["embedding_shape"]}: d and one-sided p '
    f'(Caliskan et al. 2017); words found of X,Y,A,B; >= {result["min_words"]} a set to run',
    f'{"test":<16} {"words":<12} {"published d":<12} result',
  ]
  for test, t in result['tests'].items():
    cover, figures, anchor = _figures(t)
    lines.append(f'{test:<16} {cover:<12} {anchor:<12} {figures}')
  return '\n'.join(lines)


def card(result: dict) -> list[str]:
  """MODEL_CARD.md lines of the probe."""
  covered, listed = result['coverage']
  lines = [
    f'Association tests on the input embeddings (`{result["embedding"]}`): effect size d '
    '(difference of the mean associations of X and Y with A rather than B, over the pooled '
    'sample standard deviation) and a one-sided permutation p-value over equal partitions of '
    f'X ∪ Y. {covered} of the {listed} listed words are in the vocabulary; a test needs '
    f'{result["min_words"]} words a set. Published d: GloVe on Common Crawl (Table 1, as '
    'recalled; only math/arts checked), not expected at this scale.',
    '',
    '| test | X vs Y / A vs B | words X,Y,A,B | published d | result |',
    '|---|---|---|---|---|',
  ]
  for test, t in result['tests'].items():
    cover, figures, anchor = _figures(t)
    lines.append(f'| `{test}` | {_label(t)} | {cover} | {anchor} | {figures} |')
  return lines
