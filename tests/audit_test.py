"""The memorisation audit: canaries, insertion, log-perplexity and exposure
(Carlini et al. 2019) on models whose answer is known."""

import contextlib
import io
import json
import math
import os

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from research import components
from research import evaluate
from research import models
from research import train
from research.privacy import audit
from research.privacy import canaries
from tests import test_util

V = 40


def _bigram_model() -> models.Model:
  """Logits at a position are row `input` of params['table'] (a bigram model)."""

  def apply(params, carry, inputs_BxT, *, train, rng):
    del train, rng
    return params['table'][inputs_BxT], carry

  return test_util.apply_only_model(apply)


def _setup(seed=0):
  symbols = audit.alphabet(V, excluded={0, 1}, size=6, seed=seed)
  canaries = audit.make_canaries(
    np.array([2, 3]), symbols, secret_length=3, repetitions=(1, 4), per_count=2, seed=seed
  )
  return symbols, canaries


class CanaryTest(absltest.TestCase):
  def test_canaries_have_the_format_and_distinct_secrets(self):
    symbols, canaries = _setup()
    self.assertEqual(len(symbols), 6)
    self.assertNotIn(0, symbols)
    self.assertEqual([c.repetitions for c in canaries], [1, 1, 4, 4, 0, 0])
    self.assertLen({c.secret_ids for c in canaries}, 6)
    for c in canaries:
      self.assertEqual(c.prefix_ids, (2, 3))
      self.assertTrue(set(c.secret_ids) <= set(symbols.tolist()))
    with self.assertRaisesRegex(ValueError, 'alphabet_size=50 exceeds the 38 tokens'):
      audit.alphabet(V, {0, 1}, 50, 0)

  def test_insertion_puts_every_copy_at_a_line_start(self):
    _, canaries = _setup()
    tokens = np.tile(np.array([5, 6, 7, 1], np.int32), 50)  # 1 ends a line.
    boundaries = np.flatnonzero(tokens == 1) + 1
    out = audit.insert(tokens, canaries, boundaries, seed=0)
    self.assertLen(out, len(tokens) + 10 * 5)  # 1+1+4+4 copies of 5 tokens.
    text = ' '.join(map(str, out.tolist()))
    for c in canaries:
      needle = ' '.join(map(str, c.ids.tolist()))
      self.assertEqual(text.count(needle), c.repetitions)
    # Removing the copies gives the original stream back.
    self.assertEqual(len(out) - len(tokens), sum(len(c.ids) * c.repetitions for c in canaries))


class ExposureTest(absltest.TestCase):
  def test_log_perplexity_of_a_bigram_model(self):
    table = np.log(np.random.default_rng(1).dirichlet(np.ones(V), V)).astype(np.float32)
    secrets = np.array([[4, 5, 6], [7, 8, 9]], np.int32)
    got = audit.log_perplexities(_bigram_model(), {'table': jnp.asarray(table)}, [2, 3], secrets)
    want = [-(table[3, 4] + table[4, 5] + table[5, 6]) / math.log(2), None]
    want[1] = -(table[3, 7] + table[7, 8] + table[8, 9]) / math.log(2)
    np.testing.assert_allclose(got, want, rtol=1e-5)

  def test_a_memorised_canary_has_exposure_log2_r(self):
    symbols, canaries = _setup()
    canary = canaries[2]
    table = np.zeros((V, V), np.float32)
    path = (3,) + canary.secret_ids
    for a, b in zip(path, path[1:]):
      table[a, b] = 20.0  # The model predicts the canary's next token.
    params = {'table': jnp.asarray(table)}
    reference = audit.candidates(symbols, 3, size=10_000, seed=0)
    self.assertEqual(reference.shape, (216, 3))  # All of R: 6^3.
    scores = audit.log_perplexities(_bigram_model(), params, [2, 3], reference)
    mine = audit.log_perplexities(_bigram_model(), params, [2, 3], np.array([canary.secret_ids]))
    exposure = audit.exposure_exact(mine[0], scores, 216)
    self.assertAlmostEqual(exposure, math.log2(216))
    self.assertGreater(audit.exposure_extrapolated(mine[0], scores), math.log2(216) - 1)

  def test_an_untrained_model_gives_chance_exposure(self):
    # Random logits: a canary's rank is uniform, so its exposure averages
    # about 1 / ln 2 = 1.44 bits.
    rng = np.random.default_rng(2)
    symbols = audit.alphabet(V, {0, 1}, size=8, seed=1)
    params = {'table': jnp.asarray(rng.normal(size=(V, V)).astype(np.float32))}
    reference = audit.candidates(symbols, 3, size=10_000, seed=0)  # All 512.
    scores = audit.log_perplexities(_bigram_model(), params, [2, 3], reference)
    picks = rng.integers(0, len(reference), 300)
    exposures = [audit.exposure_exact(scores[i], scores, len(reference)) for i in picks]
    self.assertBetween(float(np.mean(exposures)), 1.2, 1.75)

  def test_extrapolation_agrees_with_exact_ranking(self):
    rng = np.random.default_rng(3)
    symbols = audit.alphabet(V, {0, 1}, size=10, seed=2)
    params = {'table': jnp.asarray(rng.normal(size=(V, V)).astype(np.float32))}
    reference = audit.candidates(symbols, 3, size=10_000, seed=0)  # All 1,000.
    scores = audit.log_perplexities(_bigram_model(), params, [2, 3], reference)
    for quantile in (0.01, 0.05, 0.2, 0.5):
      value = float(np.quantile(scores, quantile))
      exact = audit.exposure_exact(value, scores, len(reference))
      self.assertAlmostEqual(audit.exposure_extrapolated(value, scores), exact, delta=0.6)

  def test_a_sample_of_candidates_estimates_the_rank(self):
    symbols = audit.alphabet(V, {0, 1}, size=30, seed=0)
    sample = audit.candidates(symbols, 4, size=500, seed=0)  # |R| = 810,000.
    self.assertEqual(sample.shape, (500, 4))
    reference = np.arange(500, dtype=np.float64)
    # 10 candidates (0..9) are more likely: rank 11 of the sample of 500.
    self.assertAlmostEqual(audit.exposure_exact(9.5, reference, 810_000), math.log2(500 / 11))


