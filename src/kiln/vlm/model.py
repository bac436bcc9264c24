"""The VLM: a small ViT, Molmo's connector, and Kiln's decoder, read top to bottom.

image (B, 3, H, W) -> patches of `patch` px -> ViT -> optional pooling of neighbouring patch features -> MLP and
norm to the decoder's width -> image tokens placed before the text tokens -> the Kiln Transformer -> logits of the
text positions only, so a batch's labels line up with its token ids and the trainer's loss needs no change.

Molmo (Deitke et al. 2024, "Molmo and PixMo", section 2) crops a CLIP ViT-L/14's features, pools each 2x2 window of
patches (with attention) and projects them with an MLP into the LLM; here the ViT is trained from scratch, with an
auxiliary object loss standing in for CLIP's pretraining, and pooling (a plain mean) is off by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from kiln.errors import KilnError
from kiln.model.config import ModelConfig
from kiln.model.init import embedding_stds, trunc_normal_
from kiln.model.transformer import Transformer, prefix_lm_mask
from kiln.vlm.scenes import COLOURS, SHAPES

N_COLOURS, N_SHAPES = len(COLOURS), len(SHAPES)
STEMS = ("patch", "conv")


@dataclass
class VisionConfig:
    """The image encoder's shape. 96 px images in 8 px patches give 12 x 12 patches, 144 image tokens unpooled."""

    image_size: int = 96
    patch: int = 8
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    pool: int = 1  # Molmo pools 2 x 2 patches into one token; at 96 px such a token is as large as an object
    object_loss: float = 1.0  # weight of the ViT's auxiliary object loss (see ObjectHead); 0 = none
    token_positions: bool = True  # a learned embedding per image token, added in the decoder's width (see Connector)
    init_std: float = 0.02
    stem: str = "conv"  # "conv": stride-2 3x3 convolutions (see ConvStem); "patch": one linear map per patch (ViT)
    shape_hue_share: float = 0.0  # share of each batch the object loss also reads hue-rotated, for shape alone

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"vision.image_size={self.image_size} is not a multiple of vision.patch={self.patch}")
        if self.grid % self.pool:
            raise ValueError(f"the {self.grid} x {self.grid} patch grid does not split into {self.pool} x "
                             f"{self.pool} windows; change vision.image_size, vision.patch or vision.pool")
        if self.d_model % self.n_heads:
            raise ValueError(f"vision.d_model={self.d_model} is not a multiple of vision.n_heads={self.n_heads}")
        if not 0 <= self.shape_hue_share <= 1:
            raise ValueError(f"vision.shape_hue_share={self.shape_hue_share} is not a share between 0 and 1")
        if self.shape_hue_share and not self.object_loss:
            raise ValueError(f"vision.shape_hue_share={self.shape_hue_share} needs the object loss it adds to; "
                             "set vision.object_loss above 0 or the share to 0")
        if self.stem not in STEMS:
            raise ValueError(f"vision.stem={self.stem!r} is not one of {', '.join(STEMS)}")
        if self.stem == "conv" and (self.patch < 2 or self.patch & (self.patch - 1)):
            raise ValueError(f"vision.stem=conv halves the image per convolution: vision.patch={self.patch} must be "
                             "a power of two (2, 4, 8, 16)")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def image_tokens(self) -> int:
        return (self.grid // self.pool) ** 2


@dataclass
class VLMConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: ModelConfig = field(default_factory=ModelConfig)
    prefix_lm: bool = False  # image and question tokens attend to each other both ways; the answer stays causal

    def to_dict(self) -> dict:
        return {"vision": asdict(self.vision), "text": self.text.to_dict(), "prefix_lm": self.prefix_lm}

    @classmethod
    def from_dict(cls, data: dict) -> VLMConfig:
        if not isinstance(data, dict) or not {"vision", "text"} <= set(data) <= {"vision", "text", "prefix_lm"}:
            raise KilnError("not a VLM config: expected the keys vision and text (is this a text model's checkpoint?)")
        if "object_loss" not in data["vision"]:
            raise KilnError("this VLM checkpoint predates kiln vlm's current model (connector norm, object head, "
                            "generator version 3 data); train a new one with `kiln vlm train`")
        vision = {"stem": "patch", **data["vision"]}  # saved before the conv stem existed
        return cls(VisionConfig(**vision), ModelConfig.from_dict(data["text"]), data.get("prefix_lm", False))


class ConvStem(nn.Module):
    """log2(patch) 3x3 convolutions of stride 2, channels doubling up to d_model, then a 1x1 convolution: one
    feature vector per patch, as the linear patchify gives, but built from overlapping neighbourhoods.

    Xiao et al. 2021 ("Early Convolutions Help Transformers See Better") replace the ViT's patchify by such a stem;
    here it is what lets a ViT trained from scratch tell a hexagon from a circle 10 px wide, whose edges a linear map
    of an 8 px patch sees cut in pieces (docs/vlm.md)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        n = cfg.patch.bit_length() - 1
        widths = [3] + [max(cfg.d_model >> (n - 1 - i), 8) for i in range(n)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.GELU()]
        self.layers = nn.Sequential(*layers, nn.Conv2d(widths[-1], cfg.d_model, kernel_size=1))

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


class ViT(nn.Module):
    """Patches -> pre-norm transformer encoder (torch's own layers) with learned row and column embeddings."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patchify = (ConvStem(cfg) if cfg.stem == "conv" else
                         nn.Conv2d(3, cfg.d_model, kernel_size=cfg.patch, stride=cfg.patch))
        self.row_embed = nn.Parameter(torch.zeros(cfg.grid, cfg.d_model))  # 2-D positions: row + column
        self.col_embed = nn.Parameter(torch.zeros(cfg.grid, cfg.d_model))
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, int(cfg.mlp_ratio * cfg.d_model), dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model),
                                             enable_nested_tensor=False)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, grid, grid, d) patch features."""
        x = self.patchify(images * 2 - 1)  # (B, d, grid, grid)
        x = x.permute(0, 2, 3, 1) + self.row_embed[:, None] + self.col_embed[None, :]
        B, G = x.shape[0], self.cfg.grid
        return self.encoder(x.reshape(B, G * G, -1)).reshape(B, G, G, -1)


class Connector(nn.Module):
    """Mean of each pool x pool window of patches, then an MLP into the decoder's width (Molmo's connector).

    The decoder's RoPE only tells a text token how far back an image token is, and that distance changes with the
    question's length; with `token_positions` each image token also carries a learned embedding of its place in the
    grid, so where an object is can be read off the token that shows it.
    """

    def __init__(self, vision: VisionConfig, d_text: int) -> None:
        super().__init__()
        self.pool = vision.pool
        self.mlp = nn.Sequential(nn.Linear(vision.d_model, d_text), nn.GELU(), nn.Linear(d_text, d_text))
        self.norm = nn.LayerNorm(d_text)  # image tokens start at the scale of the decoder's token embeddings
        self.position = nn.Parameter(torch.zeros(vision.image_tokens, d_text)) if vision.token_positions else None

    def forward(self, patches: Tensor) -> Tensor:
        """(B, G, G, d) -> (B, (G / pool)^2, d_text), windows in row-major order."""
        x = F.avg_pool2d(patches.permute(0, 3, 1, 2), self.pool)  # (B, d, G/p, G/p)
        tokens = self.norm(self.mlp(x.flatten(2).transpose(1, 2)))
        return tokens if self.position is None else tokens + self.position


class ObjectHead(nn.Module):
    """The ViT's auxiliary objective: each patch names the colour and the shape of the object whose point (the
    pixel an answer points at) lies in it, or "none". Molmo starts from a ViT that CLIP pretrained on 400M image
    and caption pairs; trained from scratch, ours gets no useful gradient through a decoder that has not yet learned
    to look, and the decoder cannot learn to look at features that say nothing (docs/vlm.md has the runs). This dense
    loss breaks that loop from the image side; it is added to the answer loss with weight `vision.object_loss`."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.weight = cfg.object_loss
        self.proj = nn.Linear(cfg.d_model, N_COLOURS + 1 + N_SHAPES + 1)

    def class_logits(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """patches (B, G, G, d) -> colour (B, G, G, colours + 1) and shape (B, G, G, shapes + 1) logits."""
        logits = self.proj(patches)
        return logits[..., :N_COLOURS + 1], logits[..., N_COLOURS + 1:]

    def forward(self, patches: Tensor, labels: Tensor, recoloured: Tensor | None = None) -> Tensor:
        """patches (B, G, G, d), labels (B, 2, G, G) of colour and shape classes (0 = none) -> weighted loss.
        `recoloured`: patches of hue-rotated copies of the first rows, whose shapes (not colours) are scored too."""
        colour, shape = self.class_logits(patches)
        loss = (F.cross_entropy(colour.flatten(0, 2), labels[:, 0].flatten())
                + F.cross_entropy(shape.flatten(0, 2), labels[:, 1].flatten()))
        if recoloured is not None:
            shape = self.class_logits(recoloured)[1]
            loss = loss + F.cross_entropy(shape.flatten(0, 2), labels[:len(recoloured), 1].flatten())
        return self.weight * loss


def rotate_hue(images: Tensor, angles: Tensor) -> Tensor:
    """images (B, 3, H, W) in [0, 1], each turned by its angle (radians) about the grey axis of RGB space:
    every colour changes, greys and shapes stay. A third of a turn maps red to green exactly (Rodrigues' formula)."""
    axis = torch.full((3,), 3 ** -0.5, device=images.device, dtype=images.dtype)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=images.device,
                         dtype=images.dtype) * 3 ** -0.5  # the matrix of axis x (.)
    cos, sin = angles.cos()[:, None, None], angles.sin()[:, None, None]
    rotation = cos * torch.eye(3, device=images.device, dtype=images.dtype) + sin * cross \
        + (1 - cos) * torch.outer(axis, axis)
    centred = images - 0.5  # the grey axis through mid-grey, so rotation keeps values near [0, 1]
    return (torch.einsum("bij,bjhw->bihw", rotation, centred) + 0.5).clamp(0, 1)


