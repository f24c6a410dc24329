"""Parametrizations: how a model's initial scales and learning rates follow its width.

`PARAMETRIZATIONS` is the registry of `model.parametrization`. An entry says,
for each role a parameter can play, a factor on its initial values and one on
its learning rate, as functions of the width ratio r = d_model /
`model.mup_base_width` (the width the learning rate was tuned at):

  * `standard`: no factor at all; the model and optimizer as they always were.
  * `mup`: the μParam (simple) of Wortsman et al. 2024 (ICLR 2024, "Small-scale
    proxies for large-scale Transformer training instabilities", section 3.2.4):
    each linear layer's Adam learning rate times base-fan-in / fan-in, with
    initial standard deviations that fall as 1/sqrt(fan-in) (their section 2.1
    baseline); as Yang et al. 2022 (Tensor Programs V, Table 3, Adam) prescribe
    for hidden weights. docs/stability.md says which rules, and which of their
    μParam (full) are not implemented.

A family says which role each of its parameters plays with a table of
(path regex, role) pairs, first match wins and no catch-all (like the
partition rules): a parameter of a new option needs its row, or building the
model fails naming it. The roles (`ROLES`), in Yang et al. 2022's terms:

  * `embedding`: a table read by row (token embeddings, learned positions):
    input weights, fan-in the vocabulary or the context, not the width.
  * `hidden`: a matrix from a width to a width (attention and MLP kernels).
  * `output`: the head, width to vocabulary (output weights).
  * `vector`: gains and biases (Table 3 puts biases with the input weights).

This module imports no family; a family calls `check`, `scale_init` and
`rate_multipliers` with its own config and table.
"""

import math
import re
from typing import Any, Callable, NamedTuple, Protocol

import jax

from research import sharding

ROLES = ('embedding', 'hidden', 'output', 'vector')


class Parametrization(NamedTuple):
  """An entry of PARAMETRIZATIONS.

  Each maps a role to f(r), r = d_model / mup_base_width; a role not listed
  keeps the standard value, and its parameters are never touched.
  """

  # The factor on the standard initial values (the same draw, multiplied).
  init: dict[str, Callable[[float], float]]
  # The factor on the learning rate, applied to the optimizer's update where
  # the rate acts (research/optim.py: Adam's direction, and coupled decay).
  rates: dict[str, Callable[[float], float]]


def _inverse_sqrt(r: float) -> float:
  return 1.0 / math.sqrt(r)


def _inverse(r: float) -> float:
  return 1.0 / r


# config.model.parametrization -> its entry.
PARAMETRIZATIONS: dict[str, Parametrization] = {
  'standard': Parametrization(init={}, rates={}),
  # Wortsman et al. 2024, section 3.2.4, μParam (simple): every linear layer's
  # rate times base-fan-in / fan-in = 1 / r (hidden kernels and the head; the
  # embedding is a lookup, not a linear layer). Their baseline (section 2.1)
  # initialises those layers with std 1 / sqrt(fan-in), so relative to the base
  # width their std is times 1 / sqrt(r); here that factor multiplies this
  # code's standard init, which equals it at r = 1. Yang et al. 2022, Table 3
  # (Adam): hidden weights init variance 1 / fan-in and rate 1 / fan-in.
  'mup': Parametrization(
    init={'hidden': _inverse_sqrt, 'output': _inverse_sqrt},
    rates={'hidden': _inverse, 'output': _inverse},
  ),
}


class MupConfig(Protocol):
  """The fields of a family's config that a parametrization reads."""

  parametrization: str  # A name in PARAMETRIZATIONS.
  mup_base_width: int  # The width the rates were tuned at; 0 = unset.
  d_model: int
  tie_embeddings: bool


def width_relative(name: str) -> bool:
  """Whether the parametrization `name` changes anything with the width."""
  entry = PARAMETRIZATIONS[name]
  return bool(entry.init or entry.rates)


def width_ratio(config: MupConfig) -> float:
  """r = d_model / mup_base_width (1 where the parametrization ignores it)."""
  if not width_relative(config.parametrization):
    return 1.0
  return config.d_model / config.mup_base_width


def check(config: MupConfig) -> None:
  """Raises ValueError for a width-relative parametrization without a base
  width, or with a tied head (one matrix cannot follow both the embedding's
  rules and the output layer's)."""
  name = config.parametrization
  if not width_relative(name):
    return
  if config.mup_base_width < 1:
    raise ValueError(
      f'config.model.parametrization={name!r} scales initial values and learning rates with '
      f'd_model / model.mup_base_width, but mup_base_width={config.mup_base_width}; set '
      '--config.model.mup_base_width to the width the learning rate was tuned at (e.g. the '
      "smallest model's d_model)."
    )
  entry = PARAMETRIZATIONS[name]
  differ = any(
    table.get('embedding') is not table.get('output') for table in (entry.init, entry.rates)
  )
  if config.tie_embeddings and differ:
    raise ValueError(
      f'config.model.parametrization={name!r} gives the embedding and the output layer '
      'different initial scales and learning rates, but model.tie_embeddings=True makes them '
      'one matrix; set --config.model.tie_embeddings=False (as Wortsman et al. 2024, section '
      "2.1) or --config.model.parametrization='standard'."
    )


def role_of(path: str, roles: tuple[tuple[str, str], ...]) -> str:
  """The role of the parameter at `path` ('block_0/attn/qkv/kernel'): the
  first row of `roles` whose regex it contains."""
  for pattern, role in roles:
    if re.search(pattern, path):
      return role
  raise ValueError(
    f"Parameter {path!r} has no row in its model family's parameter roles "
    f'(research/models/mup.py ROLES: {list(ROLES)}); add one next to its partition rule.'
  )


def _factors(table: dict, ratio: float, roles, tree: Any) -> Any:
  """Per leaf of `tree`, table[role](ratio) for its role, 1.0 for a role not listed."""

  def factor(path, _):
    role = role_of(sharding.param_path(path), roles)
    return table[role](ratio) if role in table else 1.0

  return jax.tree_util.tree_map_with_path(factor, tree)


def scale_init(config: MupConfig, roles, params: Any) -> Any:
  """`params` (the standard initialisation) with each leaf times its init
  factor; `params` itself where the parametrization has none. A leaf whose
  factor is 1 is left as it is (not multiplied)."""
  entry = PARAMETRIZATIONS[config.parametrization]
  if not entry.init:
    return params
  factors = _factors(entry.init, width_ratio(config), roles, params)
  return jax.tree.map(lambda p, f: p if f == 1.0 else p * f, params, factors)


def rate_multipliers(config: MupConfig, roles) -> Callable[[Any], Any] | None:
  """`multipliers(tree) -> tree` of each leaf's learning-rate factor (a
  Python float, 1.0 where the rate is the optimizer's), or None when the
  parametrization scales no rate: the optimizer is then built exactly as
  without one."""
  entry = PARAMETRIZATIONS[config.parametrization]
  if not entry.rates:
    return None
  ratio = width_ratio(config)
  return lambda tree: _factors(entry.rates, ratio, roles, tree)
