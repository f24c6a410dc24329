"""The `Model` contract every family builds, and the helpers families share.

This module imports no family: the families (`transformer.py`, `lstm.py`)
import it, and the registry (`research/models/__init__.py`) imports them.
Code outside `models/` reaches these names through `research.models`.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from research import sharding
from research.models import layers


class Model(NamedTuple):
  """A model family instance as pure functions.

  Every field but `ghost_layers`, `stats`, `rate_multipliers` and `param_roles` is required:
  training, evaluation, the sampler, the benchmark, the model card and the partitioner call them
  all.

  Attributes:
    init: `init(rng) -> params`, a plain nested dict of float32 arrays.
    apply: `apply(params, carry, inputs_BxT, *, train, rng,
      positions_BxT=None) -> (logits_BxTxV, new_carry)`. `inputs_BxT` is
      int32. `train` is a Python bool (bind it with `functools.partial`
      before `jax.jit`). `rng` is the dropout key, read only when
      `train=True` and the dropout rate is > 0; then it is required (None
      raises ValueError). Any key type works. `positions_BxT` (int32) are the
      positions of the inputs in their sequence, 0..T-1 in every row when
      None; a recurrent family knows them from its carry and ignores them.
    init_carry: `init_carry(batch_size) -> carry`, the state before the first
      segment (LSTM: per-layer (c, h) zeros; Transformer: `{}`). Every leaf
      has the batch as its leading axis (`reset_carry`).
    recurrent: True if the carry links consecutive calls (LSTM). Whether
      training then carries it from batch to batch (feeding each row's
      segments in order) is the trainer's choice (research/components.py).
    init_cache: `init_cache(batch_size) -> cache`, the decoding state before
      the first token (LSTM: the carry; Transformer: per-layer keys and values
      of `context` positions, zeros).
    decode: `decode(params, cache, inputs_BxT, positions_BxT) -> (logits_BxTxV,
      cache)`, inference on the next T tokens of each row at their positions
      (a prompt in one call, then a token per call); the logits equal
      `apply`'s on the whole sequence at every position.
    context: the most positions a sequence may have when decoding (the
      Transformer's context length), or None for no limit (LSTM).
    partition_rules: `(path regex, spec)` pairs, first match wins (see
      `sharding.param_shardings`); a spec is a tuple with one entry per
      dimension: a mesh axis name, a tuple of them, or None. Every parameter
      needs a rule, even on one device (there is no catch-all).
    flops_per_token: `flops_per_token(params) -> float`, training FLOPs
      (forward and backward) per token; `params` may be shape structs.
    compressible: `(path regex, kind)` pairs naming the weight matrices that
      post-training compression may touch (research/compress.py): kind
      'columns' for a matmul kernel (input x output; one int8 scale per output
      column) and 'rows' for a table read by row (an embedding, and the tied
      head; one scale per row). Every one of them may be given to the model
      as `layers.Int8`. Anything else (norms, biases, position tables) stays
      float. Pruning needs at least one.
    ghost_layers: `(module name, kind)` pairs naming layers whose per-row
      gradient norms DP-SGD may compute from their inputs and output
      gradients instead of per-row gradients (research/privacy/ghost.py:
      kind 'affine' for x @ kernel + bias, 'lookup' for an embedding). Each
      is a module at the model's root, called once per forward pass, whose
      parameters nothing else uses. Optional: with none, DP-SGD forms every
      per-row gradient (research/privacy/dp_sgd.py).
    stats: `stats(params, carry, inputs_BxT) -> {name: scalar}`, statistics of
      the activations of one forward pass with train=False (the Transformer:
      attention-logit maxima and block-output RMS per layer), which training
      logs beside the step's metrics every `log_every_steps` (a separate
      pass, so the step's program is unchanged). Optional: None for none.
    rate_multipliers: `rate_multipliers(tree) -> tree` of each parameter's
      learning-rate factor (Python floats) under the family's parametrization
      (`model.parametrization`, research/models/mup.py), which the optimizer
      applies (research/optim.py). Optional: None where every parameter
      takes the optimizer's rate (the optimizer is then built as without it).
    param_roles: `(path regex, role)` pairs, first match wins and no
      catch-all, saying what each parameter is (research/models/mup.py
      ROLES: 'embedding', 'hidden' for a matrix from a width to a width,
      'output' for the head, 'vector' for gains and biases). Optimizers that
      treat kinds of parameters apart read it (research/optimizers.py: Muon
      orthogonalises the 'hidden' matrices). Optional: () for none, and such
      an optimizer is then refused.
  """

  init: Callable[..., Any]
  apply: Callable[..., Any]
  init_carry: Callable[[int], Any]
  recurrent: bool
  init_cache: Callable[[int], Any]
  decode: Callable[..., Any]
  context: int | None
  partition_rules: tuple[tuple[str, tuple], ...]
  flops_per_token: Callable[[Any], float]
  compressible: tuple[tuple[str, str], ...]
  ghost_layers: tuple[tuple[str, str], ...] = ()
  stats: Callable[..., dict] | None = None
  rate_multipliers: Callable[[Any], Any] | None = None
  param_roles: tuple[tuple[str, str], ...] = ()


# With scan_layers=True the Transformer keeps its L blocks under this key,
# every leaf with a leading layer axis (research/models/transformer.py).
STACKED_BLOCKS = 'blocks'


def layer_axes(path) -> int:
  """Leading layer axes of the parameter at `path` (a jax tree path): 1
  under STACKED_BLOCKS, else 0. A leaf's own rank is ndim minus this."""
  return int(bool(path) and getattr(path[0], 'key', None) == STACKED_BLOCKS)


def matmul_params(params: Any, lookups: tuple[str, ...] = ()) -> int:
  """N of the 6 N FLOPs-per-token rule: the size of every weight matrix
  (rank 2 once a stacked layer axis is set aside) except `lookups`, the paths
  of tables that are only indexed (token and position embeddings)."""
  leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=layers.is_int8)[0]
  return int(
    sum(
      leaf.size
      for path, leaf in leaves
      if leaf.ndim - layer_axes(path) == 2 and sharding.param_path(path) not in lookups
    )
  )


def dropout_rngs(train: bool, dropout_rate: float, rng: jax.Array | None) -> dict[str, jax.Array]:
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
