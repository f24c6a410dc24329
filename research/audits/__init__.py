"""Audits of a finished run: the probes `python -m research.audit` runs.

A probe is a `Probe` in PROBES, the one list of their names:
- `run(ctx, options) -> dict`: JSON-able figures of the model read through a
  `context.Context` (`options`: 'reference', another run's Context, when one
  is given; each probe's own keys otherwise at their defaults); raises
  `context.NotApplicable` with the reason when it cannot apply to this model
  or tokenizer;
- `table(result) -> str`: the short console table;
- `card(result) -> list[str]`: the Markdown lines of its MODEL_CARD.md section.

docs/audit.md states each probe's data, statistic and sources.
"""

from typing import Callable, NamedTuple

from research.audits import canaries
from research.audits import context
from research.audits import crows_pairs
from research.audits import membership
from research.audits import occupations
from research.audits import weat


class Probe(NamedTuple):
  name: str
  run: Callable[[context.Context, dict], dict]
  table: Callable[[dict], str]
  card: Callable[[dict], list[str]]


def _probe(name: str, module) -> Probe:
  return Probe(name, module.run, module.table, module.card)


PROBES: dict[str, Probe] = {
  p.name: p
  for p in (
    _probe('occupations', occupations),  # Pronouns against BLS shares (Rudinger et al. 2018).
    _probe('crows_pairs', crows_pairs),  # Stereotyping sentence pairs (Nangia et al. 2020).
    _probe('weat', weat),  # Embedding associations (Caliskan et al. 2017).
    _probe('membership', membership),  # Loss-threshold membership inference (Yeom et al. 2018).
    _probe('canaries', canaries),  # Exposure of inserted canaries (Carlini et al. 2019).
  )
}


def get(names: list[str]) -> list[Probe]:
  """The probes named; a ValueError listing the valid names for an unknown one."""
  if not names:
    raise ValueError(f'--probe names no probe; probes: {", ".join(PROBES)}.')
  unknown = [n for n in names if n not in PROBES]
  if unknown:
    raise ValueError(
      f'--probe={",".join(names)}: unknown probe {unknown[0]!r}; probes: {", ".join(PROBES)} '
      '(several: --probe=occupations,crows_pairs).'
    )
  return [PROBES[n] for n in dict.fromkeys(names)]
