"""The Transformer's speed options compute the same model: fused attention,
rematerialisation, scan over layers and bf16 compute with float32
parameters."""

import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from research import metrics
from research import models
from research.models import attention
from tests import models_test


def stack_blocks(params: dict, num_layers: int) -> dict:
  """The scan_layers=True tree of an unrolled tree (`block_{i}` -> `blocks`)."""
  blocks = [params[f'block_{i}'] for i in range(num_layers)]
  rest = {k: v for k, v in params.items() if not k.startswith('block_')}
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *blocks)
  return {**rest, models.STACKED_BLOCKS: stacked}


def unstack_blocks(params: dict) -> dict:
  """The unrolled tree of a scan_layers=True tree (`blocks` -> `block_{i}`)."""
  stacked = params[models.STACKED_BLOCKS]
  rest = {k: v for k, v in params.items() if k != models.STACKED_BLOCKS}
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(num_layers):
    rest[f'block_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return rest


def _loss_and_grads(params=None, *, train=False, **overrides):
  """Loss and gradients at `params` (default: the model's init at key 0)."""
  config = models_test.transformer_config(**overrides)
  model = models.get_model(config, models_test.V, models_test.T)
  if params is None:
    params = model.init(jax.random.key(0))
  tokens = models_test.random_tokens(1, (2, models_test.T))
  targets = models_test.random_tokens(2, (2, models_test.T))

  @functools.partial(jax.jit)
  def loss(params):
    logits, _ = model.apply(params, {}, tokens, train=train, rng=jax.random.key(3))
    s, n = metrics.cross_entropy_sums(logits, targets, jnp.ones(targets.shape))
    return s / n

  return jax.value_and_grad(loss)(params)


class SpeedOptionsTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.loss, self.grads = _loss_and_grads()

  def _assert_close(self, loss, grads, rtol, atol):
    np.testing.assert_allclose(loss, self.loss, rtol=rtol)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(self.grads)):
      self.assertEqual(a.dtype, jnp.float32)
      np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)

  def test_dot_product_attention_equals_the_einsums(self):
    self._assert_close(*_loss_and_grads(attention='dot_product'), 1e-5, 1e-6)

  def test_heads_major_attention_computes_the_same_model(self):
    # Long contexts run the einsums on heads-major operands (a speed choice,
    # attention.HEADS_MAJOR_MIN_CONTEXT); force it at this short one.
    for train in (False, True):  # With dropout on the attention weights too.
      kwargs = dict(train=train, dropout_rate=0.1)
      expected = _loss_and_grads(**kwargs)
      with mock.patch.object(attention, 'HEADS_MAJOR_MIN_CONTEXT', 1):
        loss, grads = _loss_and_grads(**kwargs)
      np.testing.assert_allclose(loss, expected[0], rtol=1e-6)
      for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  def test_remat_gives_the_same_gradients(self):
    self._assert_close(*_loss_and_grads(remat=True), 1e-6, 1e-7)

  def test_scan_layers_computes_the_same_model(self):
    unrolled = models.get_model(
      models_test.transformer_config(), models_test.V, models_test.T
    ).init(jax.random.key(0))
    stacked = stack_blocks(unrolled, models_test.NUM_LAYERS)
    scanned = models.get_model(
      models_test.transformer_config(scan_layers=True), models_test.V, models_test.T
    ).init(jax.random.key(0))
    # Its own init has the stacked tree: L leading, rules of models' docstring.
    self.assertEqual(jax.tree.map(jnp.shape, scanned), jax.tree.map(jnp.shape, stacked))
    self.assertEqual(
      scanned['blocks']['attn']['qkv']['kernel'].shape,
      (models_test.NUM_LAYERS, models_test.D, 3 * models_test.D),
    )
    loss, grads = _loss_and_grads(stacked, scan_layers=True)
    self._assert_close(loss, unstack_blocks(grads), 1e-6, 1e-7)

  def test_scan_layers_with_remat_and_dropout(self):
    # Each layer draws its own dropout mask; remat recomputes the same ones.
    params = models.get_model(
      models_test.transformer_config(scan_layers=True), models_test.V, models_test.T
    ).init(jax.random.key(0))
    kw = dict(train=True, scan_layers=True, dropout_rate=0.3)
    loss, grads = _loss_and_grads(params, **kw)
    loss_remat, grads_remat = _loss_and_grads(params, remat=True, **kw)
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    self.assertNotAlmostEqual(
      float(loss), float(_loss_and_grads(params, scan_layers=True)[0]), places=3
    )  # dropout did act

  def test_bfloat16_compute_keeps_float32_gradients(self):
    self._assert_close(*_loss_and_grads(compute_dtype='bfloat16'), 3e-2, 3e-3)

  def test_bad_choices_are_refused(self):
    with self.assertRaisesRegex(ValueError, 'dropout_rate=0.1'):
      models.get_model(
        models_test.transformer_config(attention='dot_product', dropout_rate=0.1), 5, 4
      )
    with self.assertRaisesRegex(ValueError, 'model.compute_dtype'):
      models.get_model(models_test.transformer_config(compute_dtype='fp8'), 5, 4)


if __name__ == '__main__':
  absltest.main()
