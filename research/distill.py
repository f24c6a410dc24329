"""Knowledge distillation (Hinton et al. 2015): the frozen teacher of a run.

`config.distill.teacher` names a finished workdir. `load` builds the teacher's
model from the config its latest checkpoint was saved with, on the student's
vocabulary, and restores only its parameters, replicated on the mesh; they are
an argument of the jitted step (`train.TrainStep.teacher_params`), never part
of the train state, so the student's checkpoints do not hold them. What the
student learned from is recorded instead: the teacher's path, step and a
sha256 of its parameters, in the student's runs.jsonl (`record`), and a
resumed run whose teacher changed is refused. The objective itself is
`losses.Distillation`.

A recurrent teacher of a student that reads independent windows reads every
row from a fresh carry, as the student does. A student that reads streams (an
LSTM, whose rows continue from batch to batch) has its recurrent teacher keep
its own carry along each row: `prepare` puts the teacher's model in the
components, the train state's carry becomes the pair (student's, teacher's),
and it is checkpointed with the state, so a resumed run continues both.
"""

import hashlib
import json
import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from research import checkpoint
from research import components as components_lib
from research import losses
from research import metrics
from research import models
from research import provenance
from research import sharding
from research import workdir as workdir_lib


class Teacher(NamedTuple):
  distillation: losses.Distillation  # The teacher's model, alpha and temperature.
  params: Any  # Its parameters, replicated on the mesh.
  path: str  # The teacher's workdir, absolute.
  step: int  # The checkpoint step its parameters come from.
  checksum: str  # sha256 of its parameters (`checksum`).


