"""Rows of an experiment spec made in bulk: every combination of config values
(`grid`, an ablation's table) and the rows of learning-rate sweep groups
(`sweep_rows`)."""

import itertools
from typing import Callable, Sequence

from research.experiments.spec import Row


def grid(
  config: str,
  axes: dict[str, Sequence],
  *,
  common: dict | None = None,
  derived: Callable[[dict], dict] | None = None,
  published: dict[str, dict] | None = None,
  source: str = '',
  prefix: str = '',
  baseline: str = '',
  seeds: tuple[int, ...] | None = None,
  group: str = '',
) -> tuple[Row, ...]:
  """Rows for every combination of the `axes` values, in order.

  Args:
    config: every row's base config ('configs/x.py[:variant]').
    axes: config key -> its values, e.g. {'model.mlp': ['relu', 'swiglu']}.
    common: overrides every row has.
    derived: `derived(overrides) -> more overrides` (a gated MLP's width).
    published: row name -> its published values ({'valid': 1.94}).
    source: the paper and table of the published values.
    prefix: put before every row's name ('gpu_'), to hold two grids apart.
    baseline: the row these rows are compared with ('': the experiment's).
    seeds: these rows' seeds (None: the experiment's).
    group: every row's sweep group (Row.group; '' : none).

  Returns:
    Rows named by their values joined with '_' ('swiglu', 'rope_rmsnorm'; a
    float without exponent: 0.0003, not 3e-04).
  """
  published = published or {}
  keys = list(axes)
  rows = []
  for values in itertools.product(*(axes[k] for k in keys)):
    overrides = {**(common or {}), **dict(zip(keys, values))}
    overrides.update(derived(overrides) if derived else {})
    name = prefix + '_'.join(_value_name(v) for v in values)
    rows.append(
      Row(
        name,
        config,
        overrides,
        published=published.get(name, {}),
        source=source if name in published else '',
        baseline=baseline,
        seeds=seeds,
        group=group,
      )
    )
  unknown = sorted(set(published) - {r.name for r in rows})
  if unknown:
    raise ValueError(f'Published values for {unknown}, which the grid does not make.')
  return tuple(rows)


def _value_name(value) -> str:
  """A value as a row name's part: str(), but a float positionally (3e-05 would
  put '-' in the name, which cell names use as a separator)."""
  if isinstance(value, float) and 'e' in str(value):
    return f'{value:.15f}'.rstrip('0').rstrip('.')
  return str(value)


def sweep_rows(
  config: str,
  groups: dict[str, dict],
  values: Sequence[float],
  *,
  key: str = 'optim.learning_rate',
  derived: Callable[[dict], dict] | None = None,
  seeds: tuple[int, ...] | None = None,
) -> tuple[Row, ...]:
  """The rows of sweep groups: each group's overrides at every value of `key`.

  Args:
    config: every row's base config ('configs/x.py[:variant]').
    groups: group name -> its overrides ({'qk_norm': {'model.qk_norm': 'layernorm'}});
      a width makes its own group ({'default_w64': {...}, 'default_w128': {...}}).
    values: the swept values, e.g. (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1).
    key: the swept key (Sweep.key).
    derived: `derived(overrides) -> more overrides`, as in `grid`.
    seeds: these rows' seeds (None: the experiment's).

  Returns:
    Rows named GROUP_lrVALUE ('qk_norm_lr0.0003'), each with `group` set; the
    report reads the group and value from the row, never from its name.
  """
  rows = []
  for group, overrides in groups.items():
    rows += grid(
      config,
      {key: list(values)},
      common=overrides,
      derived=derived,
      prefix=f'{group}_lr' if key == 'optim.learning_rate' else f'{group}_',
      seeds=seeds,
      group=group,
    )
  return tuple(rows)
