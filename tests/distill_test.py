"""Knowledge distillation: the objective against the formula computed apart,
alpha = 0 as the plain objective, and a tiny teacher distilled into a student
through research.main (recorded, resumed, and refused when the teacher, its
tokenizer or its kind does not fit)."""

import contextlib
import io
import json
import os
import tempfile

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl.testing import absltest

from research import checkpoint
from research import components
from research import config_checks
from research import distill
from research import evaluate
from research import faults
from research import gradients
from research import losses
from research import models
from research import provenance
from research import train
from tests import test_util


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _fixed_logits_model(name):
  """A model whose logits are its parameter `name` (B x T x V), whatever it reads."""

  def apply(params, carry, inputs_BxT, *, train, rng, positions_BxT=None):
    del inputs_BxT, train, rng, positions_BxT
    return params[name], carry

  return test_util.apply_only_model(apply)


def config(tmp, model='lstm', level='char', steps=4, **keys):
  """A tiny config (test_util's) for `steps` steps, with `keys` ('a.b': value) set."""
  c = test_util.tiny_config(tmp, model=model, level=level)
  with c.unlocked():
    c.num_train_steps = steps
    c.sample.num_tokens = 0
    c.eval_on_test = False
    for key, value in keys.items():
      parent, _, leaf = key.rpartition('.')
      (c.get(parent) if parent else c)[leaf] = value
  return c


def _train(c, workdir):
  with contextlib.redirect_stdout(io.StringIO()) as out:
    train.train_and_evaluate(c, workdir)
  return out.getvalue()


def _main(tmp, workdir, teacher, level='char'):
  """research.main on an LSTM student of `config(tmp)`, distilled from `teacher`:
  (exit status, its `error:` lines)."""
  path = os.path.join(tmp, f'student_{level}.py')
  with open(path, 'w') as f:
    f.write(
      'from tests import distill_test\n'
      f'def get_config():\n  return distill_test.config({tmp!r}, level={level!r})\n'
    )
  out = test_util.run_module(
    [
      'research.main',
      f'--config={path}',
      f'--config.distill.teacher={teacher}',
      f'--workdir={workdir}',
    ]
  )
  return out.returncode, [l for l in out.stderr.splitlines() if l.startswith('error:')]


def _value_and_grad(loss_fn):
  return jax.value_and_grad(loss_fn, has_aux=True)  # Eager: quicker than compiling here.


def _saved_state(workdir, step):
  """The train state of checkpoint `step` as saved (nested dicts and lists)."""
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=None)
  saved = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return saved['state']


def _teachers(workdir):
  return [r for r in provenance.read_runs(workdir) if r['event'] == 'teacher']


