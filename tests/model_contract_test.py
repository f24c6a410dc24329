"""The `Model` contract is honest: every registered family answers every
field, and a third family is its module, one registry line and its config
defaults. A toy family, registered here and nowhere else, trains, evaluates,
samples, checkpoints and resumes through the same code as the real two."""

import contextlib
import dataclasses
import io
import os
import re
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import common
from research import compression
from research import evaluate
from research import generate
from research import models
from research import rules
from research import sharding
from research import train
from research import workdir as workdir_lib
from research.models import contract
from research.models import layers
from research.privacy import ghost
from tests import test_util

V, T, B = 13, 7, 3  # Distinct primes: a swapped axis fails.

# Small sizes of the families this repository ships; any other family is
# tried at its configs/common.py defaults.
_TINY = {
  'lstm': dict(num_layers=2, hidden_size=11),
  # Untied: the head is then a matrix of its own, compressible and ghost-clipped.
  'transformer': dict(num_layers=2, num_heads=2, d_model=12, d_ff=17, tie_embeddings=False),
}


def _model_config(name: str) -> ml_collections.ConfigDict:
  config = common.model_defaults(name)
  config.update(_TINY.get(name, {}))
  return config


def _tokens(seed: int, shape) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, shape), jnp.int32)


def check_every_field(test: absltest.TestCase, name: str) -> None:
  """Builds family `name` and calls every field of its `Model`."""
  test.assertIsNotNone(common.model_defaults(name), f'configs/common.py lacks {name}_model()')
  model = models.get_model(_model_config(name), V, T)
  # No context limit (LSTM); no statistics pass; every parameter at the optimizer's rate.
  optional = ('context', 'stats', 'rate_multipliers')
  test.assertEqual(
    [f for f in model._fields if getattr(model, f) is None and f not in optional], []
  )
  test.assertIsInstance(model.recurrent, bool)
  params = jax.jit(model.init)(jax.random.key(0))
  structs = jax.eval_shape(model.init, jax.random.key(0))
  chex.assert_trees_all_equal_shapes_and_dtypes(params, structs)
  for leaf in jax.tree.leaves(params):
    test.assertEqual(leaf.dtype, jnp.float32)

  # apply: logits of every position; train mode needs its key.
  tokens_BxT = _tokens(1, (B, T))
  carry = model.init_carry(B)
  logits_BxTxV, new_carry = model.apply(params, carry, tokens_BxT, train=False, rng=None)
  test.assertEqual(logits_BxTxV.shape, (B, T, V))
  test.assertEqual(logits_BxTxV.dtype, jnp.float32)
  test.assertEqual(jax.tree.structure(new_carry), jax.tree.structure(carry))
  positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
  at_positions, _ = model.apply(
    params, carry, tokens_BxT, train=False, rng=None, positions_BxT=positions_BxT
  )
  np.testing.assert_allclose(at_positions, logits_BxTxV, rtol=1e-5, atol=1e-6)
  trained, _ = model.apply(params, carry, tokens_BxT, train=True, rng=jax.random.key(1))
  test.assertTrue(np.isfinite(trained).all())
  reset = contract.reset_carry(new_carry, jnp.array([True] + [False] * (B - 1)))
  for leaf in jax.tree.leaves(reset):
    np.testing.assert_array_equal(leaf[0], 0.0)

  # init_cache and decode: a prompt, then a token per call, give apply's logits.
  if model.context is not None:
    test.assertGreaterEqual(model.context, T)
  cache = model.init_cache(B)
  first, cache = model.decode(params, cache, tokens_BxT[:, :4], positions_BxT[:, :4])
  steps = [first]
  for t in range(4, T):
    logits_Bx1xV, cache = model.decode(
      params, cache, tokens_BxT[:, t : t + 1], positions_BxT[:, t : t + 1]
    )
    steps.append(logits_Bx1xV)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), logits_BxTxV, rtol=1e-5, atol=1e-5)

  # stats: named finite scalars of one forward pass, where the family has them.
  if model.stats is not None:
    figures = jax.jit(model.stats)(params, carry, tokens_BxT)
    test.assertNotEmpty(figures)
    for value in figures.values():
      test.assertEqual(jnp.shape(value), ())
      test.assertTrue(np.isfinite(value))

  # flops_per_token: of the parameters or of their shapes alike.
  test.assertGreater(model.flops_per_token(params), 0)
  test.assertEqual(model.flops_per_token(params), model.flops_per_token(structs))

  # partition_rules: every parameter has one (strict, even on one device).
  mesh = sharding.make_mesh(
    ml_collections.ConfigDict({'data': 1, 'fsdp': 1, 'tensor': 1}), jax.devices()[:1]
  )
  shardings = sharding.param_shardings(structs, mesh, model.partition_rules)
  test.assertEqual(jax.tree.structure(shardings), jax.tree.structure(structs))

  # compressible: each pattern names weight matrices, and the model runs them as int8.
  paths = {
    sharding.param_path(path): leaf.ndim - contract.layer_axes(path)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  for pattern, kind in model.compressible:
    test.assertIn(kind, ('columns', 'rows'))
    ranks = {rank for path, rank in paths.items() if re.fullmatch(pattern, path)}
    test.assertLessEqual(ranks, {2}, f'{pattern!r} names a parameter that is not a matrix')
  quantized = compression.quantize(model, params, quantize_inputs=False)
  int8 = [
    sharding.param_path(path)
    for path, leaf in jax.tree_util.tree_flatten_with_path(quantized, is_leaf=layers.is_int8)[0]
    if layers.is_int8(leaf)
  ]
  test.assertTrue(int8, 'nothing to compress (research.compress prunes and quantises these)')
  test.assertCountEqual(
    int8, [p for p in paths if any(re.fullmatch(c, p) for c, _ in model.compressible)]
  )
  int8_logits, _ = model.apply(quantized, carry, tokens_BxT, train=False, rng=None)
  np.testing.assert_allclose(int8_logits, logits_BxTxV, atol=0.05)

  # ghost_layers: modules at the root, of a kind DP-SGD knows.
  for layer, kind in model.ghost_layers:
    test.assertIn(kind, ghost.KINDS)
    test.assertIn(layer, params)


class EveryFamilyTest(parameterized.TestCase):
  @parameterized.parameters(*models.MODELS)
  def test_every_field_answers(self, name):
    check_every_field(self, name)


# --- A toy family: its config, its build, its rules, its defaults. ---


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  """The toy's `config.model` keys: logits from the token and the one before."""

  width: int = rules.field(rules.at_least(1))
  dropout_rate: float = rules.field(rules.in_range(0, 1))

  def __post_init__(self):
    rules.check_fields(self, 'model')


def build_toy(config: ToyConfig, vocab_size: int, seq_len: int) -> contract.Model:
  """h_t = tanh([e(x_t), e(x_t-1)] W + b), logits_t = h_t U; e(x_-1) = 0. Its
  decoding cache is the last token's embedding (BxW)."""
  del seq_len  # Any length: it reads two tokens.
  W = config.width  # pylint: disable=invalid-name

  def init(rng):
    k_embed, k_mix, k_head = jax.random.split(rng, 3)
    return {
      'embed': {'embedding': 0.3 * jax.random.normal(k_embed, (vocab_size, W))},
      'mix': {'kernel': 0.3 * jax.random.normal(k_mix, (2 * W, W)), 'bias': jnp.zeros((W,))},
      'head': {'kernel': 0.3 * jax.random.normal(k_head, (W, vocab_size))},
    }

  def forward(params, prev_BxW, inputs_BxT, dropout_key=None):
    (batch, length), table_VxW = inputs_BxT.shape, params['embed']['embedding']
    e_BxTxW = jnp.take(table_VxW, inputs_BxT, axis=0)
    prev_BxTxW = jnp.concatenate([prev_BxW[:, None], e_BxTxW[:, :-1]], axis=1)
    x_NxW2 = jnp.concatenate([e_BxTxW, prev_BxTxW], axis=-1).reshape(batch * length, 2 * W)
    h_NxW = jnp.tanh(layers.matmul(x_NxW2, params['mix']['kernel']) + params['mix']['bias'])
    if dropout_key is not None:
      keep = jax.random.bernoulli(dropout_key, 1 - config.dropout_rate, h_NxW.shape)
      h_NxW = jnp.where(keep, h_NxW / (1 - config.dropout_rate), 0.0)
    logits_NxV = layers.matmul(h_NxW, params['head']['kernel'])
    return logits_NxV.reshape(batch, length, vocab_size), e_BxTxW[:, -1]

  def apply(params, carry, inputs_BxT, *, train, rng, positions_BxT=None):
    del positions_BxT  # Only the previous token matters.
    key = contract.dropout_rngs(train, config.dropout_rate, rng).get('dropout')
    dropping = train and config.dropout_rate > 0
    zeros_BxW = jnp.zeros((inputs_BxT.shape[0], W))
    logits_BxTxV, _ = forward(params, zeros_BxW, inputs_BxT, key if dropping else None)
    return logits_BxTxV, carry

  def decode(params, cache, inputs_BxT, positions_BxT):
    del positions_BxT
    return forward(params, cache, inputs_BxT)

  return contract.Model(
    init=init,
    apply=apply,
    init_carry=lambda batch_size: {},
    recurrent=False,
    init_cache=lambda batch_size: jnp.zeros((batch_size, W)),
    decode=decode,
    context=None,
    partition_rules=(
      ('embed/embedding', (None, 'fsdp')),
      ('mix/kernel', ('fsdp', 'tensor')),
      ('mix/bias', ('tensor',)),
      ('head/kernel', ('fsdp', None)),
    ),
    flops_per_token=lambda params: 6.0 * contract.matmul_params(params, ('embed/embedding',)),
    compressible=(('(mix|head)/kernel', 'columns'),),
  )


def toy_model() -> ml_collections.ConfigDict:
  """What configs/common.py would hold for the toy family."""
  m = ml_collections.ConfigDict()
  m.name = 'toy'
  m.width = 16
  m.dropout_rate = 0.1
  return m


@contextlib.contextmanager
def toy_family():
  """The toy registered as a third family: one registry line, its defaults."""
  with (
    mock.patch.dict(models.MODELS, toy=models.Family(ToyConfig, build_toy)),
    mock.patch.object(common, 'toy_model', toy_model, create=True),
  ):
    yield


class ToyFamilyTest(absltest.TestCase):
  def test_a_third_family_is_its_module_one_registry_line_and_its_defaults(self):
    with toy_family():
      check_every_field(self, 'toy')
      # A saved config without a toy key gets the toy's default.
      filled = workdir_lib.with_defaults({'model': {'name': 'toy', 'width': 8}})
      self.assertEqual(filled['model'], {'name': 'toy', 'width': 8, 'dropout_rate': 0.1})
    self.assertNotIn('toy', models.MODELS)

  def test_the_toy_trains_evaluates_samples_checkpoints_and_resumes(self):
    tmp = self.create_tempdir().full_path
    config = test_util.tiny_config(tmp)
    n = 4
    with config.unlocked():
      config.model = toy_model()
      config.num_train_steps = 2 * n
      config.checkpoint_every_steps = n
      config.eval_every_steps = n
      config.log_every_steps = n
      config.optim.decay_steps = 2 * n  # The schedule of the 2n-step run in both.
      config.sample.num_tokens = 5
    straight, resumed = os.path.join(tmp, 'straight'), os.path.join(tmp, 'resumed')
    out = io.StringIO()
    with toy_family(), contextlib.redirect_stdout(out):
      results = train.train_and_evaluate(config, straight)
      half = ml_collections.ConfigDict(config.to_dict())
      half.num_train_steps = n
      train.train_and_evaluate(half, resumed)
      train.train_and_evaluate(config, resumed)  # Resumes at step n.
      self.assertIn(f'Resuming from the checkpoint at step {n}', out.getvalue())
      a = test_util.final_state(config, straight)
      b = test_util.final_state(config, resumed)
      again = evaluate.evaluate_checkpoint(config, straight)
      _, samples = generate.generate(straight, 'the ', num_samples=2, max_new_tokens=6)
    self.assertEqual(int(a.step), 2 * n)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # Bit-identical.
    self.assertTrue(np.isfinite(results['valid']['loss']))
    self.assertEqual(again['valid']['loss'], results['valid']['loss'])
    self.assertLen(samples, 2)
    with open(os.path.join(straight, 'MODEL_CARD.md')) as f:
      self.assertIn('Family: toy', f.read())


if __name__ == '__main__':
  absltest.main()
