"""The torch side of WIT Builder: CLIP models, tokenizer, loss, trainer and evaluation.

It reads shards through the format in docs/shard-format.md only, and never imports
`pipeline` or Apache Beam.
"""

from .factory import (
    clean_state_dict,
    config_from_state_dict,
    create_model,
    create_model_from_state_dict,
    list_models,
    load_config,
)
from .loss import ClipLoss
from .tokenizer import get_tokenizer, learn_tokenizer
from .transforms import image_transform

__all__ = [
    "ClipLoss",
    "clean_state_dict",
    "config_from_state_dict",
    "create_model",
    "create_model_from_state_dict",
    "get_tokenizer",
    "image_transform",
    "learn_tokenizer",
    "list_models",
    "load_config",
]
