"""Evaluation of CLIP models: zero-shot classification with prompt ensembles, linear probe,
image-text retrieval and a train/eval near-duplicate check (`wit-eval`).

Modules: `datasets` (class folders, caption CSVs, shards), `load` (checkpoints and the
encoders), `metrics`, `zeroshot`, `probe`, `retrieval`, `overlap`. The trainer calls
`train.eval.zeroshot.evaluate`.
"""
