"""Command-line parsing for the entry points: every mistake is one line.

`absl.app.run(main, flags_parser=cli.flags_parser('config'))` parses the
flags as absl and ml_collections do, but a failure of any kind (an unknown
flag or config key, a value of the wrong type, a missing or broken config
file, an unknown variant, stray arguments, a config value that cannot mean
anything) prints one `error:` line naming the problem and the fix, and exits
with status 2 before any data is read or anything is compiled. ml_collections
alone prints chained tracebacks for several of these.
"""

import difflib
import importlib.util
import glob
import os
import sys
from typing import Callable

from absl import flags
import ml_collections
from ml_collections import config_flags

from research import config_checks
from research import faults
from research import rules

_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def fail(message: str) -> None:
  """Prints `error: message` on stderr and exits with the bad-input status."""
  message = ' '.join(message.split())  # One line, whatever the source said.
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(faults.EXIT_BAD_INPUT)


# `--config.KEY=VALUE` arguments given without --config (`flags_parser`'s
# optional_config_keys): kept for the config the program reads elsewhere.
_held_overrides: list[str] = []


def held_overrides() -> list[str]:
  """The `--config.KEY=VALUE` arguments given without --config, as typed."""
  return list(_held_overrides)


def flags_parser(
  config_flag: str | None = 'config',
  *,
  positional: bool = False,
  optional_config_keys: tuple[str, ...] | None = None,
) -> Callable[[list[str]], list[str]]:
  """An `app.run` flags parser: any failure is one `error:` line, exit 2.

  Args:
    config_flag: the name of the program's `DEFINE_config_file` flag, or
      None. Its config's values are checked too (`config_checks.check`; the
      mesh against the device count is checked once the devices are known).
    positional: the program takes positional arguments (it checks them);
      otherwise any is refused.
    optional_config_keys: the config flag may be left out (the program reads
      a saved config instead); then `--config.KEY=VALUE` may set only keys at
      or under these, and is kept for the program (`held_overrides`).

  Returns:
    A function of argv returning the arguments left after the flags.
  """

  def parse(argv: list[str]) -> list[str]:
    config = None
    if optional_config_keys is not None and _config_spec(argv, config_flag) is None:
      argv = _hold_overrides(argv, config_flag, optional_config_keys)
    try:
      if config_flag:
        _check_config_file(_config_spec(argv, config_flag), config_flag)
      rest = flags.FLAGS(argv)
      if config_flag:
        config = flags.FLAGS[config_flag].value
      if config is not None and not isinstance(config, ml_collections.ConfigDict):
        # ml_collections defers a load failure until the config is used.
        config.lock()
    except Exception as e:  # pylint: disable=broad-except
      fail(describe(e, argv, config_flag))
    if len(rest) > 1 and not positional:
      fail(
        f'unexpected arguments {rest[1:]}: every option is a flag, '
        '--name=value (values with spaces in quotes).'
      )
    if config is not None:
      try:
        config_checks.check(config)
      except ValueError as e:
        fail(str(e))
    return rest

  return parse


def _hold_overrides(argv: list[str], name: str, allowed: tuple[str, ...]) -> list[str]:
  """argv without its `--name.KEY...` arguments, which go to `_held_overrides`;
  fails on a key not at or under one of `allowed`."""
  held = [a for a in argv[1:] if a.startswith((f'--{name}.', f'--no{name}.'))]
  for arg, key in zip(held, _override_keys(['', *held], name)):
    if not any(key == k or key.startswith(k + '.') for k in allowed):
      fail(
        f'{arg.split("=", 1)[0]} needs --{name}: without it the config is the one the run '
        'was trained with, read from the workdir, and only these keys may change (where the '
        'data lies, how the model is scored and on which devices): '
        f'{", ".join(k if "." in k else k + ".*" for k in allowed)}. Give the config file '
        f'with --{name} (training always needs it) to set other keys.'
      )
  _held_overrides[:] = held
  return [a for a in argv if a not in held]


