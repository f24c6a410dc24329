"""Evaluation at contexts other than the training one (config.eval)."""

import contextlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from research import components
from research import config_checks
from research import evaluate
from research import train
from tests import test_util


def _tiny(tmp, positional):
  config = test_util.tiny_config(tmp, model='transformer')
  with config.unlocked():
    config.model.positional = positional
    config.model.dropout_rate = 0.0
    config.num_train_steps = 6
    config.sample.num_tokens = 0
  return config


class EvalContextTest(absltest.TestCase):
  def test_a_longer_window_scores_each_token_with_the_whole_window_before_it(self):
    tmp = self.create_tempdir().full_path
    config = _tiny(tmp, 'alibi')
    t = 4 * config.data.seq_len
    with config.unlocked():
      config.eval.seq_len = t
    parts = components.build(config)
    self.assertEqual(parts.model.context, config.data.seq_len)
    long_model = parts.eval_models[t]
    params = jax.jit(parts.model.init)(jax.random.key(0))
    tokens = parts.corpus.splits['valid'][: t + 1]
    loss, _ = evaluate.Evaluator(parts, batch_size=1, seq_len=t).score(params, tokens)
    # Independently: the model of context t applied to the one window.
    logits_1xTxV, _ = long_model.apply(
      params, {}, jnp.asarray(tokens[None, :-1]), train=False, rng=None
    )
    log_probs = jax.nn.log_softmax(np.asarray(logits_1xTxV[0], np.float64))
    want = -np.mean(log_probs[np.arange(t), tokens[1:]])
    self.assertAlmostEqual(loss, float(want), places=5)

  def test_final_figures_at_extra_contexts_and_in_eval_mode(self):
    tmp = self.create_tempdir().full_path
    config = _tiny(tmp, 'rope')
    n = 3 * config.data.seq_len
    with config.unlocked():
      config.eval.extra_seq_lens = (n,)
    workdir = os.path.join(tmp, 'work')
    with contextlib.redirect_stdout(io.StringIO()) as console:
      results = train.train_and_evaluate(config, workdir)
    self.assertEqual(set(results), {'valid', 'test', f'valid@{n}', f'test@{n}'})
    self.assertNotEqual(results[f'valid@{n}']['loss'], results['valid']['loss'])
    self.assertIn(f'| valid@{n} | loss', console.getvalue())
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(line) for line in f]
    self.assertIn((6, f'test@{n}'), [(r['step'], r['split']) for r in records])
    # --mode=eval at that context gives the same figures.
    with config.unlocked():
      config.eval.seq_len, config.eval.extra_seq_lens = n, ()
    with contextlib.redirect_stdout(io.StringIO()):
      again = evaluate.evaluate_checkpoint(config, workdir)
    self.assertAlmostEqual(again['valid']['loss'], results[f'valid@{n}']['loss'], places=6)

  def test_learned_positions_refuse_a_longer_context_naming_the_trained_length(self):
    config = _tiny(self.create_tempdir().full_path, 'learned')
    for key, value in (('seq_len', 12), ('extra_seq_lens', (11, 22))):
      with self.subTest(key=key), config.unlocked():
        config.eval.seq_len, config.eval.extra_seq_lens = 0, ()
        config.eval[key] = value
        with self.assertRaisesRegex(
          ValueError,
          rf'config.eval.{key} asks for context (12|22), longer than the context '
          r"model.positional='learned' was trained on \(data.seq_len=11\)",
        ):
          config_checks.check(config)
    with config.unlocked():
      config.eval.extra_seq_lens = (11, 5)  # Not longer: allowed.
    config_checks.check(config)


if __name__ == '__main__':
  absltest.main()
