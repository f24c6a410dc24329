"""Evaluation: per-token loss over a whole split, samples, and `--mode=eval`.

Shape letters: B rows scored in parallel, T segment length.

Protocol. Every one of the N-1 next-token predictions of a split is scored
exactly once (`pipeline.eval_batches`): the split is cut into B contiguous rows
(the last one padded and masked) and walked in segments of T. A recurrent model
(the LSTM) carries its state from segment to segment through the whole row;
the Transformer scores each segment as an independent non-overlapping window,
so a token sees only the earlier tokens of its own window.
"""

import functools
import os

import jax
import ml_collections
import numpy as np

from research import checkpoint
from research import components as components_lib
from research import compression
from research import losses
from research import metrics
from research import model_card
from research import models
from research import optim
from research import sampling
from research import sharding
from research.data import pipeline


def eval_step(params, carry, batch, *, model: models.Model):
  """Returns (sum of token losses, number of scored tokens, number of them
  whose argmax logit is the target, next carry)."""
  loss_sum, weight_sum, logits_BxTxV, carry = losses.forward(
    model, params, dict(batch, carry=carry), train=False, rng=None
  )
  hits = metrics.top1_hits(logits_BxTxV, batch['targets'], batch['weights'])
  return loss_sum, weight_sum, hits, carry


# Tokens per evaluation call that a recurrent model gets at least.
_MIN_STATEFUL_SEGMENT_TOKENS = 512


