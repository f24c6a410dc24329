"""Optimizers and learning-rate schedules built from the config.

`OPTIMIZERS` is the registry of `optim.name`, each entry its update rule and
its schedule (docs/optimizers.md says what each computes and its source):
  * `sgd`: constant rate for `decay_after_epochs` epochs, then multiplied by
    `decay_factor` once per epoch (Zaremba et al. 2014).
  * `adamw`: linear warmup to the peak, cosine decay to `min_learning_rate`
    (nanoGPT / GPT-2), weight decay on matrices only, applied as
    `weight_decay_mode` says (`WEIGHT_DECAY_MODES`, docs/stability.md).
  * `lion`, `adafactor`, `muon`: optax's rules (research/optimizers.py) on
    adamw's schedule, with adamw's weight decay.
  * `schedule_free_adamw`: optax.contrib's, at a constant rate after the
    warmup; evaluation reads its averaged parameters (`eval_params`).
An optimizer's own keys are the sub-config of config.optim its entry names
(`Optimizer.subconfig`). `make_optimizer` chains around any rule the same way:
the global gradient norm clipped first when `grad_clip_norm > 0`, then
`optim.frozen` and `optim.hold_zeros`. A new optimizer is one entry (use
optax's rule).

A model whose parametrization gives parameters their own learning rates
(`model.parametrization='mup'`, research/models/mup.py) hands its
`rate_multipliers` to `make_optimizer`: each parameter's update is multiplied
by its factor where the learning rate acts (`Optimizer.rated_rule`), so
schedules, clipping, `frozen`, `hold_zeros` and the weight-decay modes work
as they do without it; without multipliers the chain is built exactly as
before (no extra step, not even a multiplication by 1).
"""

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from research import models
from research import optimizers


class Optimizer(NamedTuple):
  """An entry of OPTIMIZERS."""

  # `rule(optim_config, schedule)`: the optax update rule, given the learning rate schedule.
  rule: Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]
  # `schedule(optim_config, num_train_steps=, steps_per_epoch=)`: the learning rate by step.
  schedule: Callable[..., optax.Schedule]
  # Its schedule ends at optim.min_learning_rate (config_checks refuses a minimum above the peak).
  ends_at_min_learning_rate: bool
  # It reads optim.weight_decay (through `weight_decay_rate`), so a weight-decay mode that
  # `changes_decay` means something for it; one that does not is refused such a mode.
  decays_weights: bool = False
  # `rated_rule(optim_config, schedule, scale)`: the rule with `scale` (each parameter's update
  # times its learning-rate factor, `scale_by_rates`) where its learning rate acts; None: it
  # takes no per-parameter rates (the parametrizations' factors are Adam's: Yang et al. 2022,
  # Table 3), and a parametrization with rates is refused for it.
  rated_rule: Callable[..., optax.GradientTransformation] | None = None
  # The sub-config of config.optim holding its own keys (configs/common.py), None for none; a
  # value changed there while another optimizer is chosen is refused (research/config_checks.py).
  subconfig: str | None = None
  # True: `rule(optim_config, schedule, param_roles)` also takes the model family's parameter
  # roles (`Model.param_roles`), and a family without them is refused.
  reads_param_roles: bool = False
  # `eval_params(opt_state, params)`: the parameters evaluation reads (schedule-free's average);
  # None: the trained parameters themselves.
  eval_params: Callable[[Any, Any], Any] | None = None


class WeightDecayMode(NamedTuple):
  """An entry of WEIGHT_DECAY_MODES."""

  # `rate(weight_decay, peak_learning_rate)`: the coefficient handed to optax.adamw, which
  # multiplies it by the schedule's lr_t and the parameter: theta -= lr_t * rate * theta.
  rate: Callable[[float, float], float]
  # False for optax's own decay, which every optimizer runs with (sgd: none, as always).
  changes_decay: bool
  # Whether a parameter's learning-rate factor m (model.parametrization) also scales its decay:
  # coupled decay is the parameter's rate times lambda (m * lr_t * lambda); independent decay
  # is s_t * lambda whatever the rate (Wortsman et al. 2024, section 3.2.2, where the rate
  # multiplies only Adam's direction).
  rate_scales_decay: bool


# config.optim.weight_decay_mode -> its entry; lambda = optim.weight_decay, eta = the peak
# optim.learning_rate, lr_t the schedule's rate at step t, s_t = lr_t / eta its shape.
WEIGHT_DECAY_MODES: dict[str, WeightDecayMode] = {
  # theta <- theta - lr_t * adam_t - lr_t * lambda * theta: optax.adamw as it is.
  'coupled': WeightDecayMode(
    rate=lambda weight_decay, peak: weight_decay, changes_decay=False, rate_scales_decay=True
  ),
  # theta <- theta - lr_t * adam_t - s_t * lambda * theta (Wortsman et al. 2024, section 3.2.2,
  # after Loshchilov and Hutter 2019): the schedule's shape, not the peak rate, scales the decay.
  'independent': WeightDecayMode(
    rate=lambda weight_decay, peak: weight_decay / peak, changes_decay=True, rate_scales_decay=False
  ),
}


