"""Where a cell's data lies on this machine: the runner's --data_path and
--tfds_dir (`spec.LOCATION_KEYS`), never part of a cell's identity.

--data_path is one path for every cell, or `ROWS=PATH,ROWS=PATH,...` for an
experiment whose rows read different files (pre-training on one corpus,
fine-tuning on another): each cell takes the PATH of the first ROWS (a row or
cell name, shell wildcards) that matches it, and none where none does.
"""

import fnmatch
import re

from research.experiments import spec as spec_lib

_ROWS_PATH = re.compile(r'^([A-Za-z0-9_.*?\[\]-]+)=(.+)$')


def row_paths(value: str) -> list[tuple[str, str]] | None:
  """[(ROWS, PATH), ...] of a data.path of the form 'ROWS=PATH,ROWS=PATH';
  None for any other value (one path for every cell, or '')."""
  pairs = [_ROWS_PATH.match(item.strip()) for item in value.split(',')] if value else [None]
  return [(m.group(1), m.group(2)) for m in pairs] if all(pairs) else None


def for_cell(locations: dict[str, str], cell: spec_lib.Cell) -> dict[str, str]:
  """`locations` as `cell` takes them: a data.path of the form
  'ROWS=PATH,ROWS=PATH' (ROWS a row or cell name, shell wildcards) gives the
  PATH of the first ROWS matching the cell, or none; any other value is every
  cell's."""
  pairs = row_paths(locations.get('data.path', ''))
  if pairs is None:
    return locations
  path = next(
    (
      path
      for rows, path in pairs
      if fnmatch.fnmatchcase(cell.name, rows) or fnmatch.fnmatchcase(cell.row.name, rows)
    ),
    '',
  )
  return {**locations, 'data.path': path}