def segment_length(model: models.Model, batch_size: int, seq_len: int) -> int:
  """T for evaluation: `seq_len`, or longer for a recurrent model.

  The Transformer's protocol is its window, so T is the context length. A
  recurrent model carries its state from segment to segment, so T does not
  change what it computes, only how many calls it takes: with the paper's
  one-row PTB protocol, 20-token segments made 3,688 calls for the valid
  split (14.8 s on a 2-core CPU) and 512-token ones make 145 (6.9 s).
  """
  if not model.recurrent:
    return seq_len
  return max(seq_len, -(-_MIN_STATEFUL_SEGMENT_TOKENS // batch_size))


class Evaluator:
  """Scores splits with one jitted step per run (compiled on first use)."""

  def __init__(self, parts: components_lib.Components, *, batch_size: int, seq_len: int):
    model = parts.model
    if model.context is not None and seq_len > model.context:
      model = parts.eval_models.get(seq_len)  # Built for the longer context.
      if model is None:
        raise ValueError(
          f'Evaluation at context {seq_len} needs the model built for it; the '
          f'training context is {parts.model.context} (set config.eval.seq_len or '
          'eval.extra_seq_lens).'
        )
    self._parts = parts._replace(model=model)
    self._batch_size = batch_size
    self._seq_len = segment_length(model, batch_size, seq_len)
    mesh = parts.mesh
    # Rows are split over the data-parallel devices when they divide evenly
    # (the LSTM's paper protocol uses a single row, which is replicated).
    divisible = batch_size % sharding.data_parallel_size(mesh) == 0
    self._batch_sharding = sharding.batch_sharding(mesh) if divisible else sharding.replicated(mesh)
    carry = model.init_carry(batch_size)
    self._carry_sharding = jax.tree.map(lambda _: self._batch_sharding, carry)
    self._step = jax.jit(
      functools.partial(eval_step, model=model),
      out_shardings=(
        sharding.replicated(mesh),
        sharding.replicated(mesh),
        sharding.replicated(mesh),
        self._carry_sharding,
      ),
    )

  def _put(self, array: np.ndarray, target):
    # Every process holds the whole eval batch; each keeps its shards.
    return jax.make_array_from_callback(array.shape, target, lambda idx: array[idx])

  def score(self, params, tokens: np.ndarray) -> tuple[float, float]:
    """(Mean loss in nats per token, top-1 accuracy) over every prediction
    in `tokens`."""
    carry = jax.tree.map(
      lambda c, s: self._put(np.asarray(c), s),
      self._parts.model.init_carry(self._batch_size),
      self._carry_sharding,
    )
    sums, counts, hits = [], [], []
    for batch in pipeline.eval_batches(tokens, batch_size=self._batch_size, seq_len=self._seq_len):
      batch = {k: self._put(v, self._batch_sharding) for k, v in batch.items()}
      loss_sum, weight_sum, hit_sum, carry = self._step(params, carry, batch)
      sums.append(loss_sum)
      counts.append(weight_sum)
      hits.append(hit_sum)
    # Accumulate in float64 on the host: one device round trip at the end.
    loss_total, count, hit_total = (
      np.sum(np.asarray(x, np.float64)) for x in jax.device_get((sums, counts, hits))
    )
    return float(loss_total / count), float(hit_total / count)

  def loss(self, params, tokens: np.ndarray) -> float:
    """Mean loss in nats per token over every prediction in `tokens`."""
    return self.score(params, tokens)[0]

  def splits(self, params, names) -> dict[str, dict[str, float]]:
    """Figures (loss, perplexity, bpc, bpb, accuracy) of each named split."""
    corpus = self._parts.corpus
    figures = {}
    for name in names:
      if name in corpus.splits:
        loss, accuracy = self.score(params, corpus.splits[name])
        figures[name] = metrics.split_figures(loss, corpus.sizes[name], accuracy)
    return figures


def generate(
  parts: components_lib.Components,
  params,
  rng: jax.Array,
  sample_config: ml_collections.ConfigDict,
  context: int,
) -> str:
  """Decodes a sample continuing `sample_config.prompt`.

  An empty prompt starts a new line, or, for a corpus without line breaks,
  continues the first token of the training split.
  """
  tokenizer = parts.corpus.tokenizer
  if sample_config.prompt:
    try:
      prompt = tokenizer.encode(sample_config.prompt)
    except ValueError as e:
      raise ValueError(
        f'config.sample.prompt cannot be encoded: {e} Use text from the corpus.'
      ) from e
  else:
    try:
      prompt = tokenizer.encode('\n')
    except ValueError:
      prompt = np.asarray(parts.corpus.splits['train'][:1])
  ids = sampling.sample(
    parts.model,
    params,
    prompt,
    rng,
    num_tokens=sample_config.num_tokens,
    context=context,
    temperature=sample_config.temperature,
    top_k=sample_config.top_k,
    top_p=sample_config.top_p,
  )
  return tokenizer.decode(ids)


def context_splits(splits, config: ml_collections.ConfigDict) -> list[str]:
  """The split names of a final evaluation: `splits`, then 'SPLIT@N' for each
  of config.eval.extra_seq_lens."""
  return list(splits) + [f'{s}@{n}' for n in config.eval.extra_seq_lens for s in splits]


def score_contexts(
  evaluator: 'Evaluator', parts, params, splits, config: ml_collections.ConfigDict
) -> dict[str, dict[str, float]]:
  """Figures of `splits` with `evaluator`, then at every extra context
  ('SPLIT@N', config.eval.extra_seq_lens)."""
  results = evaluator.splits(params, splits)
  for n in config.eval.extra_seq_lens:
    at_n = Evaluator(parts, batch_size=config.data.eval_batch_size, seq_len=n)
    for split, figures in at_n.splits(params, splits).items():
      results[f'{split}@{n}'] = figures
  return results


def log_figures(step: int, results: dict, headline: str) -> None:
  for split, figures in results.items():
    metrics.console(
      'eval at step %d | %s | loss %.4f | %s',
      step,
      split,
      figures['loss'],
      metrics.headline(figures, headline),
    )


def restore(config: ml_collections.ConfigDict, workdir: str, mode: str, step: int | None = None):
  """(parts, step, params) of the workdir's checkpoint at `step` (default: the
  latest) under `config`, which must be the one it was trained with (`mode`
  names the program or flag, for the message)."""
  parts = components_lib.build(config)
  manager = checkpoint.make_manager(
    os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints
  )
  step = checkpoint.latest_step(manager) if step is None else step
  if step is None:
    raise FileNotFoundError(
      f'No checkpoint in {workdir}/checkpoints; train first with --mode=train.'
    )
  checkpoint.check_compatible(
    manager,
    step,
    config,
    parts.corpus.tokenizer.identity,
    remedy=f'{mode} reads a model with the config it was trained with: '
    + ('leave --config out (the workdir holds it) or ' if mode.startswith('--mode=') else '')
    + 'use the original values (or the workdir that matches this config).',
  )
  structs, _ = components_lib.abstract_state(parts, parts.train_rows)
  if config.compress.method:
    # research.compress's parameters alone, in their compressed structure.
    abstract = compression.abstract_params(parts, structs.params, config.compress)
    params = checkpoint.restore_params(manager, step, abstract)
  elif config.distill.teacher:  # Its state's carry may hold the teacher's (research/distill.py).
    params = checkpoint.restore_params(manager, step, structs.params)
  else:
    # The parameters evaluation reads (schedule-free's average lives in the optimizer state).
    state = checkpoint.restore(manager, step, structs)
    params = optim.eval_params(config.optim, state.opt_state, state.params)
  manager.close()
  return parts, step, params


def restore_latest(config: ml_collections.ConfigDict, workdir: str, mode: str):
  """`restore` of the latest checkpoint, for `--mode=MODE`."""
  return restore(config, workdir, f'--mode={mode}')


def evaluate_checkpoint(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, dict[str, float]]:
  """`--mode=eval`: scores the latest checkpoint on the valid and test splits
  and writes the model card (MODEL_CARD.md) from those figures."""
  parts, step, params = restore_latest(config, workdir, 'eval')
  evaluator = Evaluator(
    parts, batch_size=config.data.eval_batch_size, seq_len=components_lib.eval_seq_len(config)
  )
  results = score_contexts(evaluator, parts, params, ('valid', 'test'), config)
  log_figures(step, results, parts.corpus.headline)
  if jax.process_index() == 0:
    sample = ''
    if config.sample.num_tokens > 0:
      rng = jax.random.fold_in(jax.random.key(config.seed), step)
      sample = generate(parts, params, rng, config.sample, config.data.seq_len)
    model_card.write(workdir, config, parts, params, step, results, sample)
  return results


def audit_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """`--mode=audit`: the canaries' exposure under the latest checkpoint,
  printed and written to metrics.jsonl (research/privacy/canaries.py)."""
  from research.privacy import canaries  # pylint: disable=g-import-not-at-top

  if not config.audit.enabled:
    raise ValueError(
      '--mode=audit needs config.audit.enabled=True, with the audit settings the run trained '
      'with (its canaries are rebuilt from them).'
    )
  parts, step, params = restore_latest(config, workdir, 'audit')
  records = canaries.run(parts.model, params, config, parts.corpus.tokenizer)
  writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
  # An earlier audit of this step is replaced, not repeated.
  writer.truncate_after(step, also_at_step=tuple(sorted({r['split'] for r in records})))
  canaries.log(step, records, writer)
  writer.close()
  return records