if __name__ == '__main__':
  absltest.main()


class RunAuditTest(absltest.TestCase):
  def test_training_inserts_and_audits_canaries_and_mode_audit_agrees(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp, model='lstm', level='word')
    with config.unlocked():
      config.audit.enabled = True
      config.audit.prefix = 'the cat'
      config.audit.secret_length = 3
      config.audit.alphabet_size = 5
      config.audit.repetitions = (1, 16)
      config.audit.reference_size = 1000  # All of R = 5^3.
      config.num_train_steps = 20
      config.sample.num_tokens = 0
    plain = test_util.tiny_config(tmp, model='lstm', level='word')
    parts, bare = components.build(config), components.build(plain)
    canaries_list, _ = canaries.build(config, parts.corpus.tokenizer)
    added = sum((len(c.ids) + 1) * c.repetitions for c in canaries_list)  # Each ends a line.
    self.assertLen(parts.corpus.splits['train'], len(bare.corpus.splits['train']) + added)
    workdir = os.path.join(tmp, 'work')
    with contextlib.redirect_stdout(io.StringIO()) as console:
      train.train_and_evaluate(config, workdir)
    self.assertRegex(console.getvalue(), r'audit at step 20 \| 16 repetitions \| exposure')
    records = _records(workdir)
    per_canary = [r for r in records if r['split'] == 'audit']
    self.assertEqual([r['repetitions'] for r in per_canary], [1, 16, 0])
    self.assertEqual(
      {r['split'] for r in records if 'audit_r' in r['split']},
      {'audit_r0', 'audit_r1', 'audit_r16'},
    )
    for r in per_canary:
      self.assertBetween(r['exposure'], 0.0, math.log2(125))
    # --mode=audit rebuilds the same canaries and replaces the records.
    with contextlib.redirect_stdout(io.StringIO()):
      again = evaluate.audit_checkpoint(config, workdir)
    self.assertEqual(
      [r['exposure'] for r in again if r['split'] == 'audit'], [r['exposure'] for r in per_canary]
    )
    self.assertLen([r for r in _records(workdir) if r['split'] == 'audit'], 3)


class RefusalTest(absltest.TestCase):
  def test_a_canary_format_the_vocabulary_cannot_build_names_the_key(self):
    tmp = self.create_tempdir().full_path
    cases = (
      (dict(prefix='the zebra'), "config.audit.prefix='the zebra' must be non-empty text"),
      (dict(alphabet_size=500), 'config.audit.alphabet_size=500 exceeds the'),
      (
        dict(alphabet_size=2, secret_length=2, canaries_per_count=2),
        r'needs 10 distinct secrets but \|R\| = 4; raise config.audit.alphabet_size',
      ),
    )
    for audit_keys, message in cases:
      config = test_util.tiny_config(tmp, model='lstm', level='word')
      with config.unlocked():
        config.audit.enabled = True
        config.audit.prefix = 'the cat'
        config.audit.update(audit_keys)
      with self.subTest(audit_keys), self.assertRaisesRegex(ValueError, message):
        components.build(config)  # Before anything is trained.
    config = test_util.tiny_config(tmp, model='lstm', level='char')
    with config.unlocked():
      config.audit.enabled = True
      config.audit.prefix = 'the code is \u00e9'  # No accented letter in the corpus.
    with self.assertRaisesRegex(ValueError, 'config.audit.prefix=.* cannot be encoded'):
      components.build(config)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]
