"""`python -m research.audit --workdir=DIR --probe=NAME[,NAME...] [--reference=DIR]`.

Audits a finished run with the probes of research.audits.PROBES
(docs/audit.md; the work is research/audits/run.py, this module its flags): the latest checkpoint of DIR, with the config it was saved
with. Each probe writes WORKDIR/audit/NAME.json (its figures and intervals,
coverage, the sha256 of the data it read, the checkpoint step, the code
revision and the time) and prints a short table; MODEL_CARD.md's probe
sections are then regenerated from every file in WORKDIR/audit/.

  --reference   another run on the same tokenizer, for the membership
                attack calibrated by a reference model (Watson et al. 2022).
  --data_path, --tfds_dir  where the run's data lies on this machine, when not
                where it was trained (as research.generate).
  --out         the audit's own folder (an experiment's audit cell): the files
                go to OUT/audit/NAME.json, OUT/runs.jsonl records the audit's
                start and end, and DIR is only read (its MODEL_CARD.md kept).

An unknown probe, a workdir that holds no run, or a probe that cannot apply to
this model (e.g. `weat` without a word vocabulary) is one `error:` line, exit
status 2; the probes that did apply have written their files by then.
"""

from absl import app
from absl import flags
from absl import logging
import tensorflow_datasets as tfds

from research import audits
from research import cli
from research import faults
from research import host
from research.audits import run as run_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run: its checkpoints and data.')
_PROBE = flags.DEFINE_list(
  'probe', None, f'Probes to run, comma-separated: {", ".join(audits.PROBES)}.'
)
_REFERENCE = flags.DEFINE_string(
  'reference', None, 'A reference run (same tokenizer) for the calibrated membership attack.'
)
_DATA_PATH = flags.DEFINE_string('data_path', '', "config.data.path here ('' : as trained).")
_TFDS_DIR = flags.DEFINE_string('tfds_dir', '', "config.data.tfds_dir here ('' : as trained).")
_OUT = flags.DEFINE_string(
  'out', '', "The audit's own folder: OUT/audit/NAME.json, OUT/runs.jsonl ('' : WORKDIR's)."
)
flags.mark_flags_as_required(['workdir', 'probe'])


def main(argv):
  del argv  # cli.flags_parser refuses stray arguments.
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  host.tune_allocator()
  try:
    run_lib.run_audit(
      _WORKDIR.value,
      [n.strip() for n in _PROBE.value],
      reference=_REFERENCE.value,
      locations={'path': _DATA_PATH.value, 'tfds_dir': _TFDS_DIR.value},
      out=_OUT.value or None,
    )
  except (faults.RunError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  return 0


if __name__ == '__main__':
  host.reexec_with_huge_pages()
  app.run(main, flags_parser=cli.flags_parser(None))
