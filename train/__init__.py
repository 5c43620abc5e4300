"""The torch side of WIT Builder: CLIP models, tokenizer, loss, trainer and evaluation.

It reads shards through the format in docs/shard-format.md only, and never imports
`pipeline` or Apache Beam.
"""
