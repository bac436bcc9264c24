"""Models the scorer can run: kiln's Transformer (kiln checkpoints and HF Olmo2 folders) and any HF causal LM.

Both run packed rows (explicit positions and a 4D mask), and run a prompt once with a KV cache to continue row
copies of it; they differ only in how the model takes the mask and the cache.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import torch
from torch import Tensor

from kiln.errors import KilnError
from kiln.eval.scoring import Backend
from kiln.model.transformer import KVCache, Transformer


class KilnBackend(Backend):
    """kiln's Transformer with its own KVCache."""

    def __init__(self, model: Transformer) -> None:
        self.model, self.cfg = model.eval(), model.cfg
        self.max_length, self.vocab_size = model.cfg.max_seq_len, model.cfg.vocab_size
        self.device, self.cache_dtype = model.embed.weight.device, model.embed.weight.dtype

    @torch.no_grad()
    def prefill(self, ids: Tensor, pad: Tensor, extra: int) -> tuple[Tensor, KVCache]:
        cache = KVCache(self.cfg, ids.shape[0], ids.shape[1] + extra, self.device, self.cache_dtype)
        logits = self.model(ids, pad_mask=pad, cache=cache, last_only=True)
        return logits[:, -1], cache

    @torch.no_grad()
    def packed(self, ids: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        return self.model(ids, positions=positions, attn_mask=mask)

    @torch.no_grad()
    def extend(self, state: KVCache, rows: Tensor, ids: Tensor, pad: Tensor,
               last_only: bool = False) -> tuple[Tensor, KVCache]:
        cache = state.select(rows)
        logits = self.model(ids, pad_mask=pad, cache=cache, last_only=last_only)
        return (logits[:, -1] if last_only else logits), cache


class HFBackend(Backend):
    """A `transformers` causal LM, with explicit positions so left padding does not shift them."""

    def __init__(self, model) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        config = model.config
        self.max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048)
        self.vocab_size = config.vocab_size
        # transformers 5 renamed `past_key_values` to `cache`; older releases know only the first
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def prefill(self, ids: Tensor, pad: Tensor, extra: int) -> tuple[Tensor, object]:
        out = self.model(input_ids=ids, attention_mask=pad.long(), position_ids=_positions(pad), use_cache=True,
                         logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        return out.logits[:, -1], cache

    @torch.no_grad()
    def packed(self, ids: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """transformers takes a 4D mask as given (its "custom 4D attention mask"), as additive float."""
        additive = torch.zeros(mask.shape, dtype=self.model.dtype, device=mask.device)
        additive.masked_fill_(~mask, torch.finfo(self.model.dtype).min)
        return self.model(input_ids=ids, attention_mask=additive, position_ids=positions).logits

    @torch.no_grad()
    def extend(self, state, rows: Tensor, ids: Tensor, pad: Tensor, last_only: bool = False) -> tuple[Tensor, object]:
        state = _fork(state)
        state.batch_select_indices(rows)
        positions = _positions(pad)[:, -ids.shape[1]:]
        out = self.model(input_ids=ids, attention_mask=pad.long(), position_ids=positions, use_cache=True,
                         logits_to_keep=1 if last_only else 0, **{self.cache_arg: state})
        return (out.logits[:, -1] if last_only else out.logits), state


def _fork(cache):
    """A cache that can be selected from and extended without touching `cache`: transformers' layers replace their
    tensors rather than write into them, so copying the layer objects is enough (older caches: a deep copy)."""
    if not hasattr(cache, "layers"):
        return copy.deepcopy(cache)
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    return forked


def _positions(pad: Tensor) -> Tensor:
    return (pad.long().cumsum(-1) - 1).clamp(min=0)


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto` is bf16 on a GPU that has it and fp32 elsewhere; `bf16`/`fp32`/`fp16` are taken as given."""
    if name == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    if name not in dtypes:
        raise KilnError(f"--dtype {name!r} is not one of auto, {', '.join(dtypes)}")
    return dtypes[name]


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "model.json").is_file()


def is_olmo2_dir(path: Path) -> bool:
    import json

    return is_hf_dir(path) and json.loads((path / "config.json").read_text()).get("model_type") == "olmo2"


def load_backend(path: str | Path, device: str, dtype: torch.dtype, hf: bool = False) -> Backend:
    """kiln's Transformer for kiln checkpoints and Olmo2 folders (unless `hf`), `transformers` for other HF dirs."""
    root = Path(path)
    if not root.exists():
        raise KilnError(f"model path {str(root)!r} does not exist")
    if hf or (is_hf_dir(root) and not is_olmo2_dir(root)):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(root), dtype=dtype).to(device)
        return HFBackend(model)
    from kiln import from_pretrained

    return KilnBackend(from_pretrained(root, device=device, dtype=dtype))
