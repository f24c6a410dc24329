"""Training: the jitted step and `train_and_evaluate`, the orchestration.

Shape letters: B batch rows, T time steps, V vocabulary.

`train_step` is a pure function of (state, batch, key), the teacher's
parameters of a distilled run beside them; `make_train_step` jits it once
(`TrainStep`). `train_and_evaluate` wires data, checkpoints, evaluation and
logging around it (`Run`, `_train_loop`) and resumes from the workdir's
latest checkpoint automatically.
"""

import dataclasses
import functools
import os
from typing import Any, Callable, NamedTuple

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
from research import host
from research import losses
from research import metrics
from research import model_card
from research import models
from research import optim
from research import provenance
from research import sharding
from research import workdir as workdir_lib
from research.components import TrainState
from research.privacy import canaries
from research.privacy import dp_sgd
from research.privacy import noise


class StepMetrics(NamedTuple):
  """The scalars a train step reports; the step returns them as a dict
  (`as_dict`) without the fields its run does not have (None)."""

  loss: jax.Array  # Nats per token of the data, whatever the objective.
  grad_norm: jax.Array  # The global norm of the gradient.
  learning_rate: jax.Array  # The schedule's rate at this step.
  nonfinite: jax.Array  # 1.0 when the loss or the gradient norm is inf or NaN.
  clipped_fraction: jax.Array | None = None  # DP-SGD's (`losses.Aux.clipped_fraction`).
  distill_kl: jax.Array | None = None  # A distilled run's mean KL per token, nats.
  # Mean over the weighted tokens of z = logsumexp(logits), nats (`losses.Aux.log_z_sum`).
  log_z: jax.Array | None = None

  def as_dict(self) -> dict[str, jax.Array]:
    return {k: v for k, v in self._asdict().items() if v is not None}


def train_step(
  state: TrainState,
  batch: dict,
  key: jax.Array,
  teacher_params: Any = None,
  *,
  objective: losses.Objective,
  gradient_fn: Callable,
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  skip_nonfinite: bool = False,
):
  """One optimizer step. Returns (new state, `StepMetrics.as_dict()`).

  The gradient of `objective.loss_fn` comes from `gradient_fn` (plain,
  accumulated or DP-SGD's: research/gradients.py), from the state's carry and
  `teacher_params` (None: not distilling). With `skip_nonfinite`, a step
  whose loss or gradient norm is not finite leaves parameters, optimizer
  state and carry as they were (the step counter and the data still advance).
  """
  key = jax.random.fold_in(key, state.step)
  rows = dict(batch, carry=state.carry)
  step_batch = losses.Batch(rows=rows, denominator=objective.denominator(batch))
  grads, aux = gradient_fn(objective.with_teacher(teacher_params), state.params, step_batch, key)
  loss = aux.loss_sum / aux.weight_sum
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Truncated backpropagation through time: the carry is data, not a graph.
  new_state = state._replace(
    step=state.step + 1, params=params, opt_state=opt_state, carry=jax.lax.stop_gradient(aux.carry)
  )
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # Summed KL over the token count, so micro-batches add up.
  distill_kl = None if aux.distill_kl_sum is None else aux.distill_kl_sum / aux.weight_sum
  log_z = None if aux.log_z_sum is None else aux.log_z_sum / aux.weight_sum
  if skip_nonfinite:

    def keep(new, old):
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = new_state._replace(
      params=keep(new_state.params, state.params),
      opt_state=keep(new_state.opt_state, state.opt_state),
      carry=keep(new_state.carry, state.carry),
    )
  return new_state, StepMetrics(
    loss=loss,
    grad_norm=grad_norm,
    learning_rate=schedule(state.step),
    nonfinite=1.0 - finite.astype(jnp.float32),
    clipped_fraction=aux.clipped_fraction,
    distill_kl=distill_kl,
    log_z=log_z,
  ).as_dict()


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
  z_loss: float = 0.0,
):
  """`train_step` with everything static bound: the one place that picks the
  objective (`losses.OBJECTIVES`, `distill`'s term and `z_loss`'s added) and how
  gradients are made from it (`gradient_fn`, default `gradients.make(grad_accum_steps)`)."""
  return functools.partial(
    train_step,
    objective=losses.make_objective(model, objective, distill, z_loss=z_loss),
    gradient_fn=gradient_fn or gradients.make(grad_accum_steps),
    optimizer=optimizer,
    schedule=schedule,
    skip_nonfinite=skip_nonfinite,
  )


