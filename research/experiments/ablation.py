"""An ablation's comparison with its baseline row, for RESULTS.md and the plot.

Each row's cell at seed s is compared with the baseline's cell at seed s
(stats.paired_difference); `WHAT_A_PAIR_SHARES` says what cancels.
"""

from research.experiments import spec as spec_lib
from research.experiments import stats

WHAT_A_PAIR_SHARES = (
  'The two runs of a pair share the seed, and so the order in which the training data is '
  'read, the dropout draws, and the initial values of every parameter the two models have '
  "under the same name and shape (Flax draws a parameter's initial value from the seed and "
  'its path); they differ in the option ablated and in whatever it changes downstream.'
)
_DIFF_DECIMALS = {'perplexity': 2, 'loss': 4, 'bpc': 4}


def seed_values(row: spec_lib.Row, results: list, split: str) -> dict[int, float]:
  """seed -> final `split` value of `row`'s finished cells."""
  return {
    r.cell.seed: r.final[split]
    for r in results
    if r.cell.row == row and r.status == 'finished' and split in r.final
  }


def comparisons(experiment: spec_lib.Experiment, results: list) -> list[tuple]:
  """(row, split, stats.Paired or None, published difference or None) for
  every row and split, in table order, but a row that is its own baseline; a
  row is compared with the baseline it names, else with the experiment's. (A
  row that another row names as its baseline is still compared with its own:
  the DP row at rate 8 is paired with the DP row at rate 1, which is itself
  paired with the non-private row.)"""
  by_name = {r.name: r for r in experiment.rows}
  out = []
  for row in experiment.rows:
    base = by_name[row.baseline or experiment.baseline]
    if base is row:
      continue
    for split in experiment.splits:
      paired = stats.paired_difference(
        seed_values(row, results, split), seed_values(base, results, split)
      )
      published = None
      if split in row.published and split in base.published:
        published = row.published[split] - base.published[split]
      out.append((row, split, paired, published))
  return out


def markdown(experiment: spec_lib.Experiment, results: list) -> list[str]:
  """The 'Differences from the baseline' section of RESULTS.md."""
  d = _DIFF_DECIMALS.get(experiment.metric, 4)
  lines = [
    f'## Differences from the baseline ({experiment.baseline}, unless a row names its own)',
    '',
    f"Each row's {experiment.metric} minus the baseline's, cell by cell at the same seed: "
    'the mean of those differences ± the half-width of its 95% Student-t interval, the '
    'two-sided paired t-test p-value, and the smallest true difference this design '
    'would find significant (5% level) four times in five, from the spread the '
    'differences showed ("detectable"). ' + WHAT_A_PAIR_SHARES,
    '',
    '| row | baseline | split | published difference | ours | p | n | detectable | '
    'published ordering reproduced |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for row, split, paired, published in comparisons(experiment, results):
    base = row.baseline or experiment.baseline
    pub = f'{published:+.{d}f}' if published is not None else '—'
    if paired is None:
      lines.append(f'| {row.name} | {base} | {split} | {pub} | no pair finished | | 0 | | |')
      continue
    ours = f'{paired.mean:+.{d}f}'
    if paired.half is not None:
      ours += f' ± {paired.half:.{d}f}'
    p = '' if paired.p_value is None else f'{paired.p_value:.3g}'
    detectable = '' if paired.detectable is None else f'{paired.detectable:.{d}f}'
    reproduced = stats.ordering_reproduced(paired, published)
    lines.append(
      f'| {row.name} | {base} | {split} | {pub} | {ours} | {p} | {paired.n} | {detectable} | '
      f'{reproduced} |'
    )
  return lines + ['']


def split_comparisons(experiment: spec_lib.Experiment, results: list) -> list[tuple]:
  """(row, split, stats.Paired or None) of every row and every split but
  `split_baseline`: the split minus the split baseline, cell by cell."""
  out = []
  for row in experiment.rows:
    base = seed_values(row, results, experiment.split_baseline)
    for split in experiment.splits:
      if split != experiment.split_baseline:
        out.append((row, split, stats.paired_difference(seed_values(row, results, split), base)))
  return out


def _change(paired: stats.Paired) -> str:
  """'higher' or 'lower' where p < 0.05, else 'no significant change'."""
  if paired.p_value is None or paired.p_value >= 0.05:
    return 'no significant change'
  return 'higher' if paired.mean > 0 else 'lower'


def split_markdown(experiment: spec_lib.Experiment, results: list) -> list[str]:
  """The 'Differences from the SPLIT split' section of RESULTS.md."""
  d = _DIFF_DECIMALS.get(experiment.metric, 4)
  lines = [
    f'## Differences from the {experiment.split_baseline} split, within each row',
    '',
    f"Each cell's {experiment.metric} on a split minus its own on "
    f'{experiment.split_baseline} (the same trained model scored twice): mean ± 95% '
    'interval over the seeds, the paired t-test p-value, and the change it shows '
    '(higher or lower where p < 0.05). A row without a split was not scored there.',
    '',
    f'| row | split | ours (minus {experiment.split_baseline}) | p | n | change |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  for row, split, paired in split_comparisons(experiment, results):
    if paired is None:
      lines.append(f'| {row.name} | {split} | not scored | | 0 | |')
      continue
    ours = f'{paired.mean:+.{d}f}' + ('' if paired.half is None else f' ± {paired.half:.{d}f}')
    p = '' if paired.p_value is None else f'{paired.p_value:.3g}'
    lines.append(f'| {row.name} | {split} | {ours} | {p} | {paired.n} | {_change(paired)} |')
  return lines + ['']