def checksum(params: Any) -> str:
  """sha256 over every parameter's path, dtype, shape and bytes, in path order."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    array = np.asarray(leaf)
    digest.update(f'{sharding.param_path(path)} {array.dtype} {array.shape}\n'.encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _check_finished(path: str, key: str) -> None:
  """A teacher still training (or stopped) would change under the student."""
  runs = provenance.read_runs(path)
  if runs and not (runs[-1]['event'] == 'end' and runs[-1].get('status') == 'finished'):
    last = runs[-1]
    state = f'{last["event"]} {last.get("status", "")}'.strip()
    raise ValueError(
      f'{key} has not finished training (the last line of its runs.jsonl is {state!r}); '
      'run its command again until it finishes, or point at a finished run.'
    )


def _teacher_config(path: str, key: str) -> tuple[ml_collections.ConfigDict, dict, int]:
  """(the config the teacher's latest checkpoint was saved with, keys added
  since at their defaults; the identity it recorded; its step)."""
  if not os.path.isdir(os.path.join(path, 'checkpoints')):
    raise ValueError(
      f'{key} is not a workdir (it has no checkpoints/ folder); point it at the workdir of a '
      'finished training run.'
    )
  _check_finished(path, key)
  manager = checkpoint.make_manager(os.path.join(path, 'checkpoints'), max_to_keep=None)
  step = checkpoint.latest_step(manager)
  identity = checkpoint.restore_identity(manager, step) if step is not None else {}
  manager.close()
  if step is None:
    raise ValueError(f'{key} holds no checkpoint; train the teacher first.')
  saved, _ = workdir_lib.saved_config(path, step)
  return saved, identity, step


def load(parts: components_lib.Components, config: ml_collections.ConfigDict) -> Teacher | None:
  """The teacher of config.distill (None when config.distill.teacher is '').

  Raises:
    ValueError: naming config.distill.teacher when it is not a finished
      workdir, its tokenizer or vocabulary differs from the student's corpus
      (every difference listed, with the teacher's data keys), it is a
      Transformer whose context is shorter than data.seq_len.
  """
  if not config.distill.teacher:
    return None
  path = os.path.abspath(config.distill.teacher)
  key = f'config.distill.teacher={config.distill.teacher!r}'
  saved, identity, step = _teacher_config(path, key)
  tokenizer = parts.corpus.tokenizer
  d = saved.data
  trained_on = f'data.name={d.name!r}, data.level={d.level!r}, data.vocab_size={d.vocab_size}'
  needs = (
    f"A teacher needs the student's tokenizer; it was trained with {trained_on} (and "
    f'data.path={d.path!r}): train the student on the same data settings, or use a teacher '
    'trained on this data.'
  )
  differences = checkpoint.identity_differences(identity, {'tokenizer': tokenizer.identity})
  if differences:  # Checked before building a model on the wrong vocabulary.
    raise ValueError(f'{key} (step {step}) does not fit this run: {differences[0]}. {needs}')
  model = models.get_model(saved.model, vocab_size=tokenizer.vocab_size, seq_len=d.seq_len)
  if model.context is not None and model.context < config.data.seq_len:
    raise ValueError(
      f'{key} has context {model.context} (its data.seq_len), shorter than '
      f"the student's data.seq_len={config.data.seq_len}; set --config.data.seq_len to at "
      f'most {model.context}, or use a teacher trained with a longer context.'
    )
  replicated = sharding.replicated(parts.mesh)
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
    jax.eval_shape(model.init, jax.random.key(0)),
  )
  params, _ = checkpoint.load_params(
    os.path.join(path, 'checkpoints', str(step)),
    abstract,
    tokenizer.identity,
    key='distill.teacher',
    needs=needs,
  )
  c = config.distill
  teacher = Teacher(
    distillation=losses.Distillation(
      model=model,
      alpha=c.alpha,
      temperature=c.temperature,
      carried=model.recurrent and parts.data_kind == 'stream',
    ),
    params=params,
    path=path,
    step=step,
    checksum=checksum(params),
  )
  metrics.console(
    'Distilling from the %s teacher %s step %d (sha256 %s): alpha %g, temperature %g.',
    saved.model.name,
    path,
    step,
    teacher.checksum,
    c.alpha,
    c.temperature,
  )
  return teacher


def record(workdir: str, teacher: Teacher | None, *, resumed: bool) -> None:
  """Appends the teacher to the workdir's runs.jsonl (event 'teacher'); a
  `resumed` run first checks it against the last one recorded.

  Raises:
    ValueError: the teacher's parameters (or path) differ from the recorded
      ones: the checkpoints being resumed were distilled from another model.
  """
  if teacher is None:
    return
  recorded = [r for r in provenance.read_runs(workdir) if r['event'] == 'teacher']
  if resumed and recorded:
    last = recorded[-1]
    if (last['path'], last['sha256']) != (teacher.path, teacher.checksum):
      raise ValueError(
        f'config.distill.teacher changed since this run recorded it in {workdir}/runs.jsonl: '
        f'{last["path"]} step {last["step"]} sha256 {last["sha256"]} -> {teacher.path} step '
        f'{teacher.step} sha256 {teacher.checksum}. Its checkpoints were distilled from the '
        'recorded teacher: point at it again, or start over (--fresh moves the old run aside, '
        'or use another --workdir).'
      )
  if jax.process_index() == 0:
    line = {'event': 'teacher', 'time': time.time(), 'path': teacher.path, 'step': teacher.step}
    with open(os.path.join(workdir, provenance.RUNS_FILE), 'a') as f:
      f.write(json.dumps({**line, 'sha256': teacher.checksum}) + '\n')


def prepare(
  parts: components_lib.Components, config: ml_collections.ConfigDict
) -> tuple[Teacher | None, components_lib.Components]:
  """(`load`'s teacher, `parts` to build the train state from): with the
  teacher's model where the state keeps its carry (a recurrent teacher of a
  student that reads streams), else `parts` as they are."""
  teacher = load(parts, config)
  if teacher is None or not teacher.distillation.carried:
    return teacher, parts
  return teacher, parts._replace(teacher_model=teacher.distillation.model)


def for_run(parts, config, workdir: str, manager) -> tuple[Teacher | None, Any]:
  """`prepare`, then `record` in `workdir` (resumed when `manager`, its
  checkpoint manager, has a checkpoint): what a training run calls before it
  restores; returns (the teacher, the components to build the state from)."""
  teacher, parts = prepare(parts, config)
  record(workdir, teacher, resumed=checkpoint.latest_step(manager) is not None)
  return teacher, parts