@dataclasses.dataclass(frozen=True, eq=False)
class TrainStep:
  """The run's jitted step: `step(state, batch, key) -> (state, metrics)`, and
  `step.compile(state, batch, key)` for the benchmark's compile.

  `teacher_params` is passed to `jitted` at every call, an argument of the
  compiled program (not a constant in it). jax.jit takes no keyword argument
  where shardings are explicit, so `jitted` takes it in the fourth place.
  """

  jitted: Callable  # `train_step` jitted (under the mesh): (state, batch, key, teacher_params).
  teacher_params: Any = None  # `distill.Teacher.params`; None when not distilling.

  def __call__(self, state: TrainState, batch: dict, key: jax.Array):
    return self.jitted(state, batch, key, self.teacher_params)

  def compile(self, state: TrainState, batch: dict, key: jax.Array):  # The first call reuses it.
    return self.jitted.compile(state, batch, key, self.teacher_params)


def make_train_step(
  parts: components_lib.Components,
  state_shardings: Any,
  config: ml_collections.ConfigDict,
  teacher: distill_lib.Teacher | None = None,
) -> TrainStep:
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
    z_loss=config.optim.z_loss,
  )
  replicated = sharding.replicated(mesh)
  jitted = jax.jit(
    step,
    # The key and the teacher's parameters (None, no leaves, when not distilling) replicated.
    in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated, replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnames=('state',),
  )
  jitted = sharding.under_mesh(jitted, mesh)
  if mesh.devices.size == 1 and mesh.devices.flat[0].platform == 'cpu':
    jitted = host.CompiledAtFirstCall(jitted, report=metrics.console)
  return TrainStep(jitted, teacher_params=teacher.params if teacher else None)


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


class Run(NamedTuple):
  """What a training run is made of, built once by `train_and_evaluate`."""

  config: ml_collections.ConfigDict
  workdir: str
  parts: components_lib.Components
  step_fn: TrainStep
  data_iterator: Any  # The checkpointable grain iterator of training batches.
  evaluator: evaluate.Evaluator
  writer: metrics.MetricWriter
  manager: Any  # The workdir's Orbax checkpoint manager.
  dropout_rng: jax.Array  # Folded with the step inside the step (DP: noise.Source.step_key).
  sample_rng: jax.Array  # Folded with the step for each sample.
  # `model.stats` jitted under the mesh, `(params, carry, inputs_BxT) -> {name: scalar}`, for the
  # train lines (config.model_stats); None when off or the family has none.
  stats_fn: Callable | None = None
  randomness: noise.Source = noise.Source()  # A DP run's noise source; checkpoints record it.


def eval_params(run: Run, state: TrainState):
  """The parameters evaluation reads: the trained ones, or the optimizer's
  average (schedule-free's x; research/optim.py `eval_params`)."""
  return optim.eval_params(run.config.optim, state.opt_state, state.params)


