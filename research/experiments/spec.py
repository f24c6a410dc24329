"""Experiment specs: the rows of a published table, its seeds and metrics.

An experiment lives in `experiments/NAME/spec.py`, which defines `SPEC`, an
`Experiment`. A row is a base config (`configs/x.py[:variant]`) plus config
overrides; every row runs once per seed; the spec names the splits and the
metric the table reports, and the published value of each row and split with
the paper and table it comes from.
"""

import dataclasses
import fnmatch
import importlib.util
import math
import os
import re
from typing import Sequence

from research.experiments import audit_rows

_NAME = re.compile(r'^[A-Za-z0-9_.]+$')

# Config keys that say where data lies on one machine, not what a cell
# trains: the runner takes them (--data_path, --tfds_dir), never a spec.
LOCATION_KEYS = ('data.path', 'data.tfds_dir')
# Config keys that name a workdir, which a row may set to another row's cell (Row.from_cells).
WORKDIR_KEYS = ('distill.teacher', 'init_from')


@dataclasses.dataclass(frozen=True)
class Row:
  name: str  # Row label in the table; letters, digits, '_' and '.'.
  config: str = ''  # 'configs/x.py' or 'configs/x.py:variant' ('' : an audit row only).
  overrides: dict = dataclasses.field(default_factory=dict)  # {'model.hidden_size': 650}
  published: dict = dataclasses.field(default_factory=dict)  # {'test': 114.5}
  source: str = ''  # Paper and table of the published values.
  seeds: tuple[int, ...] | None = None  # None: the experiment's seeds.
  baseline: str = ''  # The row this one is compared with ('': the experiment's).
  # A compression row (research/compress.py): `compress` is its --method ('int8', 'prune:0.5')
  # applied to the finished model of row `compress_from` at the same seed, then
  # `finetune_steps` of training with the zeros held (pruning). `config` and `overrides` are
  # then unused (the model's own config is read from its workdir).
  compress: str = ''
  compress_from: str = ''
  finetune_steps: int = 0
  # Config keys naming a workdir, each set to the cell of another row at the same seed, which
  # the runner waits for: {'distill.teacher': 'float'} (a distilled student),
  # {'init_from': 'pretrain'} (fine-tuning a pre-trained model).
  from_cells: dict = dataclasses.field(default_factory=dict)
  # The sweep group of this row (Experiment.sweep; '': in none): the rows of a group differ in
  # the swept key, whose value is `overrides[sweep.key]`.
  group: str = ''
  # An audit row: probes run on another row's model (research/experiments/audit_rows.py).
  audit: str = ''
  audit_from: str = ''
  audit_reference: str = ''
  # A tuned row: its setting is chosen on these sweep groups' results when its cells start
  # (research/experiments/tuning.py): ('adamw_wd0', 'adamw_wd0.1').
  tuned_from: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Rows that form sweeps of one config key, the learning rate by default.

  A row of a sweep names its group (`Row.group`, e.g. 'default', 'qk_norm_w128'); its swept
  value is its override of `key`. RESULTS.md then gives, per group, the final figure (the
  experiment's metric on its first split) against the value, the best value, and the LR
  sensitivity of Wortsman et al. 2024 (Section 2.2) over seeds, each group paired with
  `baseline` by seed (research/experiments/sweep.py).
  """

  key: str = 'optim.learning_rate'  # The swept config key; its values must be > 0 (log axis).
  # The group the others' sensitivity is compared with ('' : none), or group -> its own
  # baseline group ({'qk_norm_w128': 'default_w128'}; a group not named is compared with none).
  baseline: str | dict = ''
  # The metric at initialisation, in the experiment's metric (nats per token for 'loss'), for
  # a cell whose metrics.jsonl holds no evaluation at step 0 (the trainer evaluates first at
  # eval_every_steps): for 'loss', ln V is the uniform prediction over a V-token vocabulary,
  # which a model whose initial logits are near 0 gives (math.log(65) for tiny-shakespeare's
  # characters). None: only cells evaluated at step 0 have one.
  initial: float | None = None
  label: str = 'learning rate'  # The swept key as the table and plot name it.
  # lr_sweep.png's panels, (title, its groups) each ((('width 64', ('default_w64', ...)), ...);
  # () : one panel of every group.
  panels: tuple[tuple[str, tuple[str, ...]], ...] = ()

  def baseline_of(self, group: str) -> str:
    """The group `group` is compared with ('' : none; never itself)."""
    base = self.baseline.get(group, '') if isinstance(self.baseline, dict) else self.baseline
    return '' if base == group else base

  def value(self, row: Row) -> float:
    """`row`'s swept value."""
    return float(row.overrides[self.key])

  def groups(self, rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Group -> its rows by swept value, groups in the order of their first row."""
    out = {}
    for row in rows:
      if row.group:
        out.setdefault(row.group, []).append(row)
    return {g: sorted(members, key=self.value) for g, members in out.items()}


@dataclasses.dataclass(frozen=True)
class Table:
  """A further table of RESULTS.md: `metric` of every row on `splits`, read
  at a cell's last step like the main table (a canary audit's exposure per
  repetition count, the epsilon a DP row spent)."""

  title: str
  metric: str  # A field of the records, e.g. 'exposure', 'epsilon'.
  splits: tuple[str, ...]  # Its columns, e.g. ('audit_r1', 'audit_r4').
  labels: tuple[str, ...] = ()  # A column label per split ('1', '4'); () : the splits.
  plot: str = ''  # A PNG of the metric per column, one line per row ('' : none).
  note: str = ''  # Markdown under the table's heading.
  # Horizontal lines on the plot, label -> value ({'chance': 1.44}).
  references: dict = dataclasses.field(default_factory=dict)

  def label(self, split: str) -> str:
    return self.labels[self.splits.index(split)] if self.labels else split


@dataclasses.dataclass(frozen=True)
class Trace:
  """A train metric against step for chosen cells of sweep groups
  (research/experiments/traces.py): per traced group, its highest stable and its
  lowest unstable swept value at its lowest seed, and the group beside it at the
  same two values, drawn dashed. One PNG, a panel per traced group."""

  metric: str  # A field of metrics.jsonl's train lines: 'attn_logit_max', 'log_z'.
  groups: tuple[str, ...]  # Sweep groups traced, a panel each: ('default_w64', 'default_w128').
  # Per traced group, the group drawn beside it ('qk_norm_w64'); () : none.
  beside: tuple[str, ...] = ()
  # The y axis: 'log', 'symlog' (linear within +-1, for values near or below 0, e.g. log_z)
  # or 'linear'.
  yscale: str = 'log'
  plot: str = ''  # The PNG's file name ('' : traces_METRIC.png).

  @property
  def path(self) -> str:
    """The PNG's file name."""
    return self.plot or f'traces_{self.metric.replace("/", "_")}.png'


# What a claim compares (research/experiments/claims.py computes each; names -> meaning).
CLAIM_QUANTITIES = {
  'sensitivity': "a group's LR sensitivity at one seed (research/experiments/sweep.py)",
  'peak': "a cell's largest |metric| over its train lines, at swept values >= `above`",
  'best_shift': "|log10 best value of pair 2's group - log10 best value of pair 1's| per seed",
  # Pairs of rows, not groups:
  'final': "a row's final figure on the first split, per seed",
  'step_ratio': "log of the comparison row's steps to its own final figure over the row's "
  '(research/experiments/speedup.py), per seed; the comparison side is 0',
}
ROW_CLAIM_QUANTITIES = ('final', 'step_ratio')  # Their pairs name rows.
# The expected sign of treated minus comparison; 'equal': within +-Claim.margin.
CLAIM_DIRECTIONS = ('lower', 'higher', 'equal')


@dataclasses.dataclass(frozen=True)
class Claim:
  """A published claim tested on the sweep groups, treated minus comparison,
  paired (research/experiments/claims.py): verdict 'reproduced' when the 95%
  interval of the paired difference excludes 0 on the expected side."""

  statement: str  # The published statement, in a sentence.
  source: str  # Paper and figure.
  quantity: str  # A name of CLAIM_QUANTITIES.
  # Matched (treated group, comparison group) pairs, one per width:
  # (('qk_norm_w64', 'default_w64'), ('qk_norm_w128', 'default_w128')); for 'best_shift'
  # exactly two, the narrow width first (the shift is from pair 1's best value to pair 2's).
  pairs: tuple[tuple[str, str], ...]
  direction: str = 'lower'  # One of CLAIM_DIRECTIONS.
  metric: str = ''  # 'peak': the train metric ('attn_logit_max', 'log_z').
  above: float | None = None  # 'peak': only swept values >= this count (declared, not tuned).
  # 'peak': compare log10 of the peaks (a ratio: each rate weighs the same where the peaks
  # span decades) instead of the peaks themselves.
  log10: bool = False
  label: str = ''  # Its name in the table ('a'); '' : its position, from 1.
  # direction 'equal': the equivalence margin, in the quantity's units, fixed before the runs.
  margin: float = 0.0


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str
  title: str
  rows: tuple[Row, ...]
  seeds: tuple[int, ...] = (0,)
  metric: str = 'perplexity'  # A field of the eval records: 'perplexity', 'bpc', 'loss'.
  splits: tuple[str, ...] = ('valid', 'test')
  notes: str = ''  # Markdown placed under the title of RESULTS.md.
  # A row the others are compared with, seed by seed (research/experiments/
  # stats.py): RESULTS.md then gives each row's paired difference from it.
  baseline: str = ''
  # A split the others are compared with, cell by cell within each row (the
  # same model scored at another context, 'valid@512' against 'valid'):
  # RESULTS.md then gives each row's paired difference, and splits.png each
  # row's figure per split.
  split_baseline: str = ''
  tables: tuple[Table, ...] = ()  # Further tables after the main one.
  sweep: Sweep | None = None  # Rows naming a `group` form sweeps of `sweep.key`.
  traces: tuple[Trace, ...] = ()  # Train metrics against step for cells of the sweep groups.
  claims: tuple[Claim, ...] = ()  # Published claims tested on the sweep groups.
  # RESULTS.md adds each row's steps to the baseline row's final figure on the first split,
  # seed by seed, and the step and wall-clock ratios (research/experiments/speedup.py).
  steps_to_baseline: bool = False


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run: a row at one seed."""

  row: Row
  seed: int

  @property
  def name(self) -> str:
    return f'{self.row.name}-s{self.seed}'


def cells(experiment: Experiment) -> list[Cell]:
  """Rows x seeds, in table order."""
  out = []
  for row in experiment.rows:
    for seed in row.seeds if row.seeds is not None else experiment.seeds:
      out.append(Cell(row, seed))
  return out


def select(cells: list[Cell], patterns: str) -> list[Cell]:
  """Cells whose name or row matches one of the comma-separated patterns
  (shell wildcards: `small`, `small-s0`, `*-s1`)."""
  if not patterns:
    return cells
  wanted = [p.strip() for p in patterns.split(',') if p.strip()]
  chosen = [
    c
    for c in cells
    if any(fnmatch.fnmatchcase(c.name, p) or fnmatch.fnmatchcase(c.row.name, p) for p in wanted)
  ]
  unmatched = [
    p
    for p in wanted
    if not any(fnmatch.fnmatchcase(c.name, p) or fnmatch.fnmatchcase(c.row.name, p) for c in cells)
  ]
  if unmatched:
    raise ValueError(
      f'--cells patterns {unmatched} match no cell; cells are {[c.name for c in cells]}.'
    )
  return chosen


def check(experiment: Experiment) -> None:
  """Raises ValueError for a spec that cannot make a table."""
  names = [r.name for r in experiment.rows]
  if not names:
    raise ValueError(f'Experiment {experiment.name!r} has no rows.')
  for name in names:
    if not _NAME.match(name):
      raise ValueError(
        f"Row name {name!r} may hold only letters, digits, '_' and '.'; rename it in the spec."
      )
  for baseline in {experiment.baseline} | {r.baseline for r in experiment.rows}:
    if baseline and baseline not in names:
      raise ValueError(f'baseline={baseline!r} is not a row; rows are {names}.')
  if experiment.steps_to_baseline and not experiment.baseline:
    raise ValueError(
      'steps_to_baseline counts steps to the baseline row; name Experiment.baseline.'
    )
  if experiment.split_baseline and experiment.split_baseline not in experiment.splits:
    raise ValueError(
      f'split_baseline={experiment.split_baseline!r} is not one of the splits '
      f'{list(experiment.splits)}.'
    )
  for table in experiment.tables:
    if table.labels and len(table.labels) != len(table.splits):
      raise ValueError(
        f'Table {table.title!r} has {len(table.labels)} labels for {len(table.splits)} splits; '
        'give one label per split, or none.'
      )
    if table.plot and not table.plot.endswith('.png'):
      raise ValueError(f'Table {table.title!r}: plot={table.plot!r} must name a .png file.')
  audit_rows.check(experiment)
  for row in experiment.rows:
    if bool(row.compress) != bool(row.compress_from):
      raise ValueError(
        f'Row {row.name!r}: a compression row names both compress (the method) and '
        'compress_from (the row of the float model).'
      )
    earlier_rows = {'compress_from': row.compress_from, **audit_rows.earlier(row), **row.from_cells}
    for key, earlier in earlier_rows.items():
      if earlier and earlier not in names[: names.index(row.name)]:
        raise ValueError(
          f'Row {row.name!r}: {key}={earlier!r} must be a row before it (rows: {names}).'
        )
    unknown = sorted(set(row.from_cells) - set(WORKDIR_KEYS))
    if unknown:
      raise ValueError(
        f'Row {row.name!r}: from_cells sets {unknown}, which name no workdir; it may set '
        f'{list(WORKDIR_KEYS)}.'
      )
    twice = sorted(set(row.from_cells) & set(row.overrides))
    if twice or (row.from_cells and row.compress):
      raise ValueError(
        f'Row {row.name!r}: from_cells sets config keys of a training row; drop {twice} from '
        'its overrides (and compress: a compression row trains nothing).'
      )
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'Row names must be unique; repeated: {duplicates}.')
  _check_sweep(experiment)
  _check_tuned(experiment)
  _check_traces_and_claims(experiment)
  for row in experiment.rows:
    path = row.config.split(':', 1)[0]
    if not row.audit and not os.path.exists(path):  # An audit row has none (audit_rows.check).
      raise ValueError(
        f'Row {row.name!r}: config file {path!r} does not '
        'exist (paths are relative to the repository root).'
      )
    located = sorted(set(row.overrides) & set(LOCATION_KEYS))
    if located:
      raise ValueError(
        f'Row {row.name!r} sets {located}: where the data lies belongs to a '
        'machine, not to the experiment. Drop it from the spec and give it '
        'to the runner (--data_path=..., --tfds_dir=...).'
      )
    unknown = sorted(set(row.published) - set(experiment.splits))
    if unknown:
      raise ValueError(
        f'Row {row.name!r}: published values for splits '
        f'{unknown} that the experiment does not report '
        f'(splits: {list(experiment.splits)}).'
      )
    if row.published and not row.source:
      raise ValueError(f'Row {row.name!r}: published values need a source (paper and table).')


def _check_sweep(experiment: Experiment) -> None:
  """Raises ValueError for sweep groups the sweep table cannot read."""
  grouped = [r for r in experiment.rows if r.group]
  sweep = experiment.sweep
  if sweep is None:
    if grouped:
      raise ValueError(
        f'Rows {[r.name for r in grouped]} name a sweep group but the experiment has no '
        'sweep; set Experiment(sweep=Sweep(...)) or drop their group.'
      )
    return
  if not grouped:
    raise ValueError('The experiment has a sweep but no row names a group (Row.group).')
  for row in grouped:
    value = row.overrides.get(sweep.key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
      raise ValueError(
        f'Row {row.name!r} of sweep group {row.group!r}: overrides[{sweep.key!r}] is '
        f'{value!r}; a swept value must be a number > 0 (it is drawn on a log axis).'
      )
  for group, rows in sweep.groups(experiment.rows).items():
    values = [sweep.value(r) for r in rows]
    if len(set(values)) != len(values):
      raise ValueError(f'Sweep group {group!r} has the value {sweep.key} twice: {values}.')
    if len(values) < 2:
      raise ValueError(f'Sweep group {group!r} has one row; a sweep needs two values or more.')
  groups = list(sweep.groups(experiment.rows))
  named = sweep.baseline if isinstance(sweep.baseline, dict) else {'': sweep.baseline}
  for group, base in named.items():
    if group and group not in groups:
      raise ValueError(f'Sweep baseline names group {group!r}, which is not one: {groups}.')
    if base and base not in groups:
      raise ValueError(f'Sweep baseline={base!r} is not a group; groups are {groups}.')
  for title, members in sweep.panels:
    strangers = [g for g in members if g not in groups]
    if strangers:
      raise ValueError(f'Sweep panel {title!r} names {strangers}, not groups; groups are {groups}.')
  if sweep.initial is not None and not math.isfinite(sweep.initial):
    raise ValueError(f'Sweep initial={sweep.initial!r} must be a finite number or None.')


def tuning_rows(experiment: Experiment, row: Row) -> list[Row]:
  """The rows of the groups `row` is tuned on, in spec order."""
  return [r for r in experiment.rows if r.group and r.group in row.tuned_from]


def tuned_keys(experiment: Experiment, row: Row) -> list[str]:
  """The sweep key and every key whose value differs between the tuning rows."""
  rows = tuning_rows(experiment, row)
  keys = {k for r in rows for k in r.overrides}
  varying = {k for k in keys if len({repr(r.overrides.get(k)) for r in rows}) > 1}
  return sorted(varying | {experiment.sweep.key})


def tuning_cells(experiment: Experiment, row: Row) -> list[Cell]:
  """The cells of the rows `row` is tuned on."""
  rows = tuning_rows(experiment, row)
  return [c for c in cells(experiment) if c.row in rows]


def _check_tuned(experiment: Experiment) -> None:
  """Raises ValueError for a tuned row the runner could not tune."""
  groups = {r.group for r in experiment.rows if r.group}
  for row in (r for r in experiment.rows if r.tuned_from):
    name = f'Row {row.name!r}'
    if experiment.sweep is None:
      raise ValueError(f'{name} is tuned on sweep groups, but the experiment has no sweep.')
    unknown = sorted(set(row.tuned_from) - groups)
    if unknown:
      raise ValueError(f'{name}: tuned_from names {unknown}, not sweep groups: {sorted(groups)}.')
    if row.group or row.compress or row.audit or row.from_cells:
      raise ValueError(
        f'{name}: a tuned row trains from its own config; it may not be in a sweep group or '
        'compress, audit or read another cell.'
      )
    configs = {r.config for r in tuning_rows(experiment, row)} - {row.config}
    if configs:
      raise ValueError(
        f"{name}: its config {row.config!r} differs from its tuning rows' {sorted(configs)}; "
        'a setting chosen for one recipe says nothing about another.'
      )
    twice = sorted(set(row.overrides) & set(tuned_keys(experiment, row)))
    if twice:
      raise ValueError(
        f'{name} sets {twice}, which its tuning chooses; drop them from its overrides.'
      )


def _check_traces_and_claims(experiment: Experiment) -> None:
  """Raises ValueError for traces and claims that cannot be read. A group they
  name need not exist yet: the report then says it was not run."""
  on_groups = [c for c in experiment.claims if c.quantity not in ROW_CLAIM_QUANTITIES]
  if (experiment.traces or on_groups) and experiment.sweep is None:
    raise ValueError('Traces and claims read sweep groups; the experiment has no sweep.')
  for trace in experiment.traces:
    if not trace.metric or not trace.groups:
      raise ValueError(f'Trace {trace!r} needs a metric and the groups it traces.')
    if trace.beside and len(trace.beside) != len(trace.groups):
      raise ValueError(
        f'Trace of {trace.metric!r}: beside={trace.beside} needs one group per traced group '
        f'{trace.groups}, or none.'
      )
    if trace.yscale not in ('log', 'symlog', 'linear'):
      raise ValueError(
        f"Trace of {trace.metric!r}: yscale={trace.yscale!r}; use 'log', 'symlog' or 'linear'."
      )
    if not trace.path.endswith('.png'):
      raise ValueError(f'Trace of {trace.metric!r}: plot={trace.plot!r} must name a .png file.')
  for claim in experiment.claims:
    name = claim.label or claim.statement[:40]
    if claim.quantity not in CLAIM_QUANTITIES:
      raise ValueError(
        f'Claim {name!r}: quantity={claim.quantity!r}; valid: {sorted(CLAIM_QUANTITIES)}.'
      )
    if claim.direction not in CLAIM_DIRECTIONS:
      raise ValueError(
        f'Claim {name!r}: direction={claim.direction!r}; valid: {list(CLAIM_DIRECTIONS)}.'
      )
    if not claim.statement or not claim.source:
      raise ValueError(f'Claim {name!r} needs its statement and source (paper and figure).')
    if not claim.pairs or any(len(p) != 2 for p in claim.pairs):
      raise ValueError(
        f'Claim {name!r}: pairs={claim.pairs!r} must be (treated, comparison) pairs.'
      )
    if (claim.direction == 'equal') != (claim.margin > 0):
      raise ValueError(f"Claim {name!r}: direction 'equal' and a margin > 0 go together.")
    rows = {r.name for r in experiment.rows}
    strangers = {n for p in claim.pairs for n in p} - rows
    if claim.quantity in ROW_CLAIM_QUANTITIES and strangers:
      raise ValueError(
        f'Claim {name!r}: {sorted(strangers)} are not rows; a {claim.quantity} claim pairs rows.'
      )
    if claim.quantity == 'best_shift' and len(claim.pairs) != 2:
      raise ValueError(f'Claim {name!r}: best_shift compares two widths; give exactly two pairs.')
    if claim.quantity == 'peak' and (not claim.metric or claim.above is None):
      raise ValueError(f'Claim {name!r}: a peak names its train metric and `above`.')
    if claim.quantity != 'peak' and (claim.metric or claim.above is not None or claim.log10):
      raise ValueError(f'Claim {name!r}: metric, above and log10 belong to a peak claim only.')


def load(directory: str) -> Experiment:
  """Imports `directory/spec.py` and returns its checked SPEC."""
  path = os.path.join(directory, 'spec.py')
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'No experiment spec at {path}; an experiment is a folder holding '
      'spec.py that defines SPEC = research.experiments.spec.Experiment(...).'
    )
  module_spec = importlib.util.spec_from_file_location('experiment_spec', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  experiment = getattr(module, 'SPEC', None)
  if not isinstance(experiment, Experiment):
    raise ValueError(f'{path} must define SPEC as an Experiment.')
  check(experiment)
  return experiment