def validate(optim_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an unknown optimizer name or weight-decay mode, or a
  mode that changes the decay of an optimizer without one (objectives:
  research/losses.py)."""
  c = optim_config
  if c.name not in OPTIMIZERS:
    raise ValueError(
      f'Unknown optimizer {c.name!r} (config key optim.name); valid names: {sorted(OPTIMIZERS)}.'
    )
  if c.weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(
      f'Unknown weight decay mode {c.weight_decay_mode!r} (config key optim.weight_decay_mode); '
      f'valid names: {sorted(WEIGHT_DECAY_MODES)}.'
    )
  if (
    WEIGHT_DECAY_MODES[c.weight_decay_mode].changes_decay and not OPTIMIZERS[c.name].decays_weights
  ):
    plain = sorted(name for name, m in WEIGHT_DECAY_MODES.items() if not m.changes_decay)
    with_decay = sorted(name for name, o in OPTIMIZERS.items() if o.decays_weights)
    raise ValueError(
      f'config.optim.weight_decay_mode={c.weight_decay_mode!r} changes how weight decay is '
      f'applied, but optim.name={c.name!r} has no weight decay; set '
      f'--config.optim.weight_decay_mode to one of {plain}, or --config.optim.name to an '
      f'optimizer with weight decay: {with_decay}.'
    )


def weight_decay_rate(optim_config: ml_collections.ConfigDict) -> float:
  """The weight decay handed to optax, which multiplies it by the schedule's
  rate: optim.weight_decay as optim.weight_decay_mode says (WEIGHT_DECAY_MODES)."""
  c = optim_config
  return WEIGHT_DECAY_MODES[c.weight_decay_mode].rate(c.weight_decay, c.learning_rate)


def epoch_decay_schedule(
  learning_rate: float, steps_per_epoch: int, decay_after_epochs: int, decay_factor: float
) -> optax.Schedule:
  """Zaremba's schedule: lr * factor ** max(0, epoch + 1 - decay_after_epochs).

  Epochs count from 0, so with decay_after_epochs=4 epochs 0..3 run at the
  full rate and epoch 4 at lr * factor.
  """

  def schedule(step):
    epoch = jnp.asarray(step) // steps_per_epoch
    exponent = jnp.maximum(0, epoch + 1 - decay_after_epochs)
    return learning_rate * jnp.power(decay_factor, exponent.astype(jnp.float32))

  return schedule


def _epoch_decay(c: ml_collections.ConfigDict, *, num_train_steps: int, steps_per_epoch: int):
  del num_train_steps
  return epoch_decay_schedule(
    c.learning_rate, steps_per_epoch, c.decay_after_epochs, c.decay_factor
  )


def _warmup_cosine(c: ml_collections.ConfigDict, *, num_train_steps: int, steps_per_epoch: int):
  del steps_per_epoch
  decay_steps = c.decay_steps if c.decay_steps > 0 else num_train_steps
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=c.learning_rate,
    warmup_steps=c.warmup_steps,
    decay_steps=max(decay_steps, c.warmup_steps + 1),
    end_value=c.min_learning_rate,
  )


def _warmup_constant(c: ml_collections.ConfigDict, *, num_train_steps: int, steps_per_epoch: int):
  """Linear warmup over optim.warmup_steps, then the peak for good (no decay)."""
  del num_train_steps, steps_per_epoch
  if c.warmup_steps == 0:  # optax's warmup schedule of 0 steps stays at its initial 0.
    return optax.constant_schedule(c.learning_rate)
  return optax.warmup_constant_schedule(
    init_value=0.0, peak_value=c.learning_rate, warmup_steps=c.warmup_steps
  )


def _rated_adamw(
  c: ml_collections.ConfigDict, schedule: optax.Schedule, scale: optax.GradientTransformation
) -> optax.GradientTransformation:
  """optax.adamw's own chain (scale_by_adam, add_decayed_weights,
  scale_by_learning_rate, as optax defines it) with `scale` after Adam's
  direction: before the decay is added where the weight-decay mode's decay
  ignores the rate (independent), after it where the rate scales it too
  (coupled). With every factor 1 it computes what optax.adamw does."""
  decay = optax.add_decayed_weights(weight_decay_rate(c), _matrices_only)
  rated = (
    (decay, scale) if WEIGHT_DECAY_MODES[c.weight_decay_mode].rate_scales_decay else (scale, decay)
  )
  return optax.chain(
    optax.scale_by_adam(b1=c.b1, b2=c.b2), *rated, optax.scale_by_learning_rate(schedule)
  )


# config.optim.name -> its entry.
OPTIMIZERS: dict[str, Optimizer] = {
  'adamw': Optimizer(
    rule=lambda c, schedule: optax.adamw(
      schedule, b1=c.b1, b2=c.b2, weight_decay=weight_decay_rate(c), mask=_matrices_only
    ),
    schedule=_warmup_cosine,
    ends_at_min_learning_rate=True,
    decays_weights=True,
    rated_rule=_rated_adamw,
  ),
  'sgd': Optimizer(
    rule=lambda c, schedule: optax.sgd(schedule),
    schedule=_epoch_decay,
    ends_at_min_learning_rate=False,
  ),
  # Chen et al. 2023; optim.lion.
  'lion': Optimizer(
    rule=lambda c, schedule: optimizers.lion(c, schedule, weight_decay_rate(c), _matrices_only),
    schedule=_warmup_cosine,
    ends_at_min_learning_rate=True,
    decays_weights=True,
    subconfig='lion',
  ),
  # Shazeer and Stern 2018; optim.adafactor.
  'adafactor': Optimizer(
    rule=lambda c, schedule: optimizers.adafactor(
      c, schedule, weight_decay_rate(c), _matrices_only
    ),
    schedule=_warmup_cosine,
    ends_at_min_learning_rate=True,
    decays_weights=True,
    subconfig='adafactor',
  ),
  # Jordan et al. 2024; optim.muon, and optim.b1 / b2 for its AdamW half.
  'muon': Optimizer(
    rule=lambda c, schedule, roles: optimizers.muon(
      c, schedule, weight_decay_rate(c), _matrices_only, roles
    ),
    schedule=_warmup_cosine,
    ends_at_min_learning_rate=True,
    decays_weights=True,
    subconfig='muon',
    reads_param_roles=True,
  ),
  # Defazio et al. 2024; optim.schedule_free_adamw. No decay: optim.min_learning_rate unread.
  'schedule_free_adamw': Optimizer(
    rule=lambda c, schedule: optimizers.schedule_free_adamw(
      c, schedule, weight_decay_rate(c), _matrices_only
    ),
    schedule=_warmup_constant,
    ends_at_min_learning_rate=False,
    decays_weights=True,
    subconfig='schedule_free_adamw',
    eval_params=optimizers.schedule_free_eval_params,
  ),
}


def make_schedule(
  optim_config: ml_collections.ConfigDict, *, num_train_steps: int, steps_per_epoch: int
) -> optax.Schedule:
  """Returns the learning rate as a function of the step."""
  validate(optim_config)
  return OPTIMIZERS[optim_config.name].schedule(
    optim_config, num_train_steps=num_train_steps, steps_per_epoch=steps_per_epoch
  )


def _matrices_only(params):
  """Weight-decay mask: decay kernels and embeddings, not biases or scales.

  Weights stacked by scan_layers (under `blocks`) have one more axis: their
  biases and LayerNorm scales are LxD, still not decayed.
  """
  return jax.tree_util.tree_map_with_path(
    lambda path, p: p.ndim - models.layer_axes(path) >= 2, params
  )


def valid_pattern(value) -> bool:
  """A string that compiles as a regular expression."""
  if not isinstance(value, str):
    return False
  try:
    re.compile(value)
  except re.error:
    return False
  return True


def param_path(path) -> str:
  """'block_0/mlp/fc/kernel': a parameter's path as optim.frozen reads it."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def frozen_labels(pattern: str, params) -> Any:
  """'frozen' or 'trained' for every leaf of `params`, by `pattern`."""
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
    lambda path, _: 'frozen' if regex.search(param_path(path)) else 'trained', params
  )