def _evaluate_and_sample(run: Run, params, step: int, splits, *, final: bool = False):
  """Scores `splits` (at the end of training also at eval.extra_seq_lens),
  writes and prints the figures, and samples; returns (figures, the sample)."""
  config, parts, writer = run.config, run.parts, run.writer
  if final:
    results = evaluate.score_contexts(run.evaluator, parts, params, splits, config)
  else:
    results = run.evaluator.splits(params, splits)
  for split, figures in results.items():
    writer.write(step, split, {**figures, 'epoch': step / parts.steps_per_epoch})
  evaluate.log_figures(step, results, parts.corpus.headline)
  text = ''
  if config.sample.num_tokens > 0:
    text = evaluate.generate(
      parts, params, jax.random.fold_in(run.sample_rng, step), config.sample, config.data.seq_len
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
  run, state = _start(config, workdir, devices)
  is_lead = jax.process_index() == 0
  status = 'failed'
  try:
    state = _train_loop(run, state)
    results = _finish(run, state)
    status = 'finished'
  except faults.Preempted:
    status = 'preempted'
    raise
  except faults.NonFiniteError:
    status = 'diverged'  # A result, not a fault: the experiment runner counts it so.
    raise
  finally:
    # Commit saves already started, even when the loop was interrupted.
    try:
      checkpoint.wait(run.manager)
      run.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      if status == 'finished':
        raise
      metrics.warn('warning: an unfinished checkpoint save failed too: %s', e)
    run.writer.close()
    if is_lead:
      provenance.record_end(workdir, status)
  return results


def _start(config: ml_collections.ConfigDict, workdir: str, devices) -> tuple[Run, TrainState]:
  """Builds the run in `workdir` (recording its start) and its state, restored
  from the latest checkpoint or fresh."""
  parts = components_lib.build(config, devices)
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config)
    provenance.record_start(workdir)
  writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
  manager = checkpoint.make_manager(
    os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints
  )
  init_rng, dropout_rng, sample_rng = jax.random.split(jax.random.key(config.seed), 3)
  teacher, parts = distill_lib.for_run(parts, config, workdir, manager)  # None: not distilling.
  # A DP run's secret (its checkpoints', else fresh) before the iterator that samples with it.
  parts, source = noise.for_run(parts, config, manager)
  data_iterator = components_lib.train_iterator(parts, config, source.sampling_seed(config.seed))
  state, state_shardings = restore_or_init(parts, manager, config, init_rng, data_iterator)
  start = int(jax.device_get(state.step))
  writer.truncate_after(start)
  run = Run(
    config=config,
    workdir=workdir,
    parts=parts,
    step_fn=make_train_step(parts, state_shardings, config, teacher),
    data_iterator=data_iterator,
    evaluator=evaluate.Evaluator(
      parts, batch_size=config.data.eval_batch_size, seq_len=components_lib.eval_seq_len(config)
    ),
    writer=writer,
    manager=manager,
    dropout_rng=source.step_key(dropout_rng),
    sample_rng=sample_rng,
    stats_fn=stats_function(parts, config),
    randomness=source,
  )
  metrics.console(
    'Training %s on %s: %d steps (%d per epoch), mesh %s, from step %d.',
    config.model.name,
    config.data.name,
    parts.num_train_steps,
    parts.steps_per_epoch,
    dict(parts.mesh.shape),
    start,
  )
  return run, state


def stats_function(parts: components_lib.Components, config) -> Callable | None:
  """`Run.stats_fn`: the model's statistics pass, jitted once, its figures
  replicated; None when config.model_stats is off or the family has none."""
  if not config.model_stats or parts.model.stats is None:
    return None
  jitted = jax.jit(parts.model.stats, out_shardings=sharding.replicated(parts.mesh))
  return sharding.under_mesh(jitted, parts.mesh)


