"""The objective seam: one forward pass and cross-entropy for training and
evaluation, and the loss functions the train step differentiates.

Shape letters: B batch rows, T time steps, V vocabulary.

A batch holds `inputs`, `targets`, `weights` (BxT) and `reset` (B: the rows
that start a new stream). The train step adds `carry` (the model's recurrent
state per row; `{}` for the Transformer) and `denominator` (a scalar: what
the objective divides the summed token losses by, computed once for the
whole step's batch by the objective, so the gradients of micro-batches or of
single rows add up to the whole batch's).

    objective = make_objective(model, 'token_mean')
    batch = dict(batch, carry=carry, denominator=objective.denominator(batch))
    value, aux = objective.loss_fn(params, batch, rng)

A new objective (a distillation term, say) is one more entry in OBJECTIVES;
how gradients are made from `loss_fn` is chosen in research/gradients.py.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from research import metrics
from research import models


def forward(model: models.Model, params: Any, batch: dict, *, train: bool, rng: jax.Array | None):
  """The model on `batch` from `batch['carry']`, rows in `reset` started anew.

  Returns:
    (sum of the weighted token losses in nats, sum of the weights,
    logits_BxTxV, the carry after the batch).
  """
  carry = models.reset_carry(batch['carry'], batch['reset'])
  logits_BxTxV, new_carry = model.apply(params, carry, batch['inputs'], train=train, rng=rng)
  loss_sum, weight_sum = metrics.cross_entropy_sums(
    logits_BxTxV, batch['targets'], batch['weights']
  )
  return loss_sum, weight_sum, logits_BxTxV, new_carry


class Objective(NamedTuple):
  """What the train step minimises.

  Attributes:
    loss_fn: `loss_fn(params, batch, rng) -> (value, aux)`; `value` is
      differentiated, `aux` holds `loss_sum` and `weight_sum` (the batch's
      summed token losses in nats and its token count, for the metrics) and
      `carry` (the state after the batch).
    denominator: `denominator(batch)`, what `value` divides the summed
      token losses by; given the whole step's batch.
  """

  loss_fn: Callable[..., tuple[jax.Array, dict]]
  denominator: Callable[[dict], jax.Array]


# name -> the denominator of the summed token losses.
OBJECTIVES: dict[str, Callable[[dict], Any]] = {
  # The mean loss per token.
  'token_mean': lambda batch: jnp.sum(batch['weights']),
  # Summed over time, averaged over rows: Zaremba et al.'s scale, for which
  # SGD at rate 1 is right.
  'sequence_sum': lambda batch: batch['inputs'].shape[0],
}


# name -> what one full row's summed token losses are divided by to give its
# share of the objective (T tokens: a per-token mean; 1: a per-sequence sum);
# DP-SGD clips each row's gradient at that scale.
_ROW_SCALES: dict[str, Callable[[int], float]] = {
  'token_mean': float,
  'sequence_sum': lambda seq_len: 1.0,
}


def row_scale(name: str, seq_len: int) -> float:
  return _ROW_SCALES[name](seq_len)


def make_objective(model: models.Model, name: str) -> Objective:
  """The objective `name` (a key of OBJECTIVES) for `model`."""
  if name not in OBJECTIVES:
    raise ValueError(
      f'Unknown objective {name!r} (config key optim.loss); valid names: {sorted(OBJECTIVES)}.'
    )

  def loss_fn(params, batch: dict, rng: jax.Array):
    loss_sum, weight_sum, _, new_carry = forward(model, params, batch, train=True, rng=rng)
    return loss_sum / batch['denominator'], {
      'loss_sum': loss_sum,
      'weight_sum': weight_sum,
      'carry': new_carry,
    }

  return Objective(loss_fn=loss_fn, denominator=OBJECTIVES[name])