def check_frozen(pattern: str, params) -> None:
  """Raises ValueError naming optim.frozen when it freezes nothing or all."""
  labels = jax.tree.leaves(frozen_labels(pattern, params))
  paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if 'frozen' not in labels:
    raise ValueError(
      f'config.optim.frozen={pattern!r} matches no parameter; the paths are {paths}.'
    )
  if 'trained' not in labels:
    raise ValueError(
      f'config.optim.frozen={pattern!r} freezes every parameter, so nothing would train; narrow it.'
    )


def check_takes_rates(optim_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError when optim.name takes no per-parameter learning rates,
  which the model's parametrization asks for."""
  name = optim_config.name
  if OPTIMIZERS[name].rated_rule is None:
    rated = sorted(n for n, o in OPTIMIZERS.items() if o.rated_rule is not None)
    raise ValueError(
      f"config.optim.name={name!r} takes no per-parameter learning rates, but the model's "
      "parametrization (config.model.parametrization) gives some (its factors are Adam's); "
      f"set --config.optim.name to one of {rated}, or --config.model.parametrization='standard'."
    )


def make_optimizer(
  optim_config: ml_collections.ConfigDict,
  schedule: Callable,
  rate_multipliers: Callable[[Any], Any] | None = None,
  param_roles: tuple[tuple[str, str], ...] = (),
) -> optax.GradientTransformation:
  """Returns the optax chain: clipping, then the update rule; with
  optim.frozen, the matching parameters get an update of exactly zero and
  the clipping norm is over the others' gradients.

  `rate_multipliers` (the model's, `Model.rate_multipliers`): `tree -> tree`
  of each parameter's learning-rate factor; None (the default) builds the
  rule exactly as it always was. `param_roles` (`Model.param_roles`): what
  each parameter is, for a rule that reads it (muon).
  """
  c = optim_config
  validate(c)
  entry = OPTIMIZERS[c.name]
  if entry.reads_param_roles and not param_roles:
    others = sorted(n for n, o in OPTIMIZERS.items() if not o.reads_param_roles)
    raise ValueError(
      f'config.optim.name={c.name!r} asks the model family which parameters are hidden weight '
      'matrices (Model.param_roles, research/models/contract.py), and this family declares '
      f'none; set --config.optim.name to one of {others}, or give the family its table.'
    )
  if rate_multipliers is None:
    rule = (
      entry.rule(c, schedule, param_roles) if entry.reads_param_roles else entry.rule(c, schedule)
    )
  else:
    check_takes_rates(c)
    rule = OPTIMIZERS[c.name].rated_rule(c, schedule, scale_by_rates(rate_multipliers))
  if c.grad_clip_norm > 0:
    rule = optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), rule)
  if c.frozen:
    # Zero the frozen gradients before (clipping sees the trained ones alone)
    # and the frozen updates after (weight decay would move them). The
    # optimizer state keeps the parameters' structure, so it shards as they do.
    zero = _zero_frozen(c.frozen)
    rule = optax.chain(zero, rule, zero)
  if c.hold_zeros:
    # The same before and after, for the pruned entries of each matrix.
    return optax.chain(_hold_zeros(), rule, _hold_zeros())
  return rule