class ObjectiveTest(absltest.TestCase):
  def test_loss_and_gradient_match_the_formula(self):
    rng = np.random.default_rng(0)
    B, T, V = 3, 5, 7
    student_BxTxV, teacher_BxTxV = 2 * rng.normal(size=(2, B, T, V)).astype(np.float32)
    targets_BxT = rng.integers(V, size=(B, T))
    weights_BxT = (rng.random((B, T)) > 0.3).astype(np.float32)
    alpha, temp = 0.3, 2.5
    # Independently, in float64: CE, KL(p_teacher^T || p_student^T) and the
    # gradient of the mix (that of T^2 KL in the student's logits is T (q - p)).
    log_q, log_p = _log_softmax(student_BxTxV / temp), _log_softmax(teacher_BxTxV / temp)
    ce_BxT = -np.take_along_axis(_log_softmax(student_BxTxV), targets_BxT[..., None], -1)[..., 0]
    kl_BxT = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    ce_sum, kl_sum = (ce_BxT * weights_BxT).sum(), (kl_BxT * weights_BxT).sum()
    grad_BxTxV = (1 - alpha) * (np.exp(_log_softmax(student_BxTxV)) - np.eye(V)[targets_BxT])
    grad_BxTxV += alpha * temp * (np.exp(log_q) - np.exp(log_p))
    grad_BxTxV *= weights_BxT[..., None]
    batch = {
      'inputs': np.zeros((B, T), np.int32),
      'targets': targets_BxT.astype(np.int32),
      'weights': weights_BxT,
      'reset': np.ones((B,), bool),
      'carry': {},
    }
    distillation = losses.Distillation(_fixed_logits_model('teacher'), alpha, temp)
    params = {'student': jnp.asarray(student_BxTxV)}
    teacher_params = {'teacher': jnp.asarray(teacher_BxTxV)}
    for name, denominator in (('token_mean', weights_BxT.sum()), ('sequence_sum', B)):
      with self.subTest(name):
        objective = losses.make_objective(_fixed_logits_model('student'), name, distillation)
        loss_fn = objective.with_teacher(teacher_params)
        (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, losses.Batch(batch, objective.denominator(batch)), jax.random.key(0)
        )
        tol = dict(rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(
          value, ((1 - alpha) * ce_sum + alpha * temp**2 * kl_sum) / denominator, **tol
        )
        np.testing.assert_allclose(grads['student'], grad_BxTxV / denominator, **tol)
        np.testing.assert_allclose(aux.loss_sum, ce_sum, **tol)  # The data loss, reported.
        np.testing.assert_allclose(aux.distill_kl_sum, kl_sum, **tol)
        # The step reports the mean KL per token, the teacher's parameters its keyword.
        optimizer = optax.sgd(0.0)
        state = components.TrainState(jnp.int32(0), params, optimizer.init(params), {})
        _, step_metrics = train.train_step(
          state,
          {k: v for k, v in batch.items() if k != 'carry'},
          jax.random.key(0),
          teacher_params=teacher_params,
          objective=objective,
          gradient_fn=gradients.plain,
          optimizer=optimizer,
          schedule=lambda step: 0.0,
        )
        np.testing.assert_allclose(step_metrics['distill_kl'], kl_sum / weights_BxT.sum(), **tol)
        np.testing.assert_allclose(step_metrics['loss'], ce_sum / weights_BxT.sum(), **tol)
    self.assertGreater(kl_sum, 0.1)  # The teacher's term is not vanishing.

  def test_alpha_zero_is_the_plain_objective_and_micro_batches_add_up(self):
    tmp = self.create_tempdir().full_path
    B, T, V = 4, 11, 13
    # No dropout: micro-batches draw their own masks (research/gradients.py).
    student = models.get_model(
      config(tmp, 'transformer', **{'model.dropout_rate': 0.0}).model, V, T
    )
    teacher = models.get_model(config(tmp, model='lstm').model, V, T)  # A fresh carry per row.
    params = student.init(jax.random.key(1))
    teacher_params = teacher.init(jax.random.key(2))
    rng = np.random.default_rng(3)
    batch = {
      'inputs': rng.integers(V, size=(B, T)).astype(np.int32),
      'targets': rng.integers(V, size=(B, T)).astype(np.int32),
      'weights': (rng.random((B, T)) > 0.2).astype(np.float32),
      'reset': np.ones((B,), bool),
      'carry': {},
    }
    key = jax.random.key(4)
    plain = losses.make_objective(student, 'token_mean')
    batch = losses.Batch(batch, plain.denominator(batch))
    (want, _), want_grads = _value_and_grad(plain.loss_fn)(params, batch, key)
    for alpha in (0.0, 0.5):
      distilled = losses.make_objective(
        student, 'token_mean', losses.Distillation(teacher, alpha, 2.0)
      )
      loss_fn = distilled.with_teacher(teacher_params)
      (got, aux), grads = _value_and_grad(loss_fn)(params, batch, key)
      if alpha == 0.0:
        np.testing.assert_array_equal(got, want)
        jax.tree.map(np.testing.assert_array_equal, grads, want_grads)
        self.assertGreater(float(aux.distill_kl_sum), 0.0)  # Computed, weighted 0.
      else:
        self.assertNotAlmostEqual(float(got), float(want), places=3)
        # Two micro-batches give the whole batch's gradient and summed KL.
        accum_grads, accum_aux = gradients.accumulated(2)(loss_fn, params, batch, key)
        for name in ('loss_sum', 'weight_sum', 'distill_kl_sum'):
          np.testing.assert_allclose(getattr(accum_aux, name), getattr(aux, name), rtol=1e-5)
        jax.tree.map(
          lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), accum_grads, grads
        )
    self.assertFalse(np.allclose(accum_grads['embed']['embedding'], 0.0))

  def test_a_carried_teacher_reads_from_its_own_carry_and_hands_it_on(self):
    tmp = self.create_tempdir().full_path
    B, T, V = 3, 6, 11
    lstm = models.get_model(config(tmp, model='lstm', **{'model.dropout_rate': 0.0}).model, V, T)
    params, teacher_params = lstm.init(jax.random.key(1)), lstm.init(jax.random.key(2))
    rng = np.random.default_rng(3)
    carry, teacher_carry = (
      jax.tree.map(lambda c: jnp.asarray(rng.normal(size=c.shape), c.dtype), lstm.init_carry(B))
      for _ in range(2)
    )
    batch = {
      'inputs': rng.integers(V, size=(B, T)).astype(np.int32),
      'targets': rng.integers(V, size=(B, T)).astype(np.int32),
      'weights': np.ones((B, T), np.float32),
      'reset': np.array([False, True, False]),  # Row 1 starts a new stream: both carries reset.
    }
    objective = losses.make_objective(
      lstm, 'token_mean', losses.Distillation(lstm, 0.5, 2.0, carried=True)
    )
    denominator = objective.denominator(batch)
    _, aux = objective.with_teacher(teacher_params)(
      params, losses.Batch(dict(batch, carry=(carry, teacher_carry)), denominator), None
    )
    # Apart: each model from its own carry, as an evaluation would run it.
    _, _, logits, want_carry = losses.forward(
      lstm, params, dict(batch, carry=carry), train=False, rng=None
    )
    _, _, teacher_logits, want_teacher_carry = losses.forward(
      lstm, teacher_params, dict(batch, carry=teacher_carry), train=False, rng=None
    )
    got_carry, got_teacher_carry = aux.carry
    tol = dict(rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), got_carry, want_carry)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, **tol), got_teacher_carry, want_teacher_carry
    )
    kl = losses.distill_kl_sum(logits, teacher_logits, batch['weights'], 2.0)
    np.testing.assert_allclose(aux.distill_kl_sum, kl, **tol)
    # A fresh teacher carry gives another KL: the carry handed in is the one read.
    fresh = losses.make_objective(lstm, 'token_mean', losses.Distillation(lstm, 0.5, 2.0))
    _, fresh_aux = fresh.with_teacher(teacher_params)(
      params, losses.Batch(dict(batch, carry=carry), denominator), None
    )
    self.assertGreater(abs(float(fresh_aux.distill_kl_sum) / float(kl) - 1), 0.01)

  def test_distillation_does_not_combine_with_dp_sgd(self):
    c = config(
      self.create_tempdir().full_path,
      **{'distill.teacher': '/a/run', 'privacy.enabled': True, 'privacy.noise_multiplier': 1.0},
    )
    with self.assertRaisesRegex(
      ValueError, r"distill.teacher='/a/run' does not combine with privacy.enabled: .* DP-SGD"
    ):
      config_checks.check(c)


class DistillRunTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._dir = tempfile.TemporaryDirectory()
    cls.tmp = cls._dir.name
    cls.teacher = os.path.join(cls.tmp, 'teacher')
    _train(config(cls.tmp, model='transformer'), cls.teacher)

  @classmethod
  def tearDownClass(cls):
    cls._dir.cleanup()
    super().tearDownClass()

  def test_student_trains_records_resumes_and_refuses_a_changed_teacher(self):
    tmp, teacher = self.tmp, self.teacher
    student = os.path.join(tmp, 'student')
    status, errors = _main(tmp, student, teacher)
    self.assertEqual((status, errors), (0, []))
    records = provenance.read_jsonl(os.path.join(student, 'metrics.jsonl'))
    kl = [r['distill_kl'] for r in records if r['split'] == 'train']
    self.assertLen(kl, 1)
    self.assertTrue(np.isfinite(kl[0]) and kl[0] > 0)
    want = distill.checksum(test_util.final_state(config(tmp, model='transformer'), teacher).params)
    with open(os.path.join(student, 'MODEL_CARD.md'), encoding='utf-8') as f:
      self.assertIn(f'Distilled from the teacher `{teacher}` (alpha 0.5, temperature 2)', f.read())
    [recorded] = _teachers(student)
    self.assertEqual((recorded['path'], recorded['step'], recorded['sha256']), (teacher, 4, want))
    # The student's checkpoint holds the student's state alone.
    distilled = config(tmp, steps=8, **{'distill.teacher': teacher})
    saved = {'state': _saved_state(student, 4)}
    want_state = test_util.final_state(distilled, student)  # As a plain run's state.
    self.assertEqual(
      sorted(np.shape(x) for x in jax.tree.leaves(saved['state'])),
      sorted(np.shape(x) for x in jax.tree.leaves(want_state)),
    )

    log = _train(distilled, student)
    self.assertIn('Resuming from the checkpoint at step 4', log)
    self.assertIn(f'Distilling from the transformer teacher {teacher} step 4 (sha256 {want})', log)
    records = provenance.read_jsonl(os.path.join(student, 'metrics.jsonl'))
    self.assertEqual([r['step'] for r in records if 'distill_kl' in r], [4, 8])
    self.assertLen(_teachers(student), 2)

    # An LSTM (the student) as the teacher of an LSTM student reading streams: the teacher's
    # carry is kept in the checkpointed state, so a resumed run is the uninterrupted one.
    from_lstm = {'distill.teacher': student}
    resumed, whole = (os.path.join(tmp, name) for name in ('lstm_resumed', 'lstm_whole'))
    _train(config(tmp, steps=2, **from_lstm), resumed)
    log = _train(config(tmp, steps=4, **from_lstm), resumed)
    self.assertIn('Resuming from the checkpoint at step 2', log)
    _train(config(tmp, steps=4, **from_lstm), whole)
    got, uninterrupted = (_saved_state(path, 4) for path in (resumed, whole))
    self.assertLen(uninterrupted['carry'], 2)  # (the student's carry, the teacher's)
    self.assertFalse(all(np.allclose(c, 0) for c in jax.tree.leaves(uninterrupted['carry'][1])))
    jax.tree.map(np.testing.assert_array_equal, got, uninterrupted)
    # Its evaluation reads the student's parameters alone.
    _, step, params = evaluate.restore(config(tmp, steps=4, **from_lstm), whole, 'test')
    self.assertEqual(step, 4)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), uninterrupted['params'])

    # The teacher trains on: the student's checkpoints came from the old one.
    _train(config(tmp, model='transformer', steps=6), teacher)
    changed = f'sha256 {want} -> {re.escape(teacher)} step 6 sha256 [0-9a-f]{{64}}'
    with self.assertRaisesRegex(ValueError, 'distill.teacher changed since .* ' + changed):
      _train(config(tmp, steps=12, **{'distill.teacher': teacher}), student)
    self.assertLen(_teachers(student), 2)

  def test_a_teacher_that_does_not_fit_is_one_error_line(self):
    tmp, teacher = self.tmp, self.teacher
    status, errors = _main(tmp, os.path.join(tmp, 'word'), teacher, level='word')
    self.assertEqual(status, faults.EXIT_BAD_INPUT)
    self.assertLen(errors, 1)
    self.assertRegex(errors[0], r"does not fit this run: tokenizer: 'char:\w+' -> 'word:\w+'")
    self.assertIn("it was trained with data.name='text_file', data.level='char'", errors[0])

    unfinished = os.path.join(tmp, 'unfinished')
    os.makedirs(os.path.join(unfinished, 'checkpoints'))
    with open(os.path.join(unfinished, provenance.RUNS_FILE), 'w') as f:
      f.write(json.dumps({'event': 'start', 'time': 0}) + '\n')
    cases = {
      os.path.join(tmp, 'nowhere'): ('is not a workdir', {}),
      unfinished: ("has not finished training .* is 'start'", {}),
      teacher: (r'context \d+ .* shorter than the student.s data.seq_len=13', {'data.seq_len': 13}),
    }
    for source, (message, keys) in cases.items():
      with self.subTest(message):
        with self.assertRaisesRegex(ValueError, message):
          _train(config(tmp, **{'distill.teacher': source, **keys}), os.path.join(tmp, 'x'))


if __name__ == '__main__':
  absltest.main()
