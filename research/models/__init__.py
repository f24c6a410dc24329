"""Model registry: every family as a `Model` of pure functions.

A family module (`transformer.py`, `lstm.py`) exposes
`build(model_config, vocab_size, seq_len) -> Model`. Callers never touch
`flax.linen` modules; they hold plain-dict parameters and an explicit carry.

Usage:
  model = get_model(config.model, vocab_size, seq_len)
  params = model.init(key)
  carry = model.init_carry(batch_size)
  logits_BxTxV, carry = model.apply(params, carry, inputs_BxT,
                                    train=True, rng=dropout_key)
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections


class Model(NamedTuple):
  """A model family instance as pure functions.

  Attributes:
    init: `init(rng) -> params`, a plain nested dict of float32 arrays.
    apply: `apply(params, carry, inputs_BxT, *, train, rng) -> (logits_BxTxV,
      new_carry)`. `inputs_BxT` is int32. `train` is a Python bool (bind it
      with `functools.partial` before `jax.jit`). `rng` is the dropout key,
      read only when `train=True` and the dropout rate is > 0; then it is
      required (None raises ValueError). Any key type works.
    init_carry: `init_carry(batch_size) -> carry`, the state before the first
      segment (LSTM: per-layer (c, h) zeros; Transformer: `{}`).
    stateful: True if the carry holds state across segments (LSTM), so the
      trainer must feed segments in order and thread the carry through.
  """
  init: Callable[..., Any]
  apply: Callable[..., Any]
  init_carry: Callable[[int], Any]
  stateful: bool


# With scan_layers=True the Transformer keeps its L blocks under this key,
# every leaf with a leading layer axis (research/models/transformer.py).
STACKED_BLOCKS = 'blocks'


def layer_axes(path) -> int:
  """Leading layer axes of the parameter at `path` (a jax tree path): 1
  under STACKED_BLOCKS, else 0. A leaf's own rank is ndim minus this."""
  return int(bool(path) and getattr(path[0], 'key', None) == STACKED_BLOCKS)


# The family modules import `Model` from this package, so they are imported
# only after it is defined. Importing a submodule directly still works because
# Python always runs this `__init__` first.
# pylint: disable=wrong-import-position
from research.models import lstm
from research.models import transformer
# pylint: enable=wrong-import-position

MODELS = {'transformer': transformer.build, 'lstm': lstm.build}


def get_model(model_config: ml_collections.ConfigDict, vocab_size: int,
              seq_len: int) -> Model:
  """Builds the family named by `model_config.name`.

  Args:
    model_config: the family's fields (see each family's `build`).
    vocab_size: number of token ids, V.
    seq_len: training segment length; the Transformer's context length.

  Returns:
    The model as pure functions.

  Raises:
    ValueError: for an unknown model name, listing the known ones.
  """
  name = model_config.name
  if name not in MODELS:
    raise ValueError(
        f'Unknown model name {name!r}; known models: {sorted(MODELS)}')
  return MODELS[name](model_config, vocab_size, seq_len)


def dropout_rngs(train: bool, dropout_rate: float,
                 rng: jax.Array | None) -> dict[str, jax.Array]:
  """The flax `rngs` of an apply call; training with dropout needs a key."""
  if train and dropout_rate > 0 and rng is None:
    raise ValueError('apply(train=True) with dropout needs an rng.')
  return {'dropout': rng} if rng is not None else {}


def reset_carry(carry: Any, reset_B: Any) -> Any:
  """Zeroes the carry of the rows where `reset_B` is True.

  Every leaf of a carry has the batch as its leading axis, so this works for
  any family; a row that starts a new stream must not see the previous one.
  """
  def reset(c):
    mask = reset_B.reshape((-1,) + (1,) * (c.ndim - 1))
    return jnp.where(mask, jnp.zeros_like(c), c)
  return jax.tree.map(reset, carry)