def eval_params(optim_config: ml_collections.ConfigDict, opt_state: Any, params: Any) -> Any:
  """The parameters that evaluation, sampling, audits and the model card read:
  `params` themselves, except for an optimizer whose entry averages
  (`Optimizer.eval_params`: schedule-free's x). Leaves frozen by optim.frozen
  are the trained ones, as they never moved (schedule-free's z still drifts
  with the decay there)."""
  average = OPTIMIZERS[optim_config.name].eval_params
  if average is None:
    return params
  averaged = average(opt_state, params)
  if not optim_config.frozen:
    return averaged
  labels = frozen_labels(optim_config.frozen, params)
  return jax.tree.map(lambda a, p, l: p if l == 'frozen' else a, averaged, params, labels)


class HoldZerosState(NamedTuple):
  keep: Any  # Per parameter, a bool array of its shape: False where held at zero.


def _hold_zeros() -> optax.GradientTransformation:
  """optim.hold_zeros: the entries of weight matrices that are exactly zero
  in the parameters the state is initialised with (the pruned model of
  config.init_from) get an update of exactly zero, so they stay zero. The
  mask is optimizer state: checkpointed, so a resumed run holds the same
  entries."""

  def init(params):
    matrices = _matrices_only(params)
    return HoldZerosState(
      jax.tree.map(lambda p, m: p != 0 if m else jnp.ones(p.shape, bool), params, matrices)
    )

  def update(updates, state, params=None):
    del params
    held = jax.tree.map(lambda u, keep: jnp.where(keep, u, jnp.zeros_like(u)), updates, state.keep)
    return held, state

  return optax.GradientTransformation(init, update)


def scale_by_rates(rate_multipliers: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Multiplies each leaf of the updates by its factor from
  `rate_multipliers(updates)` (Python floats, known when traced); a leaf
  whose factor is 1 passes unchanged."""

  def update(updates, state, params=None):
    del params
    factors = rate_multipliers(updates)
    scaled = jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates, factors)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _zero_frozen(pattern: str) -> optax.GradientTransformation:
  """Sets the leaves whose path matches `pattern` to exactly zero."""

  def update(updates, state, params=None):
    del params
    labels = frozen_labels(pattern, updates)
    zeroed = jax.tree.map(
      lambda u, label: jnp.zeros_like(u) if label == 'frozen' else u, updates, labels
    )
    return zeroed, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