def override_config(
  config: ml_collections.ConfigDict, overrides: list[str], name: str = 'config'
) -> ml_collections.ConfigDict:
  """`config` with `--name.KEY=VALUE` arguments applied as ml_collections
  applies them to a config file's (each value typed like the one it replaces),
  locked.

  Raises:
    ValueError: one line, for a key `config` lacks or a value of the wrong type.
  """
  argv = ['override', *overrides]
  valid = list(rules.flatten(config))
  nodes = {k.rsplit('.', i)[0] for k in valid for i in range(1, k.count('.') + 1)}
  for key in _override_keys(argv, name):
    if key not in valid and key not in nodes:
      raise ValueError(
        f"--{name}.{key}: the run's config has no key {key!r}. Closest valid keys: "
        f'{", ".join(closest_keys(key, valid))}.'
      )
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict(name, config, flag_values=values, lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    raise ValueError(_type_message(e, name, config) or ' '.join(str(e).split())) from e
  return values[name].value


def _config_spec(argv: list[str], name: str) -> str | None:
  """The value of --name in argv ('path[:variant]'), or None."""
  spec = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f'--{name}='):
      spec = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def _known_config_files() -> str:
  """The shipped config files, as paths from here (absolute outside the repository)."""
  names = sorted(
    _from_here(p)
    for p in glob.glob(os.path.join(_CONFIGS_DIR, '*.py'))
    if os.path.basename(p) not in ('__init__.py', 'common.py')
  )
  return ', '.join(names)


def _from_here(path: str) -> str:
  relative = os.path.relpath(path)
  return path if relative.startswith('..') else relative


def _check_config_file(spec: str | None, name: str) -> None:
  """Raises ValueError when the config file cannot be a config file."""
  if spec is None:
    return
  path = spec.split(':', 1)[0]
  problem = None
  if not path:
    problem = 'names no file'
  elif not os.path.exists(path):
    problem = 'does not exist'
    shipped = os.path.join(os.path.dirname(_CONFIGS_DIR), path)
    if not os.path.isabs(path) and os.path.isfile(shipped):
      # Config paths are read from the current folder (absl's config_flags).
      problem += f' here (paths are from the current folder; this one is {shipped})'
  elif not os.path.isfile(path):
    problem = 'is not a file'
  elif not os.access(path, os.R_OK):
    problem = 'cannot be read (permissions)'
  elif not path.endswith('.py'):
    problem = 'is not a Python config file (.py)'
  if problem:
    raise ValueError(
      f'--{name}={spec}: {path!r} {problem}. Config files: '
      f'{_known_config_files()} (a variant follows a colon, '
      'e.g. configs/ptb_lstm.py:small).'
    )


def _root_cause(error: BaseException) -> BaseException:
  """The innermost exception of a chain (raise ... from, or during except)."""
  seen = set()
  while id(error) not in seen:
    seen.add(id(error))
    inner = error.__cause__ or error.__context__
    if inner is None:
      break
    error = inner
  return error


def _override_keys(argv: list[str], name: str) -> list[str]:
  prefix = f'--{name}.'
  keys = []
  for arg in argv[1:]:
    if arg.startswith(prefix):
      keys.append(arg[len(prefix) :].split('=', 1)[0])
    elif arg.startswith(f'--no{name}.'):  # --noconfig.key for booleans
      keys.append(arg[len(f'--no{name}.') :])
  return keys


def closest_keys(key: str, valid: list[str], n: int = 3) -> list[str]:
  """The `n` valid keys most like `key`, by the whole path or the last part."""

  def score(candidate):
    whole = difflib.SequenceMatcher(None, key, candidate).ratio()
    leaf = difflib.SequenceMatcher(None, key.split('.')[-1], candidate.split('.')[-1]).ratio()
    return max(whole, leaf)

  return sorted(valid, key=lambda c: (-score(c), c))[:n]


