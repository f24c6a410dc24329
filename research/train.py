"""Training: the jitted step and `train_and_evaluate`, the orchestration.

Shape letters: B batch rows, T time steps, V vocabulary.

`train_step` is a pure function of (state, batch, key); `train_and_evaluate`
wires data, checkpoints, evaluation and logging around it and resumes from the
workdir's latest checkpoint automatically.
"""

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research import checkpoint
from research import components as components_lib
from research import distill as distill_lib
from research import evaluate
from research import faults
from research import flops
from research import gradients
from research import losses
from research import metrics
from research import model_card
from research import models
from research import provenance
from research import sharding
from research import workdir as workdir_lib
from research.components import TrainState
from research.privacy import canaries
from research.privacy import dp_sgd


def train_step(
  state: TrainState,
  batch: dict,
  key: jax.Array,
  teacher_params=None,
  *,
  objective: losses.Objective,
  gradient_fn: Callable,
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  skip_nonfinite: bool = False,
):
  """One optimizer step. Returns (new state, scalar metrics).

  The gradient of `objective.loss_fn` comes from `gradient_fn` (plain or
  accumulated: research/gradients.py), from the state's carry and `teacher_params`. Metrics
  report nats per token whatever the objective, and `nonfinite` (1.0 when
  the loss or the gradient norm is inf or NaN). With `skip_nonfinite`, such
  a step leaves parameters, optimizer state and carry as they were (the step
  counter and the data still advance).
  """
  key = jax.random.fold_in(key, state.step)
  batch = dict(batch, carry=state.carry, denominator=objective.denominator(batch))
  grads, aux = gradient_fn(objective.with_teacher(teacher_params), state.params, batch, key)
  loss = aux['loss_sum'] / aux['weight_sum']
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Truncated backpropagation through time: the carry is data, not a graph.
  new_state = state._replace(
    step=state.step + 1,
    params=params,
    opt_state=opt_state,
    carry=jax.lax.stop_gradient(aux['carry']),
  )
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  extra = losses.step_metrics(aux)  # DP-SGD's clipped_fraction, distillation's distill_kl.
  if skip_nonfinite:

    def keep(new, old):
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = new_state._replace(
      params=keep(new_state.params, state.params),
      opt_state=keep(new_state.opt_state, state.opt_state),
      carry=keep(new_state.carry, state.carry),
    )
  return new_state, {
    'loss': loss,
    'grad_norm': grad_norm,
    'learning_rate': schedule(state.step),
    'nonfinite': 1.0 - finite.astype(jnp.float32),
    **extra,
  }


def step_function(
  *,
  model: models.Model,
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  objective: str = 'token_mean',
  grad_accum_steps: int = 1,
  skip_nonfinite: bool = False,
  gradient_fn: Callable | None = None,
  distill: losses.Distillation | None = None,
):
  """`train_step` with everything static bound: the one place that picks the
  objective (`losses.OBJECTIVES`, `distill`'s term added) and how gradients are made
  from it (`gradient_fn`, default `gradients.make(grad_accum_steps)`)."""
  return functools.partial(
    train_step,
    objective=losses.make_objective(model, objective, distill),
    gradient_fn=gradient_fn or gradients.make(grad_accum_steps),
    optimizer=optimizer,
    schedule=schedule,
    skip_nonfinite=skip_nonfinite,
  )


def make_train_step(parts, state_shardings, config, teacher=None):
  """Jits the run's step once with explicit shardings and a donated state.

  Training and the benchmark both call this; everything the step needs comes
  from `parts`, `config` and `teacher` (`distill.prepare`'s; None: not distilling).
  """
  mesh = parts.mesh
  step = step_function(
    model=parts.model,
    optimizer=parts.optimizer,
    schedule=parts.schedule,
    objective=config.optim.loss,
    grad_accum_steps=config.optim.grad_accum_steps,
    skip_nonfinite=config.skip_nonfinite_steps,
    gradient_fn=dp_sgd.for_run(parts, config),
    distill=teacher and teacher.distillation,
  )
  in_shardings = (state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh))
  jitted = jax.jit(
    step,
    in_shardings=in_shardings + (in_shardings[-1:] if teacher else ()),  # The teacher's params.
    out_shardings=(state_shardings, sharding.replicated(mesh)),
    donate_argnames=('state',),
  )
  return distill_lib.bind(sharding.under_mesh(jitted, mesh), teacher)


