"""What a config value must be: a predicate and the words that say it.

`research/config_checks.py` holds the rules of the keys every experiment has;
each model family holds the rules of its own keys on the fields of its config
object (`research/models/`), written with `field(rule)`. A value that breaks
its rule is refused with one line naming the key, the value, what it must be
and the flag that fixes it.
"""

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple


class Rule(NamedTuple):
  ok: Callable[[Any], bool]
  # Completes "config.KEY=VALUE must be ..."; a function where the answer is
  # read when a value is refused (the names a registry holds then).
  must_be: str | Callable[[], str]


def number(v) -> bool:
  """A finite int or float (not a bool)."""
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive() -> Rule:
  return Rule(lambda v: number(v) and v > 0, 'positive')


def at_least(low) -> Rule:
  return Rule(lambda v: number(v) and v >= low, f'at least {low}')


def in_range(low, high, *, closed_high=False) -> Rule:
  bracket = ']' if closed_high else ')'
  return Rule(
    lambda v: number(v) and low <= v and (v <= high if closed_high else v < high),
    f'in [{low}, {high}{bracket}',
  )


def one_of(*names) -> Rule:
  return Rule(lambda v: v in names, f'one of {list(names)}')


def boolean() -> Rule:
  return Rule(lambda v: isinstance(v, bool), 'True or False')


def anything(description: str) -> Rule:
  """A key every value of whose type means something (checked elsewhere if
  it is a path or a name)."""
  return Rule(lambda v: True, description)


def registered(registry: Mapping, kind: str) -> Rule:
  """A name in `registry`, looked up when checked: an option registered
  after this rule was written (a test's, a user's module) is accepted."""
  return Rule(
    lambda v: isinstance(v, str) and v in registry,
    lambda: f'one of the known {kind}s: {sorted(registry)}',
  )


def refuse(key: str, value: Any, rule: Rule) -> None:
  must_be = rule.must_be() if callable(rule.must_be) else rule.must_be
  raise ValueError(
    f'config.{key}={value!r} must be {must_be}; set '
    f'--config.{key}=... (configs/common.py says what it means).'
  )


def check(key: str, value: Any, rule: Rule) -> None:
  """Raises ValueError naming `config.KEY` when `value` breaks `rule`."""
  if not rule.ok(value):
    refuse(key, value, rule)


def field(rule: Rule) -> Any:
  """A field of a config dataclass, with the rule its value must keep."""
  return dataclasses.field(metadata={'rule': rule})


def field_rules(config_class: type, prefix: str) -> dict[str, Rule]:
  """{'PREFIX.FIELD': rule} of a dataclass written with `field`."""
  return {f'{prefix}.{f.name}': f.metadata['rule'] for f in dataclasses.fields(config_class)}


def check_fields(config: Any, prefix: str) -> None:
  """Checks every field of a dataclass written with `field`, in order."""
  for f in dataclasses.fields(config):
    check(f'{prefix}.{f.name}', getattr(config, f.name), f.metadata['rule'])


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b.c': value} of every leaf of a nested config (a ConfigDict or the
  plain dict of one saved in a checkpoint); the dotted keys rules name."""
  out = {}
  for key, value in tree.items():
    if hasattr(value, 'items'):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out