class VLM(nn.Module):
    """(images, token ids) -> logits of the text positions; image tokens come first."""

    def __init__(self, cfg: VLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = ViT(cfg.vision)
        self.connector = Connector(cfg.vision, cfg.text.d_model)
        self.objects = ObjectHead(cfg.vision) if cfg.vision.object_loss else None
        self.text = Transformer(cfg.text)  # initialises itself (kiln.model.init)
        init_vision_weights(self, cfg.vision.init_std)

    def image_tokens(self, images: Tensor) -> Tensor:
        return self.connector(self.vision(images))

    def forward(self, input_ids: Tensor, *, images: Tensor, object_labels: Tensor | None = None,
                prompt_lens: Tensor | None = None, head_fn: Callable[[Tensor, Tensor], Any] | None = None,
                **kwargs) -> Any:
        """Logits of the text positions, or `head_fn` of their hidden states (kiln.model.transformer); with
        `object_labels` (training), also the ViT's object loss. A prefix LM needs `prompt_lens` (B,): the
        question tokens of each row, which with the image tokens form the part attended both ways."""
        patches = self.vision(images)
        prefix = self.connector(patches)
        P = prefix.shape[1]
        if self.cfg.prefix_lm:
            if prompt_lens is None:
                raise ValueError("a prefix-LM VLM needs prompt_lens: the question tokens of each row")
            kwargs["attn_mask"] = prefix_lm_mask(P + prompt_lens.to(input_ids.device), P + input_ids.shape[1])
        if head_fn is not None:
            logits = self.text(input_ids, prefix=prefix, head_fn=lambda x, w: head_fn(x[:, P:], w), **kwargs)
        else:
            logits = self.text(input_ids, prefix=prefix, **kwargs)
            logits = logits if kwargs.get("last_only") else logits[:, P:]
        if object_labels is None or self.objects is None:
            return logits
        return logits, self.objects(patches, object_labels, self._recoloured_patches(images))

    def _recoloured_patches(self, images: Tensor) -> Tensor | None:
        """ViT patches of hue-rotated copies of the batch's first `vision.shape_hue_share` rows (training only), each
        turned by an angle from [60, 300] degrees: the object loss then asks for shapes whatever their colour, which
        a held-out colour/shape pair needs (docs/vlm.md, run 14)."""
        rows = math.ceil(self.cfg.vision.shape_hue_share * images.shape[0])
        if not self.training or rows == 0:
            return None
        angles = torch.empty(rows, device=images.device).uniform_(math.pi / 3, 5 * math.pi / 3)
        return self.vision(rotate_hue(images[:rows], angles))


def init_vision_weights(model: VLM, std: float) -> None:
    """Every vision and connector matrix from a truncated normal(0, std), as OLMo 2 initialises its decoder
    (kiln.model.init); biases zero, LayerNorms one; the ViT's position embeddings normal(0, std). A conv stem's
    inner convolutions are He-initialised, so the image's signal reaches its last 1x1 map (std) undiminished.

    What enters the decoder is drawn at the scale of its token embeddings (0.02 under OLMo 2's init, 1 under
    `scaled_embed`): the connector's output norm has that gain and its per-token positions that std. Image tokens
    far smaller than the text's are drowned in the decoder's residual stream, whose sub-layer outputs are normalised
    to about 1 (OLMo 2's reordered norm)."""
    embed_std = embedding_stds(model.cfg.text)[0]
    heads = model.objects.modules() if model.objects is not None else []
    for module in [*model.vision.modules(), *model.connector.modules(), *heads]:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            trunc_normal_(module.weight, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            trunc_normal_(module.in_proj_weight, std)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if isinstance(model.vision.patchify, ConvStem):  # inner convolutions keep their signal (He et al. 2015)
        for conv in list(model.vision.patchify.layers)[:-1]:
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    trunc_normal_(model.vision.row_embed, std)
    trunc_normal_(model.vision.col_embed, std)
    nn.init.constant_(model.connector.norm.weight, embed_std)
    if model.connector.position is not None:
        trunc_normal_(model.connector.position, embed_std)


def load_vlm(path: str | Path, device: str | torch.device = "cpu") -> tuple[VLM, Tokenizer]:
    """The VLM and tokenizer of a checkpoint: a step folder, or a run folder (its newest step), in eval mode."""
    from safetensors.torch import load_file

    from kiln.checkpoint import (
        WEIGHTS_FILE,
        load_checkpoint_tokenizer,
        load_state_strict,
        read_model_meta,
        resolve_model_dir,
    )

    model_dir = resolve_model_dir(path)
    cfg = VLMConfig.from_dict(read_model_meta(model_dir))
    tok = load_checkpoint_tokenizer(model_dir)
    if tok is None:
        raise KilnError(f"{model_dir} holds no tokenizer.json; a VLM checkpoint carries its dataset's tokenizer")
    with torch.device("meta"):
        model = VLM(cfg)
    load_state_strict(model, load_file(str(model_dir / WEIGHTS_FILE), device=str(device)))
    return model.eval(), tok
