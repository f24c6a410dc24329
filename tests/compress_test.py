"""Compression (research/compress.py): int8 and w8a8 matmuls against float,
quantised models of both families within a stated bound of the float one,
global magnitude pruning, a compressed workdir that a new process evaluates,
and pruned fine-tuning that keeps its zeros exactly."""

import contextlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from research import compress
from research import compression
from research import evaluate
from research import models
from research import train
from research import workdir as workdir_lib
from research.models import layers
from tests import test_util


def _run(config, workdir):
  with contextlib.redirect_stdout(io.StringIO()):
    return train.train_and_evaluate(config, workdir)


def _compress(workdir, method, **kwargs):
  with contextlib.redirect_stdout(io.StringIO()) as out:
    outcome = compress.run(workdir, method, **kwargs)
  return outcome, out.getvalue()


class MatmulTest(absltest.TestCase):
  def test_int8_matmul_against_float(self):
    # Per-channel absmax int8 rounds each weight by at most scale / 2, scale =
    # max|w_col| / 127; so |x (w - w_q)| <= sum|x| * max|w_col| / 254 for
    # every output column. w8a8 adds the input's rounding, per row likewise.
    x = jax.random.normal(jax.random.key(0), (6, 32))
    w = jax.random.normal(jax.random.key(1), (32, 8))
    exact = np.asarray(x @ w)
    bound = np.abs(np.asarray(x)).sum(1, keepdims=True) * np.abs(np.asarray(w)).max(0) / 254
    for quantize_inputs, factor in ((False, 1.0), (True, 2.0 + 1 / 127)):
      q = compression.quantize(
        models.Model(None, None, None, False, None, None, None, (), None, (('w', 'columns'),)),
        {'w': w},
        quantize_inputs=quantize_inputs,
      )['w']
      self.assertIsInstance(q, layers.Int8)
      self.assertEqual(q.q.qvalue.dtype, jnp.int8)
      self.assertEqual(q.q.scale.shape, (1, 8))
      got = np.asarray(layers.matmul(x, q))
      self.assertTrue(np.all(np.abs(got - exact) <= factor * bound + 1e-5), quantize_inputs)
      self.assertGreater(np.abs(got - exact).max(), 0)  # It did quantise.

  def test_prune_is_global_and_exact(self):
    model = models.Model(
      None, None, None, False, None, None, None, (), None, (('a', 'columns'), ('e', 'rows'))
    )
    params = {
      'a': jnp.arange(1.0, 13.0).reshape(3, 4),
      'b': jnp.ones(4) * 0.01,  # A bias: never pruned.
      'e': jnp.full((2, 3), 0.5),  # An embedding: pruned only when asked.
    }
    pruned = compression.prune(model, params, 0.5)
    np.testing.assert_array_equal(pruned['a'].ravel(), [0] * 6 + list(range(7, 13)))
    np.testing.assert_array_equal(pruned['b'], params['b'])
    np.testing.assert_array_equal(pruned['e'], params['e'])
    with_embeddings = compression.prune(model, params, 0.5, embeddings=True)
    self.assertEqual(int(np.sum(with_embeddings['e'] == 0)), 6)  # The 9 smallest of 18: all of e.
    self.assertEqual(int(np.sum(with_embeddings['a'] == 0)), 3)


class CompressRunTest(absltest.TestCase):
  def test_quantised_models_stay_near_float(self):
    # Stated bound: int8 and w8a8 cost at most 2% of the float validation
    # loss of a trained tiny model of each family (bytes at most 40% of float).
    tmp = self.create_tempdir().full_path
    for family in ('lstm', 'transformer'):
      base = test_util.tiny_config(tmp, model=family)
      with base.unlocked():
        base.sample.num_tokens = 0
      workdir = os.path.join(tmp, family)
      _run(base, workdir)
      for method in ('int8', 'w8a8'):
        outcome, log = _compress(workdir, method)
        float_loss = outcome['float']['results']['valid']['loss']
        loss = outcome[method]['results']['valid']['loss']
        self.assertLess(abs(loss - float_loss), 0.02 * float_loss, (family, method))
        record = outcome[method]['record']
        self.assertLess(record['param_bytes'], 0.4 * record['float_param_bytes'])
        self.assertIn(f'{method}: valid', log)
        card = open(os.path.join(outcome[method]['workdir'], 'MODEL_CARD.md')).read()
        self.assertIn(f'Compressed ({method})', card)

  def test_compressed_workdir_evaluates_in_a_new_process(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp, model='transformer')
    workdir = os.path.join(tmp, 'run')
    _run(config, workdir)
    outcome, _ = _compress(workdir, 'w8a8')
    out = outcome['w8a8']['workdir']
    self.assertEqual(out, os.path.join(workdir, 'compressed', 'w8a8'))
    # Nothing is replaced: a second compression into the same folder stops.
    with self.assertRaisesRegex(ValueError, 'already holds a run'):
      _compress(workdir, 'w8a8')
    # --mode=eval with no --config: the compressed workdir's own config says how it was made
    # (without compress.method its checkpoint, parameters alone, would not restore).
    result = test_util.run_module(['research.main', '--mode=eval', f'--workdir={out}'])
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    loss = outcome['w8a8']['results']['valid']['loss']
    self.assertIn(f'valid: loss {loss:.4f},', result.stdout)

  def test_pruning_and_finetuning_hold_zeros(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp)
    with config.unlocked():
      config.sample.num_tokens = 0
    workdir = os.path.join(tmp, 'run')
    _run(config, workdir)
    outcome, _ = _compress(workdir, 'prune:0.5', finetune_steps=4)
    tuned_dir = outcome['prune50-ft4']['workdir']
    saved = json.load(open(os.path.join(tuned_dir, 'config.json')))
    self.assertTrue(saved['optim']['hold_zeros'])
    tuned_config, _ = workdir_lib.saved_config(tuned_dir, None)
    tuned = test_util.final_state(tuned_config, tuned_dir).params
    pruned_dir = outcome['prune50']['workdir']
    pruned_config, _ = workdir_lib.saved_config(pruned_dir, None)
    _, _, start = evaluate.restore(pruned_config, pruned_dir, 'test')
    model = evaluate.restore(tuned_config, tuned_dir, 'test')[0].model
    chosen = compression.prunable(model, start, embeddings=False)
    self.assertEqual(sum(chosen), 1 + 2 * tuned_config.model.num_layers)  # Softmax, gates.
    zeros = entries = 0
    for ok, before, after in zip(chosen, jax.tree.leaves(start), jax.tree.leaves(tuned)):
      before, after = np.asarray(before), np.asarray(after)
      if not ok:
        self.assertFalse(np.any(before == 0) and before.ndim == 2)  # Embedding kept.
        continue
      zeros, entries = zeros + int(np.sum(before == 0)), entries + before.size
      np.testing.assert_array_equal(after[before == 0], 0)  # Held exactly.
      self.assertFalse(np.array_equal(after[before != 0], before[before != 0]))  # Trained.
    self.assertEqual(zeros, round(0.5 * entries))  # Exactly half of the kernels' entries.
    np.testing.assert_array_equal(start['embed']['embedding'] == 0, False)  # Kept.


if __name__ == '__main__':
  absltest.main()
