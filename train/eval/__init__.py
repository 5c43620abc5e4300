"""Evaluation of CLIP models: zero-shot classification with prompt ensembles, linear probe,
few-shot probes against zero-shot, robustness to distribution shift, image-text retrieval
and a train/eval near-duplicate check (`wit-eval`).

Modules: `datasets` (class folders, caption CSVs, shards), `load` (checkpoints and the
encoders), `metrics`, `zeroshot`, `probe`, `fewshot`, `robustness` with `shifts` (the
synthetic ImageNet-C-style shifts), `retrieval`, `overlap`. The trainer calls
`train.eval.zeroshot.evaluate`.
"""
