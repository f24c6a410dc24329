"""Decoding through a model's cache gives the logits of the full pass."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from research.models import positional
from research.models import transformer
from tests import models_test

V, T, B = models_test.V, models_test.T, models_test.B

CASES = (
  ('lstm', {}),
  ('transformer', dict(positional='learned')),
  ('transformer', dict(positional='sinusoidal', tie_embeddings=True)),
  ('transformer', dict(positional='rope', norm='rmsnorm')),
  ('transformer', dict(positional='alibi', mlp='swiglu')),
  ('transformer', dict(positional='none', norm_position='post')),
  ('transformer', dict(scan_layers=True, positional='rope')),
  ('transformer', dict(scan_layers=True, remat=True, attention='dot_product', positional='alibi')),
)
# Every registered positional kind and norm decodes as it reads: one case
# each for those the cases above do not cover (a newly registered one).
_COVERED = [models_test.transformer_config(**overrides) for _, overrides in CASES[1:]]
CASES += tuple(
  ('transformer', {key: name})
  for key, registry in (('positional', positional.POSITIONAL), ('norm', transformer.NORMS))
  for name in registry
  if all(c[key] != name for c in _COVERED)
)


def _decode_in_chunks(name, overrides, tokens_BxT, chunks):
  """Logits of `tokens_BxT` read through the cache, `chunks` tokens a call."""
  model = models_test.get_model(name, **overrides)
  params = models_test.get_params(name, **overrides)
  decode = jax.jit(model.decode)
  cache, start, logits = model.init_cache(tokens_BxT.shape[0]), 0, []
  for size in chunks:
    positions_BxT = jnp.broadcast_to(jnp.arange(start, start + size), (tokens_BxT.shape[0], size))
    logits_BxTxV, cache = decode(params, cache, tokens_BxT[:, start : start + size], positions_BxT)
    logits.append(logits_BxTxV)
    start += size
  return jnp.concatenate(logits, axis=1)


class DecodeTest(parameterized.TestCase):
  @parameterized.parameters(*CASES)
  def test_cached_decoding_matches_the_full_pass(self, name, overrides):
    model = models_test.get_model(name, **overrides)
    params = models_test.get_params(name, **overrides)
    tokens_BxT = models_test.random_tokens(4, (B, T))
    full_BxTxV, _ = model.apply(params, model.init_carry(B), tokens_BxT, train=False, rng=None)
    # A prompt in one call and then a token per call, or all one at a time.
    for chunks in ((3, 1, 1, 1, 1), (1,) * T, (T,)):
      with self.subTest(chunks=chunks):
        cached_BxTxV = _decode_in_chunks(name, overrides, tokens_BxT, chunks)
        np.testing.assert_allclose(cached_BxTxV, full_BxTxV, atol=1e-5, rtol=1e-5)

  def test_rows_may_stand_at_different_positions(self):
    # After a prompt of 4, row 0 reads its token 4 while row 1 re-reads its
    # token 2: slots after a query's position are hidden whatever they hold,
    # so each row gets the full pass's logits at its own position.
    model = models_test.get_model('transformer')
    params = models_test.get_params('transformer')
    tokens_2xT = models_test.random_tokens(5, (2, T))
    full_2xTxV, _ = model.apply(params, {}, tokens_2xT, train=False, rng=None)
    _, cache = model.decode(
      params, model.init_cache(2), tokens_2xT[:, :4], jnp.broadcast_to(jnp.arange(4), (2, 4))
    )
    logits_2x1xV, _ = model.decode(
      params, cache, jnp.stack([tokens_2xT[0, 4:5], tokens_2xT[1, 2:3]]), jnp.array([[4], [2]])
    )
    np.testing.assert_allclose(
      logits_2x1xV[:, 0], jnp.stack([full_2xTxV[0, 4], full_2xTxV[1, 2]]), atol=1e-5, rtol=1e-5
    )

  def test_the_cache_holds_the_context(self):
    model = models_test.get_model('transformer')
    self.assertEqual(model.context, T)
    cache = model.init_cache(B)
    self.assertEqual(cache['k'].shape[:3], (models_test.NUM_LAYERS, B, T))
    self.assertIsNone(models_test.get_model('lstm').context)


if __name__ == '__main__':
  absltest.main()