def restore_or_init(parts, manager, config, rng, data_iterator):
  """Returns (state, shardings) from the newest readable checkpoint, else
  fresh, its parameters from config.init_from when set (see
  checkpoint.restore_latest_good for damaged checkpoints)."""
  structs, shardings = components_lib.abstract_state(parts, parts.train_rows)
  state = checkpoint.restore_latest_good(
    manager, structs, data_iterator, config, parts.corpus.tokenizer.identity
  )
  if state is None:
    state, _ = components_lib.create_state(parts, rng, parts.train_rows)
    if config.init_from:
      params, source = checkpoint.load_params(
        config.init_from, structs.params, parts.corpus.tokenizer.identity
      )
      # The optimizer state starts from them too (optim.hold_zeros reads their zeros).
      opt_state = jax.jit(parts.optimizer.init, out_shardings=shardings.opt_state)(params)
      state = state._replace(params=params, opt_state=opt_state)
      metrics.console(
        'Parameters from %s (config.init_from); the optimizer, step and data order start fresh.',
        source,
      )
    return state, shardings
  metrics.console('Resuming from the checkpoint at step %d.', int(jax.device_get(state.step)))
  return state, shardings


def _evaluate_and_sample(
  evaluator, parts, params, step, splits, config, writer, sample_rng, final=False
):
  """Scores `splits` (at the end of training also at eval.extra_seq_lens),
  writes and prints the figures, and samples; returns (figures, the sample)."""
  if final:
    results = evaluate.score_contexts(evaluator, parts, params, splits, config)
  else:
    results = evaluator.splits(params, splits)
  for split, figures in results.items():
    writer.write(step, split, {**figures, 'epoch': step / parts.steps_per_epoch})
  evaluate.log_figures(step, results, parts.corpus.headline)
  text = ''
  if config.sample.num_tokens > 0:
    text = evaluate.generate(
      parts, params, jax.random.fold_in(sample_rng, step), config.sample, config.data.seq_len
    )
    metrics.console('sample at step %d:\n%s', step, text)
    writer.write_text(step, 'sample', text)
  writer.flush()
  return results, text


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None = None
) -> dict[str, dict[str, float]]:
  """Trains (resuming from `workdir`), evaluates; returns the final figures.

  `devices` (default: all) is the mesh's device list; a checkpoint written on
  any other mesh restores onto it.
  """
  workdir_lib.check_writable(workdir)
  parts = components_lib.build(config, devices)
  is_lead = jax.process_index() == 0
  if is_lead:
    workdir_lib.write_config(workdir, config)
    provenance.record_start(workdir)
  writer = metrics.MetricWriter(workdir, enabled=is_lead)
  manager = checkpoint.make_manager(
    os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints
  )
  init_rng, dropout_rng, sample_rng = jax.random.split(jax.random.key(config.seed), 3)
  teacher, parts = distill_lib.for_run(parts, config, workdir, manager)  # None: not distilling.
  data_iterator = components_lib.train_iterator(parts, config)
  state, state_shardings = restore_or_init(parts, manager, config, init_rng, data_iterator)
  start = int(jax.device_get(state.step))
  writer.truncate_after(start)
  step_fn = make_train_step(parts, state_shardings, config, teacher)
  evaluator = evaluate.Evaluator(
    parts, batch_size=config.data.eval_batch_size, seq_len=components_lib.eval_seq_len(config)
  )
  total = parts.num_train_steps
  metrics.console(
    'Training %s on %s: %d steps (%d per epoch), mesh %s, from step %d.',
    config.model.name,
    config.data.name,
    total,
    parts.steps_per_epoch,
    dict(parts.mesh.shape),
    start,
  )
  status = 'failed'
  try:
    state = _train_loop(
      config,
      parts,
      state,
      start,
      step_fn,
      data_iterator,
      evaluator,
      writer,
      manager,
      dropout_rng,
      sample_rng,
    )
    workdir_lib.wait(manager, total)
    splits = ('valid', 'test') if config.eval_on_test else ('valid',)
    # A re-run re-scores.
    writer.truncate_after(total, also_at_step=tuple(evaluate.context_splits(splits, config)))
    results, sample = _evaluate_and_sample(
      evaluator, parts, state.params, total, splits, config, writer, sample_rng, final=True
    )
    if config.audit.enabled:
      audit = canaries.run(parts.model, state.params, config, parts.corpus.tokenizer)
      writer.truncate_after(total, also_at_step=tuple(sorted({r['split'] for r in audit})))
      canaries.log(total, audit, writer)
      writer.flush()
    if parts.privacy is not None:
      spent = parts.privacy.figures(total)
      metrics.console(
        'DP-SGD spent epsilon %.4f (PLD accountant; RDP bound %.4f) at delta %g: %d steps, '
        'sampling rate %.6g, noise multiplier %.4g.',
        spent['epsilon'],
        spent['rdp_epsilon'],
        spent['delta'],
        total,
        spent['sampling_rate'],
        spent['noise_multiplier'],
      )
    if is_lead:
      model_card.write(workdir, config, parts, state.params, total, results, sample)
    status = 'finished'
  except faults.Preempted:
    status = 'preempted'
    raise
  finally:
    # Commit saves already started, even when the loop was interrupted.
    try:
      checkpoint.wait(manager)
      manager.close()
    except Exception as e:  # pylint: disable=broad-except
      if status == 'finished':
        raise
      metrics.console('warning: an unfinished checkpoint save failed too: %s', e)
    writer.close()
    if is_lead:
      provenance.record_end(workdir, status)
  return results


