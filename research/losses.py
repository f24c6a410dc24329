"""The objective seam: one forward pass and cross-entropy for training and
evaluation, and the loss functions the train step differentiates.

Shape letters: B batch rows, T time steps, V vocabulary.

A data batch holds `inputs`, `targets`, `weights` (BxT) and `reset` (B: the
rows that start a new stream). The train step adds `carry` (the model's
recurrent state per row; `{}` for the Transformer) to make the `rows` of a
`Batch`, and the objective's `denominator` (what it divides the summed token
losses by), computed once for the whole step's batch, so the gradients of
micro-batches or of single rows add up to the whole batch's:

    objective = make_objective(model, 'token_mean')
    rows = dict(batch, carry=carry)
    value, aux = objective.loss_fn(params, Batch(rows, objective.denominator(rows)), rng)

`aux` is an `Aux`. A new objective is one more entry in OBJECTIVES; how
gradients are made from `loss_fn` is chosen in research/gradients.py.
Knowledge distillation (`Distillation`, Hinton et al. 2015) adds a term to
any of them:

    loss = ((1 - alpha) * CE_sum + alpha * T^2 * KL_sum) / denominator

KL_sum sums KL(p_teacher^T || p_student^T) over the weighted tokens, p^T =
softmax(logits / T); the frozen teacher reads the same inputs (no dropout),
its parameters an argument of the step (`Objective.with_teacher`), never part
of the state. A recurrent teacher of a student that reads streams keeps its
own carry along each row (`Distillation.carried`: the state's carry is then
the pair (student's, teacher's)); otherwise it starts every batch anew.

Every objective can add the z-loss of PaLM (Chowdhery et al. 2022, section
5; `optim.z_loss`, docs/stability.md), on the student's logits:

    loss = (objective's sum + z_loss * sum_t w_t z_t^2) / denominator

z_t = log sum_v exp(logits_tv) in float32, w_t the token's weight; divided by
the same denominator, so micro-batches and DP-SGD's rows still add up.
With z_loss = 0 the term is not built at all. `Aux.log_z_sum` (the sum of
w_t z_t, for the step's `log_z`) is reported either way.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from research import metrics
from research import models


class Batch(NamedTuple):
  """What a loss function reads (module docstring)."""

  # The batch's rows: inputs, targets, weights (BxT), reset (B) and carry (a
  # pytree whose leaves have the rows as their leading axis).
  rows: dict
  # What the summed token losses are divided by: the whole step's batch's, so
  # the same for every micro-batch or row the gradient is taken over.
  denominator: jax.Array


class Aux(NamedTuple):
  """What a loss function returns beside the value it differentiates, for a
  batch or (research/gradients.py) summed over its micro-batches or rows.

  Attributes:
    carry: the model's state after the batch, the rows its leading axis; a
      carried teacher's (`Distillation.carried`) makes it the pair
      (student's, teacher's).
    distill_kl_sum: a distilled objective's summed KL of its tokens (for the
      step's `distill_kl`), in nats; None for any other.
    loss_sum: the batch's summed weighted token losses in nats (the data
      loss, without a distillation term).
    weight_sum: the sum of its weights, its token count.
    clipped_fraction: set by DP-SGD's gradient function
      (research/privacy/dp_sgd.py): the fraction of rows with any weight whose
      gradient norm exceeded the clip; None for the others.
    log_z_sum: the sum over the weighted tokens of z = logsumexp(logits)
      (the student's), in nats, for the step's `log_z`; None where a loss
      function does not compute it.
  """

  carry: Any
  distill_kl_sum: jax.Array | None
  loss_sum: jax.Array
  weight_sum: jax.Array
  clipped_fraction: jax.Array | None = None
  log_z_sum: jax.Array | None = None


def forward_sums(
  model: models.Model, params: Any, rows: dict, *, train: bool, rng: jax.Array | None
) -> tuple[metrics.CrossEntropySums, jax.Array, Any]:
  """The model on `rows` from `rows['carry']`, rows in `reset` started anew.

  Returns:
    (the batch's `metrics.CrossEntropySums`, logits_BxTxV, the carry after
    the batch).
  """
  carry = models.reset_carry(rows['carry'], rows['reset'])
  logits_BxTxV, new_carry = model.apply(params, carry, rows['inputs'], train=train, rng=rng)
  sums = metrics.cross_entropy_token_sums(logits_BxTxV, rows['targets'], rows['weights'])
  return sums, logits_BxTxV, new_carry


def forward(model: models.Model, params: Any, rows: dict, *, train: bool, rng: jax.Array | None):
  """`forward_sums` as (sum of the weighted token losses in nats, sum of the
  weights, logits_BxTxV, the carry after the batch)."""
  sums, logits_BxTxV, new_carry = forward_sums(model, params, rows, train=train, rng=rng)
  return sums.loss, sums.weight, logits_BxTxV, new_carry


class Objective(NamedTuple):
  """What the train step minimises.

  Attributes:
    loss_fn: `loss_fn(params, batch, rng) -> (value, aux)` for a `Batch`;
      `value` is differentiated, `aux` is an `Aux`. A distilled objective's
      also takes the teacher's parameters (`with_teacher`).
    denominator: `denominator(rows)`, the `Batch.denominator` of the whole
      step's batch.
  """

  loss_fn: Callable[..., tuple[jax.Array, Aux]]
  denominator: Callable[[dict], jax.Array]

  def with_teacher(self, teacher_params: Any | None) -> Callable[..., tuple[jax.Array, Aux]]:
    """`loss_fn(params, batch, rng)`, a teacher's parameters bound (None: none)."""
    if teacher_params is None:
      return self.loss_fn
    return functools.partial(self.loss_fn, teacher_params=teacher_params)


class Distillation(NamedTuple):
  """The teacher term of a distilled objective (config.distill)."""

  model: models.Model  # The teacher; frozen, run with train=False.
  alpha: float  # Weight of the term; 1 - alpha weighs the data loss.
  temperature: float  # T: both distributions are softmax(logits / T).
  # The teacher's carry lives beside the student's in `rows['carry']` (a pair), kept from
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


class Reduction(NamedTuple):
  """An entry of OBJECTIVES: how an objective scales a batch's summed token losses."""

  # `denominator(rows)`: what the summed token losses of the step's batch are divided by.
  denominator: Callable[[dict], Any]
  # `row_scale(seq_len)`: what one full row's summed token losses are divided by to give
  # its share of the objective (DP-SGD clips each row's gradient at that scale).
  row_scale: Callable[[int], float]


# config.optim.loss -> its reduction.
OBJECTIVES: dict[str, Reduction] = {
  # The mean loss per token.
  'token_mean': Reduction(denominator=lambda rows: jnp.sum(rows['weights']), row_scale=float),
  # Summed over time, averaged over rows: Zaremba et al.'s scale, for which
  # SGD at rate 1 is right.
  'sequence_sum': Reduction(
    denominator=lambda rows: rows['inputs'].shape[0], row_scale=lambda seq_len: 1.0
  ),
}


def reduction(name: str) -> Reduction:
  """OBJECTIVES[name]; a ValueError listing the valid names for another."""
  if name not in OBJECTIVES:
    raise ValueError(
      f'Unknown objective {name!r} (config key optim.loss); valid names: {sorted(OBJECTIVES)}.'
    )
  return OBJECTIVES[name]


def make_objective(
  model: models.Model, name: str, distill: Distillation | None = None, *, z_loss: float = 0.0
) -> Objective:
  """The objective `name` (a key of OBJECTIVES) for `model`, with `distill`'s
  term when given and the z-loss at coefficient `z_loss` (0: none; module
  docstring)."""
  denominator = reduction(name).denominator

  def with_z_loss(value_sum, sums: metrics.CrossEntropySums):
    # A Python test, not a multiplication by 0: off, the graph is today's.
    return value_sum + z_loss * sums.log_z_squared if z_loss else value_sum

  def loss_fn(params, batch: Batch, rng: jax.Array):
    sums, _, new_carry = forward_sums(model, params, batch.rows, train=True, rng=rng)
    aux = Aux(
      carry=new_carry,
      distill_kl_sum=None,
      loss_sum=sums.loss,
      weight_sum=sums.weight,
      log_z_sum=sums.log_z,
    )
    return with_z_loss(sums.loss, sums) / batch.denominator, aux

  if distill is None:
    return Objective(loss_fn=loss_fn, denominator=denominator)
  alpha, temperature = distill.alpha, distill.temperature

  def distilled_loss_fn(params, batch: Batch, rng: jax.Array, teacher_params):
    rows = batch.rows
    if distill.carried:
      carry, teacher_carry = rows['carry']
    else:
      carry, teacher_carry = rows['carry'], distill.model.init_carry(rows['inputs'].shape[0])
    sums, logits_BxTxV, new_carry = forward_sums(
      model, params, dict(rows, carry=carry), train=True, rng=rng
    )
    _, _, teacher_logits_BxTxV, new_teacher_carry = forward(
      distill.model, teacher_params, dict(rows, carry=teacher_carry), train=False, rng=None
    )
    kl_sum = distill_kl_sum(
      logits_BxTxV, jax.lax.stop_gradient(teacher_logits_BxTxV), rows['weights'], temperature
    )
    value = (1 - alpha) * sums.loss + alpha * temperature**2 * kl_sum
    return with_z_loss(value, sums) / batch.denominator, Aux(
      carry=(new_carry, new_teacher_carry) if distill.carried else new_carry,
      distill_kl_sum=kl_sum,
      loss_sum=sums.loss,
      weight_sum=sums.weight,
      log_z_sum=sums.log_z,
    )

  return Objective(loss_fn=distilled_loss_fn, denominator=denominator)
