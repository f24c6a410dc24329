"""`python -m research.generate --workdir=DIR [--prompt=TEXT | --prompt_file=PATH]`.

Samples from a trained run: the latest checkpoint of DIR (or `--step`), with
the config it was saved with and the tokenizer rebuilt from its data (checked
against the identity the checkpoint recorded). Prints the prompt and then the
new text; one sample streams to the console token by token as the compiled
loop makes it, several (`--num_samples`) share that loop and are printed when
it ends.

  --max_new_tokens, --temperature, --top_k, --top_p, --seed  the decoding.
  --data_path, --tfds_dir  where the run's data lies on this machine, when not
                           where it was trained (as research.experiments).

Beyond the context a model was trained on: the LSTM has none and carries its
state; a Transformer, whatever its positional kind, decodes through its cache
while the prompt and the sample fit in its training context and then slides a
window of that context, re-reading it for every token. A prompt longer than
the context is refused. Characters outside a character vocabulary are
refused; words outside a word vocabulary become `<unk>` (the program says
which).
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import tensorflow_datasets as tfds

from research import cli
from research import evaluate
from research import faults
from research import host
from research import sampling
from research import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run: its checkpoints and data.')
_PROMPT = flags.DEFINE_string('prompt', None, "Text to continue ('' : a new line).")
_PROMPT_FILE = flags.DEFINE_string('prompt_file', None, 'Read the prompt from this UTF-8 file.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'Samples drawn together.', lower_bound=1)
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 200, 'Tokens per sample.', lower_bound=1)
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'Softmax temperature (> 0).')
_TOP_K = flags.DEFINE_integer('top_k', 40, 'Keep the k most likely tokens (0: all).', lower_bound=0)
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus mass kept, in (0, 1] (1: all).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed of the sampling.')
_STEP = flags.DEFINE_integer('step', None, 'The checkpoint step (default: the latest).')
_DATA_PATH = flags.DEFINE_string('data_path', '', "config.data.path here ('' : as trained).")
_TFDS_DIR = flags.DEFINE_string('tfds_dir', '', "config.data.tfds_dir here ('' : as trained).")
flags.mark_flags_as_required(['workdir'])


def encode_prompt(text: str, tokenizer) -> tuple[np.ndarray, list[str]]:
  """(the prompt's ids, words that became '<unk>').

  Text that does not end its line continues it: a word tokenizer's closing
  '<eos>' is dropped. An empty prompt is a new line.

  Raises:
    ValueError: a character outside a character vocabulary.
  """
  if not text:
    text = '\n'
  try:
    ids = tokenizer.encode(text)
  except ValueError as e:
    raise ValueError(f'The prompt cannot be encoded: {e} Use characters of the corpus.') from e
  unknown = []
  unk_id = getattr(tokenizer, 'unk_id', None)
  if unk_id is not None:
    eos_id = tokenizer.eos_id
    if not text.endswith('\n') and len(ids) and ids[-1] == eos_id:
      ids = ids[:-1]
    unknown = [w for w in text.split() if tokenizer.encode(w)[0] == unk_id and w != '<unk>']
  return np.asarray(ids, np.int32), unknown


def check_length(prompt_ids: np.ndarray, model, trained_context: int) -> None:
  """Refuses a prompt longer than a Transformer's training context."""
  if model.context is not None and len(prompt_ids) > model.context:
    raise ValueError(
      f'The prompt is {len(prompt_ids)} tokens, longer than the {trained_context} the model '
      'was trained on (data.seq_len); shorten it to at most that (the end of a longer text '
      'is usually what matters).'
    )


class _Stream:
  """Prints one sample's text as its ids arrive (called from the compiled loop)."""

  def __init__(self, tokenizer, prompt_ids):
    self.tokenizer = tokenizer
    self.ids = [int(i) for i in prompt_ids]
    self.shown = len(tokenizer.decode(self.ids))

  def __call__(self, tokens_B):
    self.ids.append(int(np.asarray(tokens_B)[0]))
    # A byte-level character still arriving decodes as U+FFFD: shown once complete.
    text = self.tokenizer.decode(self.ids).rstrip('\ufffd')
    sys.stdout.write(text[self.shown :])
    sys.stdout.flush()
    self.shown = len(text)


def generate(
  workdir: str,
  prompt: str,
  *,
  num_samples: int = 1,
  max_new_tokens: int = 200,
  temperature: float = 0.8,
  top_k: int = 40,
  top_p: float = 1.0,
  seed: int = 0,
  step: int | None = None,
  locations: dict | None = None,
  stream: bool = False,
) -> tuple[str, list[str]]:
  """(the prompt as the model read it, the samples' new text) from
  `workdir`'s checkpoint.

  `locations`: config.data keys ('path', 'tfds_dir') where the data lies here.
  `stream`: print a single sample as it comes (after the prompt).
  """
  if not temperature > 0:
    raise ValueError(f'--temperature={temperature} must be positive.')
  if not 0 < top_p <= 1:
    raise ValueError(f'--top_p={top_p} must be in (0, 1].')
  config, step = workdir_lib.saved_config(workdir, step, locations)
  parts, step, params = evaluate.restore(config, workdir, 'research.generate', step)
  tokenizer = parts.corpus.tokenizer
  prompt_ids, unknown = encode_prompt(prompt, tokenizer)
  if unknown:
    print(f'note: not in the vocabulary, read as <unk>: {" ".join(unknown)}', file=sys.stderr)
  check_length(prompt_ids, parts.model, config.data.seq_len)
  on_token = None
  if stream and num_samples == 1:
    sys.stdout.write(tokenizer.decode(prompt_ids))
    on_token = _Stream(tokenizer, prompt_ids)
  ids_BxN = sampling.sample_batch(
    parts.model,
    params,
    prompt_ids,
    jax.random.key(seed),
    num_samples=num_samples,
    num_tokens=max_new_tokens,
    context=config.data.seq_len,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    on_token=on_token,
  )
  if on_token is not None:
    jax.effects_barrier()
    sys.stdout.write('\n')
  prompt_text = tokenizer.decode(prompt_ids)
  full = [tokenizer.decode(np.concatenate([prompt_ids, row])) for row in ids_BxN]
  return prompt_text, [text[len(prompt_text) :] for text in full]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  host.tune_allocator()
  if _PROMPT.value is not None and _PROMPT_FILE.value is not None:
    cli.fail('give --prompt or --prompt_file, not both.')
  prompt = _PROMPT.value or ''
  if _PROMPT_FILE.value is not None:
    try:
      with open(_PROMPT_FILE.value, encoding='utf-8') as f:
        prompt = f.read()
    except (OSError, UnicodeDecodeError) as e:
      cli.fail(f'--prompt_file={_PROMPT_FILE.value!r} cannot be read as UTF-8 text: {e}')
  single = _NUM_SAMPLES.value == 1
  try:
    prompt_text, samples = generate(
      _WORKDIR.value,
      prompt,
      num_samples=_NUM_SAMPLES.value,
      max_new_tokens=_MAX_NEW.value,
      temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value,
      top_p=_TOP_P.value,
      seed=_SEED.value,
      step=_STEP.value,
      locations={'path': _DATA_PATH.value, 'tfds_dir': _TFDS_DIR.value},
      stream=single,
    )
  except (faults.RunError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  if not single:
    for i, text in enumerate(samples):
      print(f'--- sample {i + 1} of {len(samples)} ---\n{prompt_text}{text}', flush=True)
  return 0


if __name__ == '__main__':
  host.reexec_with_huge_pages()
  app.run(main, flags_parser=cli.flags_parser(None))
