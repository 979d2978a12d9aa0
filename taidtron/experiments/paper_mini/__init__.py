"""The paper-mini experiment (`make paper-mini`, `tools/paper_mini.py`): a pretrained student distilled by TAID and
the official code's baselines from teachers of two sizes and, in a transfer variant, from a teacher fine-tuned on
another domain, on the Python documentation, replicated, with paired 95% intervals; the page
docs/results/paper_mini.md is written from the raw numbers.

    corpus.py      the Python documentation (Debian's python3.11-doc) -> one prose document per page; its domains
    dataset.py     tokenizer + one indexed dataset per domain, under <work>/data
    design.py      what runs: models, training lengths, arms, replicates (FULL, QUICK); configs/paper_mini.yaml
                   holds what every distillation run shares
    jobs.py        every run as a Job (overrides, dependencies, spec hash), and the test cells
    runner.py      a pool of worker processes running jobs in-process (taidtron.train.run / session + evaluate)
    results.py     the raw results (paper_mini.json) from the runs' files
    stats.py       95% t-intervals, paired differences
    analysis.py    cells, key contrasts, the teachers' gap, entropy against the teacher, t against its floor
    reading.py     the page's sentences, each from an interval
    figures.py     the plots; page.py the page
    experiment.py  all of it in order
"""
