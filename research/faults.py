"""What a run does when something goes wrong: errors, exit statuses, signals.

Exit statuses of `python -m research.main` (docs/faq.md):

  0   finished.
  2   bad input: config, data, workdir, a checkpoint that cannot be used, a
      full disk. One `error:` line says what and how to fix it; earlier
      checkpoints are intact.
  3   numerical fault: a non-finite loss or gradient norm. The state after
      the last good checkpoint was not saved.
  75  preempted (SIGTERM or SIGINT): the current step finished and a
      checkpoint was saved; run the same command to continue.
"""

import signal
import threading

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later.


class RunError(Exception):
  """A failure the user can fix; the message names the problem and the fix."""


class CheckpointError(RunError):
  """No checkpoint of a workdir can be used."""


class ConfigMismatchError(RunError):
  """The config differs from the one a workdir's checkpoints were trained with."""


class NonFiniteError(RunError):
  """A non-finite loss or gradient norm."""


class Preempted(Exception):
  """A stop signal arrived; the state was saved."""


class StopSignal:
  """Turns SIGTERM/SIGINT into a flag the training loop polls between steps.

  Use as a context manager around the loop. A second SIGINT while the
  checkpoint is being written interrupts at once (the previous checkpoint is
  still intact). Outside the main thread (where Python cannot install
  handlers) it does nothing.
  """

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.received else ''