def _load(spec: str):
  """Loads the config of `spec` as the flag does; None when it cannot."""
  path, *variant = spec.split(':', 1)
  try:
    module_spec = importlib.util.spec_from_file_location('_research_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(*variant)
  except Exception:  # pylint: disable=broad-except
    return None
  return config if isinstance(config, ml_collections.ConfigDict) else None


def _unknown_key_message(argv, name, spec) -> str | None:
  config = _load(spec) if spec else None
  if config is None:
    return None
  valid = list(rules.flatten(config))
  nodes = {k.rsplit('.', i)[0] for k in valid for i in range(1, k.count('.') + 1)}
  for key in _override_keys(argv, name):
    if key not in valid and key not in nodes:
      return (
        f'--{name}.{key}: {spec} has no key {key!r}. Closest valid keys: '
        f'{", ".join(closest_keys(key, valid))}.'
      )
  return None


def required_message(flag: str, name: str | None = 'config') -> str:
  """'FLAG is required, e.g. ...' for a required flag left out (`name`: the
  config-file flag)."""
  default = _from_here(os.path.join(_CONFIGS_DIR, 'default.py'))
  example = {
    f'--{name}': f'--{name}={default} (config files: {_known_config_files()})',
    '--workdir': '--workdir=workdirs/NAME (checkpoints, logs and '
    'metrics go there; an existing one resumes)',
  }
  return f'{flag} is required, e.g. {example.get(flag, flag + "=...")}.'


def _type_message(
  error: flags.Error, name: str, config: ml_collections.ConfigDict | None
) -> str | None:
  """For `flag --config.KEY=VALUE: reason`, names the key's type and its
  default in `config`."""
  text = str(error)
  head = f'flag --{name}.'
  if not text.startswith(head) or '=' not in text:
    return None
  key, rest = text[len(head) :].split('=', 1)
  value, _, reason = rest.partition(': ')
  if config is None:
    return None
  try:
    default = config_checks.get(config, key)
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(default, ml_collections.ConfigDict):
    return (
      f'--{name}.{key}={value}: config.{key} is a group of keys; set '
      f'them one by one, e.g. --{name}.{key}.{next(iter(default.keys()))}'
      '=...'
    )
  kind = {'int': 'an integer', 'float': 'a number', 'bool': 'True or False', 'str': 'a string'}.get(
    type(default).__name__, type(default).__name__
  )
  return (
    f'--{name}.{key}={value}: {reason}. config.{key} takes {kind} '
    f'(default {default!r}), e.g. --{name}.{key}={default!r}.'
  )


def describe(error: Exception, argv: list[str], name: str | None) -> str:
  """One line naming what went wrong in parsing `argv` and how to fix it
  (`name`: the config-file flag, if the program has one)."""
  if isinstance(error, flags.UnrecognizedFlagError):
    hint = f'; config keys are set as --{name}.KEY=VALUE' if name else ''
    return f'{error}. Flags: {", ".join(_program_flags())}{hint}.'
  if name is None:
    return ' '.join(str(error).split()).rstrip('.') + '. --helpshort lists the flags.'
  spec = _config_spec(argv, name)
  message = _unknown_key_message(argv, name, spec)
  if message:
    return message
  text = ' '.join(str(error).split())
  root = _root_cause(error)
  if isinstance(root, ValueError) and str(root).startswith('--'):
    return str(root)  # _check_config_file's message, already with the fix.
  if isinstance(error, flags.IllegalFlagValueError):
    if 'must have a value other than None' in text:
      return required_message(text.split(':', 1)[0].removeprefix('flag ').split('=')[0], name)
    if text.startswith(f'flag --{name}.'):
      return _type_message(error, name, _load(spec) if spec else None) or text
  if (
    spec
    and not isinstance(root, flags.Error)
    and (text.startswith(f'flag --{name}=') or not isinstance(error, flags.Error))
  ):
    return _config_file_message(root, name, spec)
  return f'{text.rstrip(".")}. --helpshort lists the flags.'


def _program_flags() -> list[str]:
  """The flags the running program defines (not absl's own)."""
  module = sys.argv[0] if sys.argv else ''
  found = flags.FLAGS.flags_by_module_dict().get(module, [])
  return sorted(f'--{f.name}' for f in found)


def _config_file_message(root: BaseException, name: str, spec: str) -> str:
  """The config file itself failed: an unknown variant, or broken code."""
  lines = str(root).strip().splitlines()
  detail = lines[-1].strip() if lines else ''
  if isinstance(root, ValueError) and 'variant' in detail:
    return f'--{name}={spec}: {detail}'
  where = f' (line {root.lineno})' if isinstance(root, SyntaxError) else ''
  return (
    f'--{name}={spec}: the config file failed to load{where}: '
    f'{type(root).__name__}: {detail}. Fix the file or choose another '
    f'(config files: {_known_config_files()}).'
  )
