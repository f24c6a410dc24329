"""One process per workdir: a run holds `WORKDIR/lock.json` while it writes there.

Two processes training one workdir would interleave checkpoints and metrics
and corrupt both runs, so every tool that writes a workdir (research.main in
every mode, research.compress, the experiment runner's cells) takes the lock
first. The file names its holder (host, pid, the process's start time and,
under Slurm, the job), so a second process can say who holds it and the
experiment runner can show the cell as running. It stays in the workdir,
empty, after a clean exit.

A holder that is gone leaves its lock behind (`kill -9`, a lost node); the
next run takes it over with a warning when it can tell: the holder's pid is
gone on this host (or is a new process that reuses it), or `squeue` no longer
lists its Slurm job. A holder on another host outside Slurm cannot be
checked; the error says how to clear it by hand.

The read-check-write is serialised with `fcntl.flock` on the lock file itself
(also on NFS, where Linux maps it to POSIX locks), never across the run: the
file is the record, not the mechanism, so a dead holder never blocks by
itself.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

from research import faults

LOCK_FILE = 'lock.json'


class WorkdirInUse(faults.RunError):
  """Another live process holds the workdir's lock."""


@dataclasses.dataclass(frozen=True)
class Holder:
  host: str
  pid: int
  started: float  # time.time() when the lock was taken.
  process_start: str = ''  # The pid's start time in clock ticks (/proc), '' if unknown.
  job: str = ''  # Slurm job id (JOB or ARRAYJOB_TASK), '' outside Slurm.
  command: str = ''

  def describe(self) -> str:
    """'host H, pid P' or 'Slurm job J on H, pid P'."""
    where = f'host {self.host}, pid {self.pid}'
    return f'Slurm job {self.job} on {where}' if self.job else where


