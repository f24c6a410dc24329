"""Writes the King James Bible as the plain text file experiments/finetune_transfer
pre-trains on (source, licence and checksums: third_party/README.md).

The text comes from Debian's package bible-kjv-text 4.38, whose compressed
/usr/lib/bible.data is read through the package's `bible` program
(`apt-get install bible-kjv`). The program prints each chapter's heading
('Genesis 1') and its verses, each on one line after its number; this keeps
the headings and the verses without their numbers, one verse per line, with
a blank line between chapters: 1,189 chapters, 31,102 verses, checked, and
the output's sha256 checked against the one recorded here.

  python experiments/finetune_transfer/prepare_kjv.py --out=/tmp/kjv.txt

On a machine without the program, `--dump=FILE` reads what
`bible -l0 'Genesis 1:1-Revelation 22:21'` printed elsewhere.
"""

import hashlib
import re
import subprocess
import sys

from absl import app
from absl import flags

_OUT = flags.DEFINE_string('out', '', 'Where to write the text file.')
_DUMP = flags.DEFINE_string('dump', '', "A saved `bible -l0 'Genesis 1:1-Revelation 22:21'`.")

RANGE = 'Genesis 1:1-Revelation 22:21'
CHAPTERS, VERSES = 1189, 31102
SHA256 = '5f516b7ea6167d4bbb3c67b0a8f3dca10b2b8e1df7f8ccac05052daa610e2d67'
_HEADING = re.compile(r'^[1-3]?[A-Za-z ]+ \d+$')
_VERSE = re.compile(r'^ +\d+ (.+)$')


def convert(dump: str) -> tuple[str, int, int]:
  """(the text, its chapters, its verses) from the program's output."""
  chapters = []
  for line in dump.split('\n'):
    if not line.strip():
      continue
    verse = _VERSE.match(line)
    if verse:
      if not chapters:
        raise ValueError(f'A verse before any chapter heading: {line!r}')
      chapters[-1].append(verse.group(1).strip())
    elif _HEADING.match(line):
      chapters.append([line])
    else:
      raise ValueError(f'Neither a chapter heading nor a numbered verse: {line!r}')
  out = '\n'.join('\n'.join(chapter) + '\n' for chapter in chapters)
  return out, len(chapters), sum(len(c) - 1 for c in chapters)


def main(argv):
  del argv
  if not _OUT.value:
    raise app.UsageError('--out=FILE is required.')
  if _DUMP.value:
    with open(_DUMP.value, encoding='utf-8') as f:
      dump = f.read()
  else:
    try:
      dump = subprocess.run(
        ['bible', '-l0', RANGE], capture_output=True, text=True, check=True
      ).stdout
    except FileNotFoundError:
      print(
        'error: the `bible` program is not installed; `apt-get install bible-kjv` (Debian), '
        'or pass --dump=FILE with its output saved on another machine.',
        file=sys.stderr,
      )
      return 2
  text, chapters, verses = convert(dump)
  digest = hashlib.sha256(text.encode('utf-8')).hexdigest()
  if (chapters, verses, digest) != (CHAPTERS, VERSES, SHA256):
    print(
      f'error: got {chapters} chapters, {verses} verses, sha256 {digest}; expected '
      f'{CHAPTERS}, {VERSES}, {SHA256}. Another edition of the package? Nothing written.',
      file=sys.stderr,
    )
    return 1
  with open(_OUT.value, 'w', encoding='utf-8') as f:
    f.write(text)
  print(f'Wrote {_OUT.value}: {len(text):,} characters, {chapters} chapters, {verses} verses.')
  return 0


if __name__ == '__main__':
  app.run(main)
