"""A tiny random kiln model with the built-in tokenizer, saved once, and the committed evaluation fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from kiln.checkpoint import save_model_dir
from kiln.data.tokenizer import eos_id
from kiln.eval.scoring import PairEncoder
from kiln.model.presets import preset
from kiln.model.transformer import Transformer

FIXTURES = Path(__file__).resolve().parents[1] / "assets" / "evals"
BUILTIN_TOKENIZER = Path(__file__).resolve().parents[2] / "src" / "kiln" / "assets" / "builtin_tokenizer.json"


def tiny_model(max_seq_len: int = 1024, seed: int = 0) -> tuple[Transformer, Tokenizer]:
    torch.manual_seed(seed)
    tok = Tokenizer.from_file(str(BUILTIN_TOKENIZER))
    cfg = preset("olmo2-tiny", vocab_size=tok.get_vocab_size(), max_seq_len=max_seq_len, n_layers=2, d_model=64,
                 n_heads=4, d_ff=128)
    return Transformer(cfg).eval(), tok


def encoder_for(tok: Tokenizer) -> PairEncoder:
    return PairEncoder(lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)], eos_id(tok))


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> Path:
    model, tok = tiny_model()
    return save_model_dir(model, tmp_path_factory.mktemp("eval-model") / "model", tok)


@pytest.fixture(scope="session")
def hf_model(saved_model, tmp_path_factory) -> Path:
    from kiln.hf.convert import export_hf

    return export_hf(saved_model, tmp_path_factory.mktemp("eval-hf") / "hf")
