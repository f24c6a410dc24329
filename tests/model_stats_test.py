"""The model's activation statistics (`Model.stats`, logged with every train
line): each layer's largest attention logit against the logits computed here
from the layer's input, and each block's output RMS against the block outputs
flax captures; the same with scanned layers and remat; and training with them
on writes them while computing exactly what it computes with them off."""

import json
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from research import models
from research import train
from research.models import transformer
from tests import models_test
from tests import qk_norm_test
from tests import test_util

B, T, V = 3, 11, models_test.V


def _logit_max_by_hand(block_params, x_BxTxD, num_heads, qk_norm):
  """max over rows, heads and pairs s <= t of q.k / sqrt(K) for the block's
  attention on its input (pre-norm: after ln_1), in float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), block_params)
  x = qk_norm_test._layernorm(np.asarray(x_BxTxD, np.float64), p['ln_1'])
  b_, t_, d_ = x.shape
  k_ = d_ // num_heads
  qkv = (x @ p['attn']['qkv']['kernel'] + p['attn']['qkv']['bias']).reshape(
    b_, t_, num_heads, 3, k_
  )
  q, k = qkv[..., 0, :], qkv[..., 1, :]
  if qk_norm == 'layernorm':
    q, k = (
      qk_norm_test._layernorm(q, p['attn']['q_norm']),
      qk_norm_test._layernorm(k, p['attn']['k_norm']),
    )
  logits = np.einsum('btnk,bsnk->bnts', q, k) / math.sqrt(k_)
  return np.max(np.where(np.tril(np.ones((t_, t_), bool)), logits, -np.inf))


class StatsFormulaTest(parameterized.TestCase):
  @parameterized.product(attention=('xla', 'dot_product'), qk_norm=('none', 'layernorm'))
  def test_against_the_logits_and_the_captured_block_outputs(self, attention, qk_norm):
    overrides = dict(num_layers=2, num_heads=2, attention=attention, qk_norm=qk_norm)
    config = models.get_config(models_test.transformer_config(**overrides))
    model = transformer.build(config, V, T)
    # Drawn afresh so that the logits are far from 0 and differ between layers.
    params = qk_norm_test._random_like(model.init(jax.random.key(0)), seed=3)
    tokens = models_test.random_tokens(5, (B, T))
    got = jax.jit(model.stats)(params, {}, tokens)

    module = transformer.Transformer(config, vocab_size=V, seq_len=T)
    _, captured = module.apply({'params': params}, tokens, train=False, capture_intermediates=True)
    captured = captured['intermediates']
    x = (
      np.asarray(params['embed']['embedding'])[np.asarray(tokens)]
      + np.asarray(params['pos_embed'])[:T]
    )
    maxima = []
    for i in range(2):
      want = _logit_max_by_hand(params[f'block_{i}'], x, 2, qk_norm)
      maxima.append(want)
      np.testing.assert_allclose(got[f'attn_logit_max/layer_{i}'], want, rtol=2e-5)
      x = np.asarray(captured[f'block_{i}']['__call__'][0][0], np.float64)  # (x, cache)
      np.testing.assert_allclose(got[f'block_rms/layer_{i}'], np.sqrt(np.mean(x**2)), rtol=2e-5)
    np.testing.assert_allclose(got['attn_logit_max'], max(maxima), rtol=2e-5)
    self.assertGreater(abs(maxima[0] - maxima[1]), 1e-3, 'layers cannot be told apart')
    self.assertEqual(len(got), 1 + 2 * 2)

  @parameterized.parameters((True, False), (True, True), (False, True))
  def test_scanned_and_rematerialised_layers_give_the_same(self, scan, remat):
    base = models_test.transformer_config(num_layers=3)
    unrolled = transformer.build(models.get_config(base), V, T)
    params = unrolled.init(jax.random.key(1))
    want = unrolled.stats(params, {}, models_test.random_tokens(2, (B, T)))
    other = transformer.build(
      models.get_config(
        models_test.transformer_config(num_layers=3, scan_layers=scan, remat=remat)
      ),
      V,
      T,
    )
    if scan:
      blocks = [params.pop(f'block_{i}') for i in range(3)]
      params['blocks'] = jax.tree.map(lambda *a: jnp.stack(a), *blocks)
    got = other.stats(params, {}, models_test.random_tokens(2, (B, T)))
    self.assertEqual(set(got), set(want))
    for name in want:
      np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)

  def test_the_lstm_has_none(self):
    self.assertIsNone(models_test.get_model('lstm').stats)


class TrainLinesTest(absltest.TestCase):
  def test_written_when_on_and_the_run_unchanged(self):
    with tempfile.TemporaryDirectory() as tmp:
      records = {}
      for on in (True, False):
        config = test_util.tiny_config(tmp, model='transformer')
        config.model_stats = on
        config.eval_at_start = on
        workdir = os.path.join(tmp, str(on))
        train.train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, 'metrics.jsonl')) as f:
          records[on] = [json.loads(line) for line in f]
      lines = [r for r in records[True] if r['split'] == 'train']
      layers = config.model.num_layers
      for r in lines:
        self.assertEqual(
          r['attn_logit_max'], max(r[f'attn_logit_max/layer_{i}'] for i in range(layers))
        )
        for i in range(layers):
          self.assertGreater(r[f'block_rms/layer_{i}'], 0)
      self.assertFalse(any('attn_logit_max' in r for r in records[False]))
      # eval_at_start: the valid loss at step 0, near ln V for near-zero initial logits.
      (initial,) = [r for r in records[True] if r['step'] == 0]
      self.assertEqual(initial['split'], 'valid')
      self.assertFalse(any(r['step'] == 0 for r in records[False]))
      # Neither option touches what is trained: the same losses, bit for bit.
      strip = lambda rs: [(r['step'], r['split'], r['loss']) for r in rs if r['step'] > 0]  # noqa: E731
      self.assertEqual(strip(records[True]), strip(records[False]))


if __name__ == '__main__':
  absltest.main()
