"""Tests of the step profile's attribution (research/profile.py): the HLO
parse, each kind's rule, exclusive times of nested events, and a real trace."""

import jax
import jax.numpy as jnp
from absl.testing import absltest

from research import profile

# A module's text as XLA prints it, cut to what the parse reads: a computation
# header holding '=' (in /*index=5*/), a while loop whose body calls a fusion,
# and instructions from each scope a train step has.
_HLO = """HloModule jit_train_step

%fused_dot (param_0: f32[7,11], param_1: f32[11,13]) -> f32[7,13] {
  %param_0 = f32[7,11]{1,0} parameter(0)
  %param_1 = f32[11,13]{1,0} parameter(1)
  ROOT %dot.1 = f32[7,13]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}
}

%fused_move (param_0.1: f32[7,13]) -> f32[13,7] {
  %param_0.1 = f32[7,13]{1,0} parameter(0)
  ROOT %transpose.2 = f32[13,7]{0,1} transpose(%param_0.1), dimensions={1,0}
}

%body.3 (arg: (s32[], f32[7,13], /*index=2*/f32[7,13])) -> (s32[], f32[7,13]) {
  %arg = (s32[], f32[7,13]) parameter(0)
  ROOT %loop_dot = f32[7,13]{1,0} fusion(%arg), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(train_step)/jvp(LSTMLanguageModel)/lstm_0/while/body/dot_general"}
}

%cond.4 (arg.1: (s32[], f32[7,13])) -> pred[] {
  ROOT %lt.5 = pred[] compare(%arg.1, %arg.1), direction=LT
}

ENTRY %main.6 (p: f32[7,11]) -> f32[7,13] {
  %head = f32[7,13]{1,0} fusion(%p, %p), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(train_step)/transpose(jvp(Transformer))/block_0/attn/qkv/dot_general"}
  %softmax_max = f32[7]{0} reduce(%head), metadata={op_name="jit(train_step)/jvp(Transformer)/block_0/attn/reduce_max"}
  %ln = f32[7,13]{1,0} multiply(%head, %head), metadata={op_name="jit(train_step)/jvp(Transformer)/block_0/ln_1/mul"}
  %take_grad = f32[7,13]{1,0} scatter(%head, %head), metadata={op_name="jit(train_step)/transpose(jvp(Transformer))/embed/jit(_take)/scatter-add"}
  %take = f32[7,13]{1,0} gather(%head, %head), metadata={op_name="jit(train_step)/jvp(Transformer)/embed/jit(_take)/gather"}
  %logsumexp = f32[7]{0} exponential(%head), metadata={op_name="jit(train_step)/jvp()/exp"}
  %adam = f32[7,13]{1,0} sqrt(%head), metadata={op_name="jit(train_step)/sqrt"}
  %moved = f32[13,7]{0,1} fusion(%head), kind=kLoop, calls=%fused_move
  %gelu = f32[7,13]{1,0} multiply(%head, %head), metadata={op_name="jit(train_step)/jvp(Transformer)/block_0/mlp/erf"}
  %clip_sum = f32[7,13]{1,0} add(%head, %head), metadata={op_name="jit(train_step)/dp_sgd/while/body/closed_call/cond/branch_1_fun/add"}
  %noise = f32[7,13]{1,0} erf-inv(%head), metadata={op_name="jit(train_step)/dp_sgd/jit(_normal)/jit(_normal_real)/erf_inv"}
  ROOT %while.7 = (s32[], f32[7,13]) while(%head), condition=%cond.4, body=%body.3, metadata={op_name="jit(train_step)/jvp(LSTMLanguageModel)/lstm_0/while"}
}
"""


class AttributionTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.instructions, self.opcodes = profile.parse_hlo(_HLO)

  def test_parse_reads_opcodes_scopes_calls_and_computations(self):
    head = self.instructions['head']
    self.assertEqual(
      (head.opcode, head.calls, head.computation), ('fusion', ('fused_dot',), 'main.6')
    )
    self.assertEqual(self.instructions['while.7'].calls, ('cond.4', 'body.3'))
    self.assertEqual(self.instructions['loop_dot'].computation, 'body.3')  # Header with '='.
    self.assertEqual(self.opcodes['fused_dot'], {'parameter', 'dot'})
    self.assertEqual(
      profile.loop_computations(self.instructions), {'cond.4', 'body.3', 'fused_dot'}
    )

  def test_each_kind(self):
    expected = {
      'head': 'matmul',  # A fusion of a dot, whatever its scope.
      'loop_dot': 'matmul',
      'softmax_max': 'attention softmax and masks',
      'ln': 'norms',
      'take_grad': 'embedding gradient',
      'take': 'embedding lookup',
      'logsumexp': 'loss (log-softmax, target gather)',
      'adam': 'optimizer update and clipping',
      'moved': 'layout copies and transposes',
      'gelu': 'other elementwise (activations, residuals, gates, dropout)',
      'clip_sum': 'DP-SGD per-row clipping and sums',
      'noise': 'DP-SGD noise',
    }
    got = {n: profile.kind(self.instructions[n], self.opcodes) for n in expected}
    self.assertEqual(got, expected)
    self.assertEqual(profile.kind(None, self.opcodes), 'thunk executor (scheduling)')
    self.assertContainsSubset(set(expected.values()), set(profile.KINDS))


class TimesTest(absltest.TestCase):
  def test_nested_events_are_subtracted_on_their_thread_only(self):
    events = [
      {'name': 'while', 'tid': 1, 'ts': 0.0, 'dur': 10.0},
      {'name': 'dot', 'tid': 1, 'ts': 1.0, 'dur': 3.0},
      {'name': 'dot', 'tid': 1, 'ts': 5.0, 'dur': 2.0},
      {'name': 'add', 'tid': 2, 'ts': 2.0, 'dur': 7.0},  # Another thread: not inside 'while'.
      {'name': 'add', 'tid': 1, 'ts': 11.0, 'dur': 1.0},  # After 'while' closed.
    ]
    self.assertEqual(profile.exclusive_times(events), {'while': 5.0, 'dot': 5.0, 'add': 8.0})
    # Busy: [0, 10] and [11, 12]; the other thread's [2, 9] lies inside.
    self.assertEqual(profile.busy_time(events), 11.0)


class TraceTest(absltest.TestCase):
  def test_a_scan_of_matmuls_is_attributed_to_matmuls_inside_loops(self):
    w = jnp.full((64, 64), 0.01, jnp.float32)

    @jax.jit
    def step(x):
      def body(h, _):
        return jnp.tanh(h @ w), None

      h, _ = jax.lax.scan(body, x, None, length=13)
      return h @ w

    x = jnp.ones((32, 64), jnp.float32)
    text = step.lower(x).compile().as_text()
    result = profile.breakdown(lambda: jax.block_until_ready(step(x)), text, calls=3)
    kinds = result['kinds']
    self.assertEqual(set(kinds), set(profile.KINDS))
    self.assertGreater(kinds['matmul'], 0)
    self.assertGreater(result['in_loops_s'], 0)
    self.assertLessEqual(result['in_loops_s'], sum(kinds.values()))
    self.assertEqual(result['calls'], 3)  # Each traced call found by its annotation.
    self.assertGreater(result['wall_s'], 0)
    self.assertBetween(result['host_share'], 0.0, 1.0)
    self.assertTrue(result['top'])
    self.assertIn('| matmul |', profile.markdown(result))


if __name__ == '__main__':
  absltest.main()
