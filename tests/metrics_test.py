"""Losses and the figures derived from them, against numpy references."""

import math

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from research import data
from research import metrics

# Distinct sizes: B rows, T steps, V vocabulary.
_B, _T, _V = 3, 5, 7


def _reference_sums(logits_BxTxV, targets_BxT, weights_BxT):
  """(Weighted sum of -log softmax at the targets, sum of weights), float64."""
  logits = np.asarray(logits_BxTxV, np.float64)
  peak = logits.max(-1, keepdims=True)
  log_probs = logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))
  nll_BxT = -np.take_along_axis(log_probs, targets_BxT[..., None], -1)[..., 0]
  return float(np.sum(nll_BxT * weights_BxT)), float(np.sum(weights_BxT))


class CrossEntropyTest(absltest.TestCase):
  def _case(self):
    rng = np.random.default_rng(0)
    logits_BxTxV = (4.0 * rng.normal(size=(_B, _T, _V))).astype(np.float32)
    targets_BxT = rng.integers(0, _V, (_B, _T)).astype(np.int32)
    weights_BxT = np.ones((_B, _T), np.float32)
    # Padding as pipeline.eval_batches makes it: the end of the last row,
    # whose inputs and targets are zeros; plus one half-weighted token.
    weights_BxT[2, 2:] = 0.0
    targets_BxT[2, 2:] = 0
    weights_BxT[0, 1] = 0.5
    # The padded positions have very confident wrong logits: counted, they
    # would add tens of nats.
    logits_BxTxV[2, 2:, 0] = -30.0
    return logits_BxTxV, targets_BxT, weights_BxT

  def test_sums_equal_a_log_softmax_reference_and_skip_padding(self):
    logits, targets, weights = self._case()
    loss_sum, weight_sum = metrics.cross_entropy_sums(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
    )
    want_loss, want_weight = _reference_sums(logits, targets, weights)
    self.assertEqual(float(weight_sum), 11.5)
    self.assertEqual(float(weight_sum), want_weight)
    np.testing.assert_allclose(float(loss_sum), want_loss, rtol=1e-6)
    unpadded, _ = _reference_sums(logits, targets, np.ones_like(weights))
    self.assertGreater(unpadded - want_loss, 30.0)  # Padding would show.

  def test_low_precision_logits_are_summed_in_float32(self):
    logits, targets, weights = self._case()
    low = jnp.asarray(logits, jnp.bfloat16)
    loss_sum, _ = metrics.cross_entropy_sums(low, jnp.asarray(targets), jnp.asarray(weights))
    self.assertEqual(loss_sum.dtype, jnp.float32)
    want, _ = _reference_sums(np.asarray(low, np.float32), targets, weights)
    np.testing.assert_allclose(float(loss_sum), want, rtol=1e-6)


class Top1HitsTest(absltest.TestCase):
  def test_hits_are_numpy_argmax_hits_with_ties_nans_and_infinities(self):
    rng = np.random.default_rng(0)
    B, T, V = 4, 50, 9  # pylint: disable=invalid-name
    # Small integers: most rows tie for their largest logit.
    logits = rng.integers(0, 3, (B, T, V)).astype(np.float32)
    logits[0, 0] = np.nan  # All NaN.
    logits[0, 1, [2, 5]] = np.nan  # NaN counts as the largest: the first NaN.
    logits[0, 2, 3] = np.inf
    logits[0, 3] = -np.inf  # All -inf: id 0.
    logits[0, 4, [1, 6]] = np.inf
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    # Those rows' argmax ids are 0, 2, 3, 0, 1: four hits, and a miss where
    # the target ties for the largest after a lower id.
    targets[0, :5] = [0, 2, 3, 0, 6]
    targets[1] = np.argmax(logits[1], -1)  # A row of hits, ties included.
    weights = rng.integers(0, 2, (B, T)).astype(np.float32)
    weights[0, :5] = 1.0
    want = float(np.sum(weights * (np.argmax(logits, -1) == targets)))
    got = metrics.top1_hits(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    self.assertEqual(float(got), want)
    # The tie rule matters here: "target among the largest" would count more.
    loose = float(
      np.sum(
        weights * (np.take_along_axis(logits, targets[..., None], -1)[..., 0] >= logits.max(-1))
      )
    )
    self.assertGreater(loose, want)


class SplitFiguresTest(absltest.TestCase):
  def test_word_level_perplexity_is_e_to_the_loss_in_nats(self):
    # PTB's valid split: 73,760 words (with <eos>) in 399,782 ASCII characters.
    ptb_valid = data.SplitSize(tokens=73_760, characters=399_782, bytes=399_782)
    for loss in (0.5, 4.6, 5.3):
      figures = metrics.split_figures(loss, ptb_valid)
      self.assertEqual(set(figures), {'loss', 'perplexity', 'bpc', 'bpb'})
      self.assertAlmostEqual(figures['perplexity'], math.exp(loss), places=9)
    # PTB-scale: a loss of 4.6 nats per word is a perplexity of about 99.5.
    self.assertAlmostEqual(metrics.split_figures(4.6, ptb_valid)['perplexity'], 99.484, places=3)

  def test_char_level_bits_per_character_are_the_loss_in_bits(self):
    figures = metrics.split_figures(0.9, data.SplitSize(11, 11, 11))
    # Exactly today's formula, so printed char-level figures do not move.
    self.assertEqual(figures['bpc'], 0.9 / math.log(2))
    self.assertEqual(figures['bpb'], 0.9 / math.log(2))

  def test_bits_per_character_are_total_nats_over_characters(self):
    # 13 tokens encode 29 characters in 31 UTF-8 bytes (two are 2-byte).
    figures = metrics.split_figures(2.0, data.SplitSize(13, 29, 31))
    self.assertAlmostEqual(figures['bpc'], 2.0 * 13 / (29 * math.log(2)), places=12)
    self.assertAlmostEqual(figures['bpb'], 2.0 * 13 / (31 * math.log(2)), places=12)
    self.assertEqual(figures['perplexity'], math.exp(2.0))


if __name__ == '__main__':
  absltest.main()