def _process_start(pid: int) -> str:
  """The start time of `pid` since boot (field 22 of /proc/PID/stat), which
  tells a reused pid from the holder; '' where /proc is not there."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
  except (OSError, IndexError):
    return ''
  return fields[19] if fields[0] != 'Z' else 'zombie'


def pid_alive(pid: int) -> bool:
  """Whether a process `pid` exists on this host (another user's counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Another user's live process.
  return True


def _slurm_job() -> str:
  array, task = os.environ.get('SLURM_ARRAY_JOB_ID'), os.environ.get('SLURM_ARRAY_TASK_ID')
  if array and task:
    return f'{array}_{task}'
  return os.environ.get('SLURM_JOB_ID', '')


def this_process() -> Holder:
  return Holder(
    host=platform.node(),
    pid=os.getpid(),
    started=time.time(),
    process_start=_process_start(os.getpid()),
    job=_slurm_job(),
    command=shlex.join([os.path.basename(sys.executable)] + sys.orig_argv[1:]),
  )


def _parse(text: str) -> Holder | None:
  if not text.strip():
    return None
  try:
    return Holder(**json.loads(text))
  except (ValueError, TypeError):  # Half-written by a process killed mid-write, or foreign.
    return Holder(host='?', pid=0, started=0.0, command='unreadable lock file')


def read(workdir: str) -> Holder | None:
  """The holder recorded in `workdir`'s lock (None: free or no lock file)."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return _parse(f.read())
  except FileNotFoundError:
    return None


def _job_listed(job: str) -> bool | None:
  """Whether Slurm still lists `job` (None: squeue is not here or failed)."""
  squeue = shutil.which('squeue')
  if not squeue:
    return None
  try:
    out = subprocess.run(
      [squeue, '-h', '-j', job, '-o', '%T'], capture_output=True, text=True, timeout=30
    )
  except (OSError, subprocess.TimeoutExpired):
    return None
  if out.returncode != 0:  # 'Invalid job id specified': it left the queue long ago.
    return False if 'Invalid job id' in out.stderr else None
  return bool(out.stdout.strip())


def gone(holder: Holder) -> str:
  """Why `holder` is known to be gone ('' : alive, or it cannot be told)."""
  if not holder.pid:
    return 'its lock file could not be read: its writer died while writing it'
  if holder.host == platform.node():
    now = _process_start(holder.pid)
    if (
      holder.pid == os.getpid()
    ):  # This very process holds it (refused like anyone), or reuses its pid.
      return '' if holder.process_start == now else f'pid {holder.pid} is this new process'
    if not pid_alive(holder.pid):
      return f'pid {holder.pid} is gone'
    if now == 'zombie':
      return f'pid {holder.pid} has exited'
    if holder.process_start and now and now != holder.process_start:
      return f'pid {holder.pid} is now another process'
    return ''
  if holder.job and _job_listed(holder.job) is False:
    return f'Slurm no longer lists job {holder.job}'
  return ''


@contextlib.contextmanager
def _flocked(path: str):
  """The lock file, open and flock-ed for one read-check-write."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield fd
  finally:
    os.close(fd)  # Closing releases the flock.


def _read_fd(fd: int) -> str:
  os.lseek(fd, 0, os.SEEK_SET)
  chunks = []
  while chunk := os.read(fd, 65536):
    chunks.append(chunk)
  return b''.join(chunks).decode(errors='replace')


def _write_fd(fd: int, text: str) -> None:
  os.lseek(fd, 0, os.SEEK_SET)
  os.ftruncate(fd, 0)
  os.write(fd, text.encode())
  os.fsync(fd)


def acquire(workdir: str, warn=None) -> Holder:
  """Takes `workdir`'s lock for this process (creating the folder).

  Args:
    workdir: the run's folder.
    warn: called with one line when a dead holder's lock is taken over
      (default: printed to stderr).

  Returns:
    This process's record, to give to `release`.

  Raises:
    WorkdirInUse: a live process (or one that cannot be checked) holds it.
    faults.RunError: the folder cannot be created or written.
  """
  path = os.path.join(workdir, LOCK_FILE)
  me = this_process()
  try:
    os.makedirs(workdir, exist_ok=True)
    with _flocked(path) as fd:
      holder = _parse(_read_fd(fd))
      if holder is not None:
        reason = gone(holder)
        if not reason:
          raise WorkdirInUse(_in_use_message(workdir, holder))
        (warn or _warn)(
          f'warning: taking over the lock of {workdir} from {holder.describe()} '
          f'({reason}); the run resumes from its latest checkpoint.'
        )
      _write_fd(fd, json.dumps(dataclasses.asdict(me), indent=2) + '\n')
  except OSError as e:
    raise faults.RunError(
      f'Cannot write to the workdir {workdir!r} ({e.strerror or e}). Choose a writable '
      '--workdir or fix its permissions.'
    ) from e
  return me


def _in_use_message(workdir: str, holder: Holder) -> str:
  since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.started))
  fix = 'Wait for it to finish, stop it'
  if holder.job:
    fix += f' (scancel {holder.job.split("_")[0]})'
  elif holder.host == platform.node():
    fix += f' (kill {holder.pid}; it saves a checkpoint)'
  fix += ', or choose another --workdir'
  if holder.host != platform.node() and not holder.job:
    fix += (
      f'; if no such process runs on {holder.host} any more, delete '
      f'{os.path.join(workdir, LOCK_FILE)}'
    )
  return f'{workdir} is in use by {holder.describe()} since {since} (`{holder.command}`). {fix}.'


def release(workdir: str, me: Holder) -> None:
  """Empties the lock if `me` still holds it (it was not taken over)."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    with _flocked(path) as fd:
      if _parse(_read_fd(fd)) == me:
        _write_fd(fd, '')
  except OSError:
    pass  # The workdir went away; nothing to release.


@contextlib.contextmanager
def held(workdir: str, warn=None):
  """`acquire` for the body, `release` after it, whatever happens."""
  me = acquire(workdir, warn)
  try:
    yield me
  finally:
    release(workdir, me)


def _warn(line: str) -> None:
  print(line, file=sys.stderr, flush=True)
