"""Evaluation figures: top-1 next-token accuracy beside the loss."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import common
from research import components
from research import data
from research import evaluate
from research import metrics
from research import models
from research import sharding
from tests import test_util


def _lookup_model(recurrent: bool = False) -> models.Model:
  """A model whose logits at a position are row `input` of params['table']
  (a bigram model), or params['logits'] itself when it has that key."""

  def apply(params, carry, inputs_BxT, *, train, rng):
    del train, rng
    if 'logits' in params:
      return params['logits'], carry
    return params['table'][inputs_BxT], carry

  return test_util.apply_only_model(apply, recurrent=recurrent)


class AccuracyTest(absltest.TestCase):
  def test_eval_step_counts_argmax_hits_of_scored_tokens_only(self):
    rng = np.random.default_rng(0)
    logits_BxTxV = rng.normal(size=(3, 5, 7)).astype(np.float32)
    argmax_BxT = logits_BxTxV.argmax(-1)
    # Half the targets are the argmax; the other half are not.
    targets_BxT = np.where(rng.random((3, 5)) < 0.5, argmax_BxT, (argmax_BxT + 1) % 7).astype(
      np.int32
    )
    # Padding sits on hits, so counting it would change the answer.
    weights_BxT = np.ones((3, 5), np.float32)
    weights_BxT[2, 2:] = 0.0
    targets_BxT[2, 2:] = argmax_BxT[2, 2:]
    batch = {
      'inputs': np.zeros((3, 5), np.int32),
      'targets': targets_BxT,
      'weights': weights_BxT,
      'reset': np.zeros(3, bool),
    }
    _, weight_sum, hits, _ = evaluate.eval_step(
      {'logits': jnp.asarray(logits_BxTxV)}, {}, batch, model=_lookup_model()
    )
    want = np.sum((argmax_BxT == targets_BxT) * weights_BxT)
    self.assertEqual(float(hits), want)
    self.assertEqual(float(weight_sum), 12.0)
    self.assertNotEqual(want, np.sum(argmax_BxT == targets_BxT))

  def test_evaluator_accuracy_is_that_of_every_prediction_of_the_split(self):
    config = test_util.tiny_config(self.create_tempdir().full_path)
    parts = components.build(config)
    parts = parts._replace(model=_lookup_model())
    train_ids, valid_ids = parts.corpus.splits['train'], parts.corpus.splits['valid']
    v = parts.corpus.tokenizer.vocab_size
    # Bigram log-counts of the training split (plus noise against ties).
    counts_VxV = np.zeros((v, v))
    np.add.at(counts_VxV, (train_ids[:-1], train_ids[1:]), 1.0)
    table_VxV = (np.log1p(counts_VxV) + 1e-3 * np.random.default_rng(0).random((v, v))).astype(
      np.float32
    )
    # Independently of the Evaluator's batching and padding: each of the
    # N-1 next-token predictions of the split scored once.
    logits_NxV = table_VxV[valid_ids[:-1]].astype(np.float64)
    want_accuracy = np.mean(logits_NxV.argmax(-1) == valid_ids[1:])
    want_loss = np.mean(
      np.log(np.exp(logits_NxV).sum(-1)) - logits_NxV[np.arange(len(valid_ids) - 1), valid_ids[1:]]
    )
    self.assertTrue(0.2 < want_accuracy < 0.9, want_accuracy)

    # 3 rows of 11: the split does not fill the last batch, so it is padded.
    evaluator = evaluate.Evaluator(parts, batch_size=3, seq_len=11)
    self.assertNotEqual((len(valid_ids) - 1) % 33, 0)
    loss, accuracy = evaluator.score({'table': jnp.asarray(table_VxV)}, valid_ids)
    self.assertAlmostEqual(accuracy, want_accuracy, places=12)
    self.assertAlmostEqual(loss, want_loss, places=5)
    figures = evaluator.splits({'table': jnp.asarray(table_VxV)}, ('valid',))
    self.assertEqual(figures['valid']['accuracy'], accuracy)

  def test_transformer_scores_each_prediction_once_with_a_padded_last_row(self):
    v, t, b, n = 13, 7, 3, 60  # N - 1 = 59 predictions in 3 rows of 20.
    config = common.transformer_model()
    config.num_layers, config.num_heads, config.d_model, config.d_ff = 2, 2, 10, 17
    config.dropout_rate = 0.0
    model = models.get_model(config, vocab_size=v, seq_len=t)
    params = model.init(jax.random.key(0))
    parts = components.Components(
      corpus=None,
      model=model,
      optimizer=None,
      schedule=None,
      mesh=sharding.make_mesh(common.base_config().mesh, jax.devices()[:1]),
      data_kind='windows',
      steps_per_epoch=1,
      num_train_steps=1,
      eval_every=1,
      checkpoint_every=1,
    )
    tokens = np.random.default_rng(0).integers(0, v, n).astype(np.int32)
    evaluator = evaluate.Evaluator(parts, batch_size=b, seq_len=t)
    loss, _ = evaluator.score(params, tokens)

    # Reference: row r holds predictions [20r, min(20r + 20, 59)), read in
    # windows of 7 from the row's start (the last window of a row is 6 long,
    # of the last row 5); each window is scored alone, at its true length,
    # so no padding reaches the model.
    row_len, total, count = 20, 0.0, 0
    for start in range(0, n - 1, row_len):
      end = min(start + row_len, n - 1)
      for w in range(start, end, t):
        inputs = tokens[w : min(w + t, end)]
        logits, _ = model.apply(params, {}, inputs[None], train=False, rng=None)
        logits = np.asarray(logits[0], np.float64)
        peak = logits.max(-1)
        lse = peak + np.log(np.exp(logits - peak[:, None]).sum(-1))
        targets = tokens[w + 1 : w + 1 + len(inputs)]
        total += np.sum(lse - logits[np.arange(len(inputs)), targets])
        count += len(inputs)
    self.assertEqual(count, n - 1)
    self.assertAlmostEqual(loss, total / count, places=5)

  def test_figures_and_console_line_carry_the_accuracy(self):
    words = data.SplitSize(tokens=5, characters=23, bytes=23)
    figures = metrics.split_figures(2.3456, words, accuracy=0.41234)
    self.assertEqual(set(figures), {'loss', 'perplexity', 'bpc', 'bpb', 'accuracy'})
    self.assertEqual(metrics.headline(figures, 'perplexity'), 'ppl 10.44 | acc 41.2%')
    chars = data.SplitSize(tokens=5, characters=5, bytes=5)
    self.assertEqual(
      metrics.headline(metrics.split_figures(1.0, chars), 'bpc'), 'bpc 1.4427'
    )  # Train lines have no accuracy.


if __name__ == '__main__':
  absltest.main()
