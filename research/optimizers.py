"""The update rules of Lion, Adafactor, Muon and schedule-free AdamW, each optax's.

research/optim.py's `OPTIMIZERS` is the one registry of `optim.name`; its
entries for these four call the functions here, which build optax's or
optax.contrib's transformation from `config.optim` (`c`): the optimizer's own
keys from its sub-config (`c.lion`, `c.adafactor`, `c.muon`,
`c.schedule_free_adamw`; configs/common.py), the learning-rate `schedule`, and
`decay`, the weight-decay coefficient that optax multiplies by the schedule's
rate (research/optim.py `weight_decay_rate`: optim.weight_decay as
optim.weight_decay_mode says), applied where `mask(params)` is True (matrices).
docs/optimizers.md says what each computes and where it comes from. Nothing
here re-implements optax: where optax's alias takes no weight-decay mask
(Muon's AdamW half, schedule-free AdamW), the alias is split by the mask, or
its three-transformation chain is written with the mask added.
"""

from typing import Any, Callable

import jax
import ml_collections
import optax
from optax import contrib

from research import models
from research import sharding
from research.models import mup

Mask = Callable[[Any], Any]

# The parameter roles (research/models/mup.py ROLES; a family's `Model.param_roles`) whose
# matrices Muon orthogonalises: weights from a width to a width (Jordan et al. 2024). The
# embedding, the head ('output') and gains and biases ('vector') take Muon's AdamW half.
MUON_ROLES = ('hidden',)


def lion(
  c: ml_collections.ConfigDict, schedule: optax.Schedule, decay: float, mask: Mask
) -> optax.GradientTransformation:
  """optax.lion (Chen et al. 2023, Algorithm 2): u = -lr_t (sign(b1 m + (1 - b1) g) +
  decay * theta), m <- b2 m + (1 - b2) g; its decay is multiplied by lr_t."""
  return optax.lion(schedule, b1=c.lion.b1, b2=c.lion.b2, weight_decay=decay, mask=mask)


def adafactor(
  c: ml_collections.ConfigDict, schedule: optax.Schedule, decay: float, mask: Mask
) -> optax.GradientTransformation:
  """optax.adafactor (Shazeer and Stern 2018) with optim.adafactor's keys.

  optax adds `weight_decay_rate * theta` after the learning rate, not
  multiplied by it; handing it the schedule lr_t * decay makes the decay
  lr_t * decay * theta, as for every other optimizer here.
  """
  a = c.adafactor
  return optax.adafactor(
    schedule,
    min_dim_size_to_factor=a.min_dim_size_to_factor,
    decay_rate=a.decay_rate,
    multiply_by_parameter_scale=a.multiply_by_parameter_scale,
    clipping_threshold=a.clipping_threshold or None,  # 0: off (optax's None).
    momentum=a.momentum or None,  # 0: no first moment (optax's None, the paper's beta1 = 0).
    weight_decay_rate=lambda count: schedule(count) * decay,
    weight_decay_mask=mask,
  )


def muon_dimension_numbers(param_roles: tuple[tuple[str, str], ...]) -> Callable[[Any], Any]:
  """`params -> tree` of optax's MuonDimensionNumbers for each parameter whose
  role (first match in `param_roles`) is in MUON_ROLES, None for the others.

  A matrix x @ W reduces over W's first axis: (reduction 0, output 1). One
  stacked by scan_layers has a leading layer axis, which optax treats as a
  batch axis (each layer's matrix orthogonalised alone): (1, 2).

  Raises:
    ValueError: a parameter has no role, or a Muon one is not a matrix.
  """

  def one(path, leaf):
    name = sharding.param_path(path)
    if mup.role_of(name, param_roles) not in MUON_ROLES:
      return None
    layers = models.layer_axes(path)
    if leaf.ndim - layers != 2:
      raise ValueError(
        f'Parameter {name!r} of shape {tuple(leaf.shape)} has a role Muon orthogonalises '
        f'({list(MUON_ROLES)}) but is not a matrix; give it another role in its family '
        'table (Model.param_roles).'
      )
    return contrib.MuonDimensionNumbers(reduction_axis=layers, output_axis=layers + 1)

  return lambda params: jax.tree_util.tree_map_with_path(one, params)


def muon(
  c: ml_collections.ConfigDict,
  schedule: optax.Schedule,
  decay: float,
  mask: Mask,
  param_roles: tuple[tuple[str, str], ...],
) -> optax.GradientTransformation:
  """optax.contrib.muon (Jordan et al. 2024) with optim.muon's keys: Newton-Schulz
  orthogonalised Nesterov momentum on the family's hidden matrices, optax's
  AdamW half (b1 = optim.b1, b2 = optim.b2) on everything else, both at the
  schedule's rate.

  optax.contrib.muon decays every parameter of its AdamW half by
  `adam_weight_decay` (it takes no mask), gains and biases included; so the
  parameters are split by `mask` first, the matrices into a muon decaying
  both halves by `decay` and the rest into one decaying nothing.
  """
  m = c.muon
  dimension_numbers = muon_dimension_numbers(param_roles)

  def rule(rate: float) -> optax.GradientTransformation:
    return contrib.muon(
      schedule,
      ns_steps=m.ns_steps,
      beta=m.momentum,
      weight_decay=rate,
      nesterov=m.nesterov,
      adam_b1=c.b1,
      adam_b2=c.b2,
      adam_weight_decay=rate,
      muon_weight_dimension_numbers=dimension_numbers,
      consistent_rms=m.consistent_rms or None,  # 0: Jordan's sqrt(max(1, fan_out / fan_in)).
    )

  def labels(params):
    return jax.tree.map(lambda decayed: 'decayed' if decayed else 'not_decayed', mask(params))

  return optax.partition({'decayed': rule(decay), 'not_decayed': rule(0.0)}, labels)


def schedule_free_adamw(
  c: ml_collections.ConfigDict, schedule: optax.Schedule, decay: float, mask: Mask
) -> optax.GradientTransformation:
  """optax.contrib.schedule_free (Defazio et al. 2024) around the base optimizer
  of optax.contrib.schedule_free_adamw, whose chain (RMS scaling without
  momentum, decay, learning rate) is written here because that alias decays
  every parameter: its decay is masked to the matrices. The parameters it
  trains are y; evaluation reads x (`schedule_free_eval_params`)."""
  s = c.schedule_free_adamw
  base = optax.chain(
    optax.scale_by_rms(decay=s.b2, eps=1e-8, eps_in_sqrt=False, bias_correction=True),
    optax.add_decayed_weights(decay, mask),
    optax.scale_by_learning_rate(schedule),
  )
  return contrib.schedule_free(base, schedule, b1=s.b1, weight_lr_power=s.weight_lr_power)


def _is_schedule_free(node) -> bool:
  return isinstance(node, contrib.ScheduleFreeState)


def schedule_free_eval_params(opt_state: Any, params: Any) -> Any:
  """x = (y - (1 - b1) z) / b1, optax.contrib.schedule_free_eval_params, with
  the one ScheduleFreeState found wherever the chain (clipping, optim.frozen,
  optim.hold_zeros) nests it in `opt_state`."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_free) if _is_schedule_free(s)]
  if len(found) != 1:
    raise ValueError(
      f'The optimizer state holds {len(found)} schedule-free states, not one; it was not '
      "made by optim.name='schedule_free_adamw'."
    )
  return contrib.schedule_free_eval_params(found[0], params)
