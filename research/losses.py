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

A new objective is one more entry in OBJECTIVES; how gradients are made from
`loss_fn` is chosen in research/gradients.py. Knowledge distillation
(`Distillation`, Hinton et al. 2015) adds a term to any of them:

    loss = ((1 - alpha) * CE_sum + alpha * T^2 * KL_sum) / denominator

KL_sum sums KL(p_teacher^T || p_student^T) over the weighted tokens, p^T =
softmax(logits / T); the frozen teacher reads the same inputs (no dropout),
its parameters an argument of the step (`Objective.with_teacher`), never part
of the state. A recurrent teacher of a student that reads streams keeps its
own carry along each row (`Distillation.carried`: the state's carry is then
the pair (student's, teacher's)); otherwise it starts every batch anew.
"""

import functools
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
      `carry` (the state after the batch); a distilled objective's also
      `distill_kl_sum` (the summed KL of its tokens, for `step_metrics`) and
      its `loss_fn` takes the teacher's parameters as a fourth argument.
    denominator: `denominator(batch)`, what `value` divides the summed
      token losses by; given the whole step's batch.
  """

  loss_fn: Callable[..., tuple[jax.Array, dict]]
  denominator: Callable[[dict], jax.Array]

  def with_teacher(self, teacher_params: Any | None) -> Callable[..., tuple[jax.Array, dict]]:
    """`loss_fn(params, batch, rng)`, a teacher's parameters bound (None: none)."""
    if teacher_params is None:
      return self.loss_fn
    return functools.partial(self.loss_fn, teacher_params=teacher_params)


class Distillation(NamedTuple):
  """The teacher term of a distilled objective (config.distill)."""

  model: models.Model  # The teacher; frozen, run with train=False.
  alpha: float  # Weight of the term; 1 - alpha weighs the data loss.
  temperature: float  # T: both distributions are softmax(logits / T).
  # The teacher's carry lives beside the student's in `batch['carry']` (a pair), kept from
  # batch to batch like it; False: the teacher reads every batch from a fresh carry.
  carried: bool = False


def distill_kl_sum(
  student_logits_BxTxV: jax.Array,
  teacher_logits_BxTxV: jax.Array,
  weights_BxT: jax.Array,
  temperature: float,
) -> jax.Array:
  """Sum over the weighted tokens of KL(p_teacher^T || p_student^T) in
  nats, p^T = softmax(logits / T); float32 whatever the logits' dtype."""
  log_q_BxTxV = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32) / temperature)
  log_p_BxTxV = jax.nn.log_softmax(teacher_logits_BxTxV.astype(jnp.float32) / temperature)
  kl_BxT = jnp.sum(jnp.exp(log_p_BxTxV) * (log_p_BxTxV - log_q_BxTxV), axis=-1)
  return jnp.sum(kl_BxT * weights_BxT)


# The step metrics an objective's aux may give beyond the loss (`step_metrics`).
STEP_METRICS = ('clipped_fraction', 'distill_kl')


def step_metrics(aux: dict) -> dict:
  """The step's STEP_METRICS from the aux of its whole batch: DP-SGD's
  `clipped_fraction` (research/privacy/dp_sgd.py) as it is, and a distilled
  objective's `distill_kl`, the mean KL per token (its summed KL over the
  token count, so micro-batches add up)."""
  out = {k: aux[k] for k in ('clipped_fraction',) if k in aux}
  if 'distill_kl_sum' in aux:
    out['distill_kl'] = aux['distill_kl_sum'] / aux['weight_sum']
  return out


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


def make_objective(
  model: models.Model, name: str, distill: Distillation | None = None
) -> Objective:
  """The objective `name` (a key of OBJECTIVES) for `model`, with `distill`'s
  term when given (module docstring)."""
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

  if distill is None:
    return Objective(loss_fn=loss_fn, denominator=OBJECTIVES[name])
  alpha, temperature = distill.alpha, distill.temperature

  def distilled_loss_fn(params, batch: dict, rng: jax.Array, teacher_params):
    if distill.carried:
      carry, teacher_carry = batch['carry']
    else:
      carry, teacher_carry = batch['carry'], distill.model.init_carry(batch['inputs'].shape[0])
    loss_sum, weight_sum, logits_BxTxV, new_carry = forward(
      model, params, dict(batch, carry=carry), train=True, rng=rng
    )
    _, _, teacher_logits_BxTxV, new_teacher_carry = forward(
      distill.model, teacher_params, dict(batch, carry=teacher_carry), train=False, rng=None
    )
    kl_sum = distill_kl_sum(
      logits_BxTxV, jax.lax.stop_gradient(teacher_logits_BxTxV), batch['weights'], temperature
    )
    value = (1 - alpha) * loss_sum + alpha * temperature**2 * kl_sum
    return value / batch['denominator'], {
      'loss_sum': loss_sum,
      'weight_sum': weight_sum,
      'carry': (new_carry, new_teacher_carry) if distill.carried else new_carry,
      'distill_kl_sum': kl_sum,
    }

  return Objective(loss_fn=distilled_loss_fn, denominator=OBJECTIVES[name])
