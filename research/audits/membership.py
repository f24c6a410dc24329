"""The `membership` probe: how well a sequence's loss tells whether it was
trained on (membership inference).

Members are N sequences of the training split, non-members N of a held-out
split (valid, else test), each T + 1 tokens: sequence i of a split is its
tokens [i T, i T + T], the fixed sequences DP-SGD samples
(research/data/pipeline.py, `num_sequences`), of which N are drawn without
replacement with the seed. A sequence's loss is the sum of its T next-token
losses in nats, read from the model's initial state (`Context.token_losses`).

The attack (Yeom et al. 2018, "Privacy risk in machine learning", section 3.2
"loss threshold") guesses "member" when the loss is low: its score is minus
the loss. With a reference model (`options['reference']`, another run's
Context on the same tokenizer), the score is the reference's loss minus the
target's, which removes how hard a sequence is for any model (Watson et al.
2022, "On the importance of difficulty calibration in membership inference
attacks"). Reported: the ROC AUC (0.5: no better than chance) with a 95%
percentile bootstrap interval, members and non-members resampled separately,
and the TPR at 1% and 0.1% FPR, the low-FPR regime Carlini et al. 2022
("Membership inference attacks from first principles", section 3) argue for;
with N non-members an FPR below 1/N is reported as TPR at no false positive.

Shape letters: N sequences a side, T scored tokens a sequence.
"""

import numpy as np

from research.audits import stats
from research.audits.context import NotApplicable

SEQUENCES = 1000  # N a side by default, fewer where the held-out split has fewer.
MIN_SEQUENCES = 20  # Fewer and the AUC's interval means little: not applicable.
FPRS = (0.01, 0.001)  # Carlini et al. 2022's operating points.
BOOTSTRAP = 2000  # Resamples of the AUC's interval.


def sequences(tokens: np.ndarray, seq_len: int, count: int, seed: int) -> np.ndarray:
  """[count, seq_len + 1]: `count` of the split's fixed sequences (module
  docstring) drawn without replacement with `seed`, in split order."""
  available = (len(tokens) - 1) // seq_len
  chosen = np.sort(np.random.default_rng([seed, 0x4D49]).choice(available, count, replace=False))
  return np.asarray(tokens)[chosen[:, None] * seq_len + np.arange(seq_len + 1)]


def _option(options: dict, key: str, default: int, minimum: int) -> int:
  value = options.get(key, default)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'membership option {key}={value!r} must be an integer >= {minimum}')
  return value


def _held_out_split(ctx, options: dict) -> str:
  splits = ctx.parts.corpus.splits
  name = options.get('split') or next((s for s in ('valid', 'test') if s in splits), None)
  if name is None or name == 'train' or name not in splits:
    raise NotApplicable(
      f'membership needs a held-out split (valid or test); this corpus has {sorted(splits)}.'
    )
  return name


def _reference_losses(ctx, reference, rows_NxT1: np.ndarray) -> np.ndarray:
  if reference.parts.corpus.tokenizer.identity != ctx.parts.corpus.tokenizer.identity:
    raise ValueError(
      f'--reference={reference.workdir} reads other token ids '
      f'({reference.parts.corpus.tokenizer.identity}) than {ctx.workdir} '
      f'({ctx.parts.corpus.tokenizer.identity}); the reference must share the tokenizer.'
    )
  return np.asarray(reference.token_losses(rows_NxT1), np.float64)