def _train_loop(
  config,
  parts,
  state,
  start,
  step_fn,
  data_iterator,
  evaluator,
  writer,
  manager,
  dropout_rng,
  sample_rng,
):
  """Runs steps start+1..total with logging, evaluation and checkpoints.

  Non-finite steps are caught at every log line and before every save, so a
  broken state is never written; a stop signal ends the loop after the
  current step with a checkpoint (faults.Preempted).
  """
  total = parts.num_train_steps
  peak, peak_source = flops.total_peak()
  if peak:
    metrics.console('MFU below is against a peak of %.1f GFLOP/s (%s).', peak / 1e9, peak_source)
  throughput = metrics.Throughput(
    config.data.batch_size * config.data.seq_len,
    total,
    parts.model.flops_per_token(state.params),
    peak,
  )
  throughput.reset(start)
  # Step metrics still on the device, and fetched (and checked) ones not yet
  # logged: each is fetched once, at the next log line or save.
  on_device, fetched = [], []
  with faults.StopSignal() as stop:
    for step in range(start + 1, total + 1):
      batch = sharding.global_batch(next(data_iterator), parts.mesh)
      state, step_metrics = step_fn(state, batch, dropout_rng)
      on_device.append((step, step_metrics))
      if step % config.log_every_steps == 0 or step == total:
        fetched += _fetch_checked(on_device, manager, config.skip_nonfinite_steps)
        on_device = []
        _log_train(writer, step, total, fetched, throughput, parts)
        fetched = []
      if step % parts.eval_every == 0 and step != total:
        _evaluate_and_sample(
          evaluator, parts, state.params, step, ('valid',), config, writer, sample_rng
        )
        throughput.reset(step)
      if step % parts.checkpoint_every == 0 or step == total or stop.received:
        fetched += _fetch_checked(on_device, manager, config.skip_nonfinite_steps)
        on_device = []
        workdir_lib.save(
          manager, step, state, data_iterator, config, parts.corpus.tokenizer.identity
        )
      if stop.received and step != total:
        workdir_lib.wait(manager, step)
        writer.flush()
        raise faults.Preempted(
          f'{stop.name} received: stopped after step {step} of {total} and '
          f'saved a checkpoint there. Run the same command to continue.'
        )
  return state


def _fetch_checked(on_device, manager, skip: bool) -> list[dict]:
  """Fetches (step, metrics) pairs to the host; raises NonFiniteError at the
  first step whose loss or gradient norm is not finite (unless such steps are
  skipped). Returns the host metrics."""
  host = jax.device_get(on_device)
  for step, m in host:
    if m['nonfinite'] and not skip:
      name = 'loss' if not np.isfinite(m['loss']) else 'grad_norm'
      last = checkpoint.latest_step(manager)
      where = (
        f'the last good checkpoint is step {last} in {manager.directory}'
        if last is not None
        else 'there is no checkpoint yet'
      )
      raise faults.NonFiniteError(
        f'Non-finite {name} ({float(m[name])}) at step {step}. The run stopped '
        f'and did not save the state after it; {where}. Lower '
        'optim.learning_rate or check the data, then run again (it resumes '
        'from that checkpoint), or set config.skip_nonfinite_steps=True to '
        'skip such steps.'
      )
  return [m for _, m in host]


def _log_train(writer, step, total, host, throughput, parts):
  """Writes the means of the host step metrics since the last log line (and
  a DP run's privacy spent so far)."""
  corpus, per_epoch = parts.corpus, parts.steps_per_epoch
  # Means over the steps that counted (all of them unless steps were skipped).
  good = [m for m in host if not m['nonfinite']] or host
  loss = float(np.mean([m['loss'] for m in good]))
  figures = metrics.split_figures(loss, corpus.sizes['train'])
  figures['grad_norm'] = float(np.mean([m['grad_norm'] for m in good]))
  figures['skipped_steps'] = float(sum(m['nonfinite'] for m in host))
  figures['learning_rate'] = float(host[-1]['learning_rate'])
  figures.update(throughput.update(step))
  figures['epoch'] = step / per_epoch
  extra = [k for k in losses.STEP_METRICS if k in host[0]]
  figures.update({k: float(np.mean([m[k] for m in good])) for k in extra})
  if parts.privacy is not None:
    figures.update(parts.privacy.figures(step))
  writer.write(step, 'train', figures)
  writer.log_train(step, total, figures, corpus.headline)