def _finish(run: Run, state: TrainState) -> dict[str, dict[str, float]]:
  """After the last step: the final evaluation and sample, the canary audit,
  the privacy spent and the model card; returns the final figures."""
  config, parts, writer = run.config, run.parts, run.writer
  total = parts.num_train_steps
  workdir_lib.wait(run.manager, total)
  splits = ('valid', 'test') if config.eval_on_test else ('valid',)
  # A re-run re-scores.
  writer.truncate_after(total, also_at_step=tuple(evaluate.context_splits(splits, config)))
  params = eval_params(run, state)
  results, sample = _evaluate_and_sample(run, params, total, splits, final=True)
  if config.audit.enabled:
    audit = canaries.run(parts.model, params, config, parts.corpus.tokenizer)
    writer.truncate_after(total, also_at_step=tuple(sorted({r['split'] for r in audit})))
    canaries.log(total, audit, writer)
    writer.flush()
  if parts.privacy is not None:
    metrics.console('%s', parts.privacy.summary(total))
  if jax.process_index() == 0:
    model_card.write(run.workdir, config, parts, params, total, results, sample)
  return results


def _train_loop(run: Run, state: TrainState) -> TrainState:
  """Runs the steps after the state's to the last, with logging, evaluation
  and checkpoints.

  Non-finite steps are caught at every log line and before every save, so a
  broken state is never written; a stop signal ends the loop after the
  current step with a checkpoint (faults.Preempted).
  """
  config, parts, manager = run.config, run.parts, run.manager
  start, total = int(jax.device_get(state.step)), parts.num_train_steps
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
  if start == 0 and config.eval_at_start:
    # The loss at initialisation (a learning-rate sweep's reference); no sample.
    run.writer.truncate_after(0, also_at_step=('valid',))
    initial = run.evaluator.splits(eval_params(run, state), ('valid',))
    run.writer.write(0, 'valid', {**initial['valid'], 'epoch': 0.0})
    evaluate.log_figures(0, initial, parts.corpus.headline)
    throughput.reset(start)
  # Step metrics still on the device, and fetched (and checked) ones not yet
  # logged: each is fetched once, at the next log line or save.
  on_device, fetched = [], []
  with faults.StopSignal() as stop:
    for step in range(start + 1, total + 1):
      batch = sharding.global_batch(next(run.data_iterator), parts.mesh)
      state, step_metrics = run.step_fn(state, batch, run.dropout_rng)
      on_device.append((step, step_metrics))
      if step % config.log_every_steps == 0 or step == total:
        # The statistics of the parameters after this step, on its batch.
        model_stats = run.stats_fn and run.stats_fn(state.params, state.carry, batch['inputs'])
        fetched += _fetch_checked(on_device, manager, config.skip_nonfinite_steps)
        on_device = []
        _log_train(run, step, fetched, throughput, model_stats)
        fetched = []
      if step % parts.eval_every == 0 and step != total:
        _evaluate_and_sample(run, eval_params(run, state), step, ('valid',))
        throughput.reset(step)
      if step % parts.checkpoint_every == 0 or step == total or stop.received:
        fetched += _fetch_checked(on_device, manager, config.skip_nonfinite_steps)
        on_device = []
        identity, record = parts.corpus.tokenizer.identity, run.randomness.record()
        workdir_lib.save(manager, step, state, run.data_iterator, config, identity, record)
      if stop.received and step != total:
        workdir_lib.wait(manager, step)
        run.writer.flush()
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


def _log_train(
  run: Run, step: int, host: list[dict], throughput: metrics.Throughput, model_stats=None
):
  """Writes the means of the host step metrics since the last log line (and
  a DP run's privacy spent so far, and `model_stats`, the model's statistics
  at this step, when given)."""
  parts, writer = run.parts, run.writer
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
  # The step metrics a loss function may leave out (DP-SGD's, distillation's, log_z).
  extra = [k for k in StepMetrics._field_defaults if k in host[0]]
  figures.update({k: float(np.mean([m[k] for m in good])) for k in extra})
  if parts.privacy is not None:
    figures.update(parts.privacy.figures(step))
  if model_stats is not None:
    figures.update({k: float(v) for k, v in jax.device_get(model_stats).items()})
  writer.write(step, 'train', figures)
  writer.log_train(step, parts.num_train_steps, figures, corpus.headline)