def run(ctx, options: dict) -> dict:
  """AUC, its interval and TPR at low FPR of the loss attack (module docstring).

  Options: 'sequences' (N, default SEQUENCES), 'seq_len' (T, default the
  training config.data.seq_len), 'seed' (0), 'split' (the held-out split),
  'reference' (a Context or None).
  """
  held_out = _held_out_split(ctx, options)
  seq_len = _option(options, 'seq_len', ctx.config.data.seq_len, 1)
  context = ctx.parts.model.context
  if context is not None and seq_len > context:
    raise ValueError(f'membership option seq_len={seq_len} exceeds the model context {context}')
  seed = _option(options, 'seed', 0, 0)
  splits = ctx.parts.corpus.splits
  available = min((len(splits[s]) - 1) // seq_len for s in ('train', held_out))
  count = min(_option(options, 'sequences', SEQUENCES, 1), available)
  if count < MIN_SEQUENCES:
    raise NotApplicable(
      f'membership needs {MIN_SEQUENCES} sequences of {seq_len + 1} tokens a side; the '
      f'{held_out} split gives {available}.'
    )
  members = sequences(splits['train'], seq_len, count, seed)
  others = sequences(splits[held_out], seq_len, count, seed)
  loss_in = np.asarray(ctx.token_losses(members), np.float64)
  loss_out = np.asarray(ctx.token_losses(others), np.float64)
  reference = options.get('reference')
  if reference is None:
    score_in, score_out = -loss_in, -loss_out
  else:
    score_in = _reference_losses(ctx, reference, members) - loss_in
    score_out = _reference_losses(ctx, reference, others) - loss_out
  parts = ctx.parts
  return {
    'attack': 'loss threshold' + ('' if reference is None else ', reference-calibrated'),
    'reference': None if reference is None else reference.workdir,
    'sequences': count,
    'seq_len': seq_len,
    'held_out_split': held_out,
    'seed': seed,
    'auc': stats.roc_auc(score_in, score_out),
    'auc_interval': list(
      stats.two_sample_bootstrap_interval(score_in, score_out, stats.roc_auc, BOOTSTRAP, seed)
    ),
    'tpr_at_fpr': {str(f): stats.tpr_at_fpr(score_in, score_out, f) for f in FPRS},
    'fpr_resolution': 1 / count,
    'mean_loss_member': float(loss_in.mean() / seq_len),
    'mean_loss_nonmember': float(loss_out.mean() / seq_len),
    # Epochs of the configured run: below 1, some members were never trained on.
    'train_epochs': parts.num_train_steps / max(parts.steps_per_epoch, 1),
  }


def _tpr(result: dict, fpr: str) -> str:
  value = result['tpr_at_fpr'][fpr]
  below = float(fpr) < result['fpr_resolution']
  return f'{100 * value:.1f}%' + (' (no FP)' if below else '')


def table(result: dict) -> str:
  """The console table."""
  lo, hi = result['auc_interval']
  lines = [
    f'membership ({result["attack"]}): {result["sequences"]} train vs {result["sequences"]} '
    f'{result["held_out_split"]} sequences of {result["seq_len"]} scored tokens',
    f'AUC {result["auc"]:.3f} [{lo:.3f}, {hi:.3f}] | TPR@1% FPR {_tpr(result, "0.01")} | '
    f'TPR@0.1% FPR {_tpr(result, "0.001")}',
    f'loss/token: members {result["mean_loss_member"]:.3f}, non-members '
    f'{result["mean_loss_nonmember"]:.3f} nats; {result["train_epochs"]:.2f} epochs trained',
  ]
  if result['reference']:
    lines.append(f'reference model: {result["reference"]}')
  return '\n'.join(lines)


def card(result: dict) -> list[str]:
  """MODEL_CARD.md lines of the probe."""
  lo, hi = result['auc_interval']
  reference = (
    f' calibrated by the loss of the reference model `{result["reference"]}` (Watson et al. 2022)'
    if result['reference']
    else ''
  )
  return [
    f'Loss-threshold attack (Yeom et al. 2018){reference}: {result["sequences"]} training '
    f'sequences against {result["sequences"]} of the {result["held_out_split"]} split, '
    f'{result["seq_len"]} scored tokens each. AUC 0.5 is chance; TPR at low FPR after '
    'Carlini et al. 2022.',
    '',
    '| AUC (95% bootstrap) | TPR @ 1% FPR | TPR @ 0.1% FPR | loss/token members | non-members |',
    '|---|---|---|---|---|',
    f'| {result["auc"]:.3f} [{lo:.3f}, {hi:.3f}] | {_tpr(result, "0.01")} | '
    f'{_tpr(result, "0.001")} | {result["mean_loss_member"]:.3f} | '
    f'{result["mean_loss_nonmember"]:.3f} |',
  ]
