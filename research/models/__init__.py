"""Model registry: every family by name, as a `Family` that builds a `Model`.

A family module (`transformer.py`, `lstm.py`) holds everything about its
models: a frozen `Config` built from `config.model` (each field with the rule
its value must keep, checked when it is built), the options it chooses from
(small registries of named entries), `build(config, vocab_size, seq_len) ->
Model`, its partition rules and its FLOPs per token. The `Model` contract and
the helpers families share are contract.py, which imports no family; the
families import it, never this registry. Code outside `models/` asks the
`Model`, never a parameter name, and reaches the contract's names here
(`models.Model`, `models.reset_carry`, ...). Callers never touch `flax.linen`
modules; they hold plain-dict parameters and an explicit carry.

A new family is its module, one line of `MODELS`, its defaults in
configs/common.py (`{name}_model()`) and its BUILD entry.

Usage:
  model = get_model(config.model, vocab_size, seq_len)
  params = model.init(key)
  carry = model.init_carry(batch_size)
  logits_BxTxV, carry = model.apply(params, carry, inputs_BxT,
                                    train=True, rng=dropout_key)
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import ml_collections

from research import rules
from research.models import lstm
from research.models import transformer
from research.models.contract import STACKED_BLOCKS as STACKED_BLOCKS
from research.models.contract import Model as Model
from research.models.contract import dropout_rngs as dropout_rngs
from research.models.contract import layer_axes as layer_axes
from research.models.contract import matmul_params as matmul_params
from research.models.contract import reset_carry as reset_carry


def any_context(config: Any, trained: int, asked: int, key: str) -> None:
  """`Family.check_context` of a family that scores contexts of any length."""
  del config, trained, asked, key


class Family(NamedTuple):
  """A model family: its config object, how to build it, and its hooks.

  Attributes:
    config: a frozen dataclass whose fields are the family's `config.model`
      keys (all but `name`), each with its rule (research/rules.py); it checks
      them when it is built, and the relations between them.
    build: `build(config, vocab_size, seq_len) -> Model`.
    check_context: `check_context(config, trained, asked, key)` raises a
      one-line ValueError naming `config.KEY` when a model trained on
      `trained` positions cannot score contexts of `asked` (research/
      config_checks.py calls it for config.eval's contexts).
  """

  config: type
  build: Callable[[Any, int, int], Model]
  check_context: Callable[[Any, int, int, str], None] = any_context


MODELS = {
  'transformer': Family(transformer.Config, transformer.build, transformer.check_context),
  'lstm': Family(lstm.Config, lstm.build),
}
_NAME_RULE = rules.registered(MODELS, 'model')


def config_rules(name: str) -> dict[str, rules.Rule]:
  """{'model.KEY': rule} of every `config.model` key of family `name`."""
  return {'model.name': _NAME_RULE, **rules.field_rules(MODELS[name].config, 'model')}


def get_config(model_config: ml_collections.ConfigDict) -> Any:
  """The family's config object of `config.model`, its values checked.

  Raises:
    ValueError: naming the first key whose value cannot mean anything, an
      unknown model name (listing the known ones) or a key the family does
      not have (or lacks).
  """
  rules.check('model.name', model_config.name, _NAME_RULE)
  family = MODELS[model_config.name]
  fields = [f.name for f in dataclasses.fields(family.config)]
  keys = set(model_config.keys()) - {'name'}
  unknown, missing = sorted(keys - set(fields)), sorted(set(fields) - keys)
  if unknown:
    raise ValueError(
      f'config.model.{unknown[0]} is not a key of the {model_config.name!r} '
      f'model family (its keys: {fields}); remove it or add it to the family.'
    )
  if missing:
    raise ValueError(
      f'config.model.{missing[0]} is missing: the {model_config.name!r} model '
      'family reads it; configs/common.py has its default.'
    )
  return family.config(**{key: model_config[key] for key in fields})


def get_model(model_config: ml_collections.ConfigDict, vocab_size: int, seq_len: int) -> Model:
  """Builds the family named by `model_config.name`.

  Args:
    model_config: the family's keys (see its `Config`).
    vocab_size: number of token ids, V.
    seq_len: training segment length; the Transformer's context length.

  Returns:
    The model as pure functions.

  Raises:
    ValueError: as `get_config`.
  """
  config = get_config(model_config)
  return MODELS[model_config.name].build(config, vocab_size, seq_len)
