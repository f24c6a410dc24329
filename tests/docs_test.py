"""The README and docs/ hold together: every relative link and #anchor
resolves, every table renders whole, and the README stays a short summary."""

import collections
import glob
import os
import re

from absl.testing import absltest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The README is the summary (what it is, the two commands, the results and
# options tables, the maps); the manual is docs/.
_README_MAX_LINES = 250

_FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})')
_HEADING = re.compile(r'^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
# [text](target) and ![alt](target), with an optional "title"; text may hold
# `code` but not nested brackets.
_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)')
_HTML_ANCHOR = re.compile(r'<a\s+(?:name|id)="([^"]+)"')


def _pages():
  """The markdown pages whose links are checked, relative to the root."""
  patterns = ('README.md', 'docs/*.md', 'experiments/README.md', 'experiments/*/RESULTS.md')
  return sorted(
    os.path.relpath(p, _ROOT) for pat in patterns for p in glob.glob(os.path.join(_ROOT, pat))
  )


def prose_lines(text):
  """(line number, line) outside fenced code blocks; a fence closes only on
  a fence of its own character at least as long (so ```` holds ```)."""
  fence = None
  for number, line in enumerate(text.splitlines(), 1):
    match = _FENCE.match(line)
    if fence is None and match:
      fence = match.group(1)
    elif fence is not None:
      if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
        if not line.strip().strip(fence[0]):
          fence = None
    else:
      yield number, line


def slug(heading):
  """GitHub's anchor of a heading: its text without markup, lowercased,
  punctuation dropped except '-' and '_', spaces to '-'."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # A link keeps its text.
  text = re.sub(r'<[^>]+>', '', text).lower()
  text = ''.join(c for c in text if c.isalnum() or c in ' -_')
  return text.replace(' ', '-')


def anchors(text):
  """Every anchor of a page: its headings' slugs, a repeated one with -1,
  -2, ..., and explicit <a name/id> anchors."""
  seen = collections.Counter()
  out = set()
  for _, line in prose_lines(text):
    out.update(_HTML_ANCHOR.findall(line))
    match = _HEADING.match(line)
    if match:
      base = slug(match.group(2))
      out.add(base if not seen[base] else f'{base}-{seen[base]}')
      seen[base] += 1
  return out


def links(text):
  """(line number, target) of every link outside code blocks and spans."""
  for number, line in prose_lines(text):
    line = re.sub(r'(`+).*?\1', '', line)  # Inline code is not a link.
    for target in _LINK.findall(line):
      yield number, target


def _read(page):
  with open(os.path.join(_ROOT, page)) as f:
    return f.read()


def _exists(path):
  return os.path.exists(os.path.join(_ROOT, path))


def broken_links(page, read=_read, exists=_exists):
  """'page:line: (target) why' for each relative link of `page` that does not
  resolve: the file or folder is missing, or the anchor names no heading.
  `read` and `exists` take paths relative to the repository root."""
  problems = []
  text = read(page)
  for number, target in links(text):
    if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I):  # http(s):, mailto:, ...
      continue
    path, _, anchor = target.partition('#')
    resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    where = f'{page}:{number}: ({target})'
    if resolved.startswith('..') or not exists(resolved):
      problems.append(f'{where} {resolved} does not exist')
    elif anchor and resolved.endswith('.md') and anchor not in anchors(read(resolved)):
      problems.append(f'{where} {resolved} has no heading whose anchor is #{anchor}')
  return problems


def split_tables(text):
  """Line numbers of table rows that start a table without a header
  separator under them: a table cut by a blank line renders its second part
  as text."""
  problems = []
  previous = ''
  lines = list(prose_lines(text))
  for i, (number, line) in enumerate(lines):
    is_row = line.lstrip().startswith('|')
    starts = is_row and not previous.lstrip().startswith('|')
    if starts:
      following = lines[i + 1][1] if i + 1 < len(lines) else ''
      if not re.match(r'^\s*\|(\s*:?-+:?\s*\|)+\s*$', following):
        problems.append(number)
    previous = line
  return problems


class DocsTest(absltest.TestCase):
  def test_every_relative_link_and_anchor_resolves(self):
    problems = [p for page in _pages() for p in broken_links(page)]
    self.assertIn('README.md', _pages())
    self.assertGreater(len([p for p in _pages() if p.startswith('docs/')]), 5)
    if problems:
      self.fail('broken links (fix the path or the #anchor):\n' + '\n'.join(problems))

  def test_every_table_renders_whole(self):
    problems = []
    for page in _pages():
      problems += [f'{page}:{n}' for n in split_tables(_read(page))]
    if problems:
      self.fail(
        'a table row with no header above it (a blank line cut its table?):\n' + '\n'.join(problems)
      )

  def test_readme_is_short_and_links_every_docs_page_and_result(self):
    readme = _read('README.md')
    self.assertLessEqual(
      len(readme.splitlines()), _README_MAX_LINES, 'README.md: move detail into docs/'
    )
    targets = {os.path.normpath(t.partition('#')[0]) for _, t in links(readme)}
    pages = {p for p in _pages() if p.startswith('docs/')}
    self.assertSetEqual(pages - targets, set(), 'docs pages missing from the README map')
    results = {p for p in _pages() if p.endswith('/RESULTS.md')}
    self.assertSetEqual(results - targets, set(), 'experiments missing from the results table')

  def test_the_checks_catch_what_they_are_for(self):
    # The checks above pass on today's pages; these show that they can fail.
    self.assertEqual(slug('Running: train, resume, `evaluate`'), 'running-train-resume-evaluate')
    self.assertEqual(slug('What happens when...'), 'what-happens-when')
    self.assertEqual(
      slug('DP-SGD and generation (2026-12-01 and -02)'), 'dp-sgd-and-generation-2026-12-01-and--02'
    )
    page = '# A\n## B c\n## B c\n````\n## Not one\n```\n````\n'
    self.assertSetEqual(anchors(page), {'a', 'b-c', 'b-c-1'})
    pages = {
      'docs/x.md': page + '[ok](#b-c-1) [bad](#nope) `[code](#nope)` [web](https://e.org/#x)\n'
      '[gone](missing.md) [there](y.md#a) [not there](../y.md#a) [no](y.md#b)\n',
      'docs/y.md': '# A\n',
      'y.md': '# B\n',
    }
    problems = broken_links('docs/x.md', pages.__getitem__, pages.__contains__)
    self.assertLen(problems, 4, problems)
    for problem, why in zip(problems, ('#nope', 'missing.md', '#a', '#b')):
      self.assertIn(why, problem)
    self.assertEqual(split_tables('| a |\n| --- |\n| 1 |\n\n| 2 |\n'), [5])
    self.assertEqual(split_tables('| a |\n| --- |\n| 1 |\n| 2 |\n'), [])


if __name__ == '__main__':
  absltest.main()
