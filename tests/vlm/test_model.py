"""The VLM's wiring: image tokens sit before the text, and the text positions' logits come back aligned."""

from __future__ import annotations

import math

import pytest
import torch

from kiln.errors import KilnError
from kiln.model.config import ModelConfig
from kiln.model.presets import PRESETS
from kiln.vlm.model import VLM, VisionConfig, VLMConfig


def _vlm(seed: int = 0, init: str = "normal", stem: str = "conv", shape_hue_share: float = 0.0) -> VLM:
    torch.manual_seed(seed)
    text = ModelConfig(**{**PRESETS["olmo2-tiny"], "vocab_size": 64, "n_layers": 2, "d_model": 32, "n_heads": 2,
                          "d_ff": 64, "init": init})
    vision = VisionConfig(image_size=32, patch=8, d_model=16, n_layers=1, n_heads=2, pool=2, stem=stem,
                          shape_hue_share=shape_hue_share)
    return VLM(VLMConfig(vision, text)).eval()


def test_logits_cover_the_text_positions_and_equal_the_decoder_fed_the_image_prefix():
    model, ids, images = _vlm(), torch.randint(0, 64, (2, 5)), torch.rand(2, 3, 32, 32)
    logits = model(ids, images=images)
    assert logits.shape[:2] == (2, 5)
    prefix = model.image_tokens(images)
    assert prefix.shape == (2, 4, 32)  # 4 x 4 patches pooled 2 x 2
    embeds = torch.cat([prefix, model.text.embed(ids)], dim=1)  # the placement, written out by hand
    by_hand = model.text(ids[:, :0], prefix=embeds)  # every position given as an embedding
    assert torch.allclose(logits, by_hand[:, 4:], atol=1e-6)


@pytest.mark.parametrize("init", ["normal", "scaled_embed"])
def test_image_tokens_start_at_the_scale_of_the_text_embeddings(init):
    model = _vlm(init=init)
    rms = model.image_tokens(torch.rand(4, 3, 32, 32)).detach().pow(2).mean().sqrt()
    text_rms = model.text.embed.weight.detach().pow(2).mean().sqrt()
    assert 0.5 < float(rms / text_rms) < 2.0  # 0.02 vs 1: the two schemes differ 50-fold


def test_image_tokens_come_before_the_text_so_the_first_token_sees_the_image():
    model, ids = _vlm(), torch.randint(0, 64, (1, 5))
    a = model(ids, images=torch.zeros(1, 3, 32, 32))
    b = model(ids, images=torch.ones(1, 3, 32, 32))
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-6)  # image tokens after the text could not reach token 0


def test_the_text_part_does_not_see_future_tokens():
    model, images = _vlm(), torch.rand(1, 3, 32, 32)
    ids = torch.randint(0, 64, (1, 6))
    changed = ids.clone()
    changed[0, 4:] = (ids[0, 4:] + 1) % 64
    assert torch.allclose(model(ids, images=images)[:, :4], model(changed, images=images)[:, :4], atol=1e-6)


def test_every_vision_weight_is_initialised_from_the_configured_std():
    model = _vlm()
    w = model.vision.encoder.layers[0].linear1.weight
    assert 0.015 < w.std().item() < 0.025 and w.abs().max().item() <= 3 * 0.02 + 1e-6
    assert model.vision.encoder.layers[0].self_attn.in_proj_bias.abs().max().item() == 0


@pytest.mark.parametrize("kwargs, message", [(dict(image_size=30, patch=8), "multiple of vision.patch"),
                                             (dict(image_size=24, patch=8, pool=2), "does not split"),
                                             (dict(d_model=30, n_heads=4), "vision.n_heads"),
                                             (dict(shape_hue_share=1.5), "vision.shape_hue_share=1.5"),
                                             (dict(shape_hue_share=0.5, object_loss=0), "vision.object_loss")])
def test_bad_vision_shapes_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionConfig(**kwargs)


def test_greedy_decoding_with_an_image_prefix_matches_the_forward_pass_with_and_without_cache():
    from kiln.generate.sampling import generate

    model, images = _vlm(), torch.rand(2, 3, 32, 32)
    prompts = [[3, 4, 5], [7]]  # different lengths: the second row is left-padded after its image tokens
    prefix = model.image_tokens(images)
    cached = generate(model.text, prompts, 6, prefix=prefix)
    assert cached == generate(model.text, prompts, 6, prefix=prefix, use_cache=False)
    for row, ids in enumerate(prompts):  # each row alone, token by token through the VLM's own forward
        seq = list(ids)
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq]), images=images[row:row + 1])[0, -1, :64].argmax()))
        assert seq[len(ids):] == cached[row]


@pytest.mark.parametrize("token_positions", [True, False])
def test_image_tokens_of_a_uniform_image_differ_by_place_only_with_token_positions(token_positions):
    torch.manual_seed(0)
    text = ModelConfig(**{**PRESETS["olmo2-tiny"], "vocab_size": 64, "n_layers": 1, "d_model": 32, "n_heads": 2,
                          "d_ff": 64})
    vision = VisionConfig(image_size=32, patch=8, d_model=16, n_layers=1, n_heads=2, token_positions=token_positions)
    model = VLM(VLMConfig(vision, text))
    with torch.no_grad():  # identical patches everywhere; the ViT's own row/column embeddings switched off
        model.vision.row_embed.zero_()
        model.vision.col_embed.zero_()
    tokens = model.image_tokens(torch.full((1, 3, 32, 32), 0.5))[0]
    assert torch.allclose(tokens[0], tokens[3]) is not token_positions


def test_a_config_of_the_earlier_model_is_refused_with_a_reason():
    saved = _vlm().cfg.to_dict()
    assert VLMConfig.from_dict(saved) == _vlm().cfg
    del saved["vision"]["object_loss"]
    with pytest.raises(KilnError, match="predates"):
        VLMConfig.from_dict(saved)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_the_object_loss_is_the_weighted_cross_entropy_of_the_patch_classes_and_trains_the_vit(stem):
    model = _vlm(stem=stem).train()
    ids, images = torch.randint(0, 64, (2, 5)), torch.rand(2, 3, 32, 32)
    labels = torch.randint(0, 7, (2, 2, 4, 4))
    logits, loss = model(ids, images=images, object_labels=labels)
    assert torch.equal(logits, model(ids, images=images))  # the answer logits do not change
    patches = model.vision(images)
    scores = model.objects.proj(patches)
    by_hand = (torch.nn.functional.cross_entropy(scores[..., :7].reshape(-1, 7), labels[:, 0].reshape(-1))
               + torch.nn.functional.cross_entropy(scores[..., 7:].reshape(-1, 7), labels[:, 1].reshape(-1)))
    assert torch.allclose(loss, model.cfg.vision.object_loss * by_hand)
    loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in model.vision.patchify.parameters())
    assert all(p.grad is None for p in model.text.parameters())  # the text model is not in this loss


def test_no_object_head_when_its_weight_is_zero():
    text = ModelConfig(**{**PRESETS["olmo2-tiny"], "vocab_size": 64, "n_layers": 1, "d_model": 32, "n_heads": 2,
                          "d_ff": 64})
    model = VLM(VLMConfig(VisionConfig(image_size=32, d_model=16, n_layers=1, n_heads=2, object_loss=0.0), text))
    assert model.objects is None and not any(name.startswith("objects.") for name in model.state_dict())
    out = model(torch.randint(0, 64, (1, 3)), images=torch.rand(1, 3, 32, 32),
                object_labels=torch.zeros(1, 2, 4, 4, dtype=torch.long))
    assert isinstance(out, torch.Tensor)


def test_the_conv_stem_gives_one_feature_per_patch_from_overlapping_neighbourhoods():
    torch.manual_seed(0)
    vision = VisionConfig(image_size=32, patch=8, d_model=16, n_layers=1, n_heads=2, stem="conv")
    text = ModelConfig(**{**PRESETS["olmo2-tiny"], "vocab_size": 64, "n_layers": 1, "d_model": 32, "n_heads": 2,
                          "d_ff": 64})
    model = VLM(VLMConfig(vision, text)).eval()
    images = torch.rand(1, 3, 32, 32)
    assert model.vision(images).shape == (1, 4, 4, 16)
    nudged = images.clone()
    nudged[..., 7, 7] += 0.5  # the last pixel of patch (0, 0): a linear patchify would change that patch only
    changed = (model.vision.patchify(nudged * 2 - 1) - model.vision.patchify(images * 2 - 1)).abs().sum(1)[0] > 0
    assert changed[0, 0] and changed[1, 1]  # the 3x3 kernels also carry it to the neighbouring patch
    assert not changed[3, 3]
    assert VLMConfig.from_dict(model.cfg.to_dict()) == model.cfg


def test_a_checkpoint_saved_before_the_stem_option_loads_with_the_linear_patchify():
    saved = _vlm().cfg.to_dict()
    del saved["vision"]["stem"]
    assert VLMConfig.from_dict(saved).vision.stem == "patch"


@pytest.mark.parametrize("kwargs, message", [(dict(stem="convnext"), "vision.stem='convnext'"),
                                             (dict(image_size=36, patch=12, stem="conv"), "power of two")])
def test_bad_stems_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionConfig(**kwargs)


def test_the_conv_stem_carries_the_image_signal_to_its_last_map_undiminished():
    model = _vlm(stem="conv")  # He-initialised inner convolutions; at std 0.02 each would shrink it ~5-fold
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    inner = model.vision.patchify.layers[:-1](images).detach()
    assert 0.5 < float(inner.pow(2).mean().sqrt() / images.pow(2).mean().sqrt()) < 2


def test_the_prefix_lm_mask_by_hand():
    from kiln.model.transformer import prefix_lm_mask

    mask = prefix_lm_mask(torch.tensor([2, 3]), 4, pad_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    first = [[1, 1, 0, 0],  # positions 0-1 see each other, 2-3 causal
             [1, 1, 0, 0],
             [1, 1, 1, 0],
             [1, 1, 1, 1]]
    second = [[1, 1, 1, 0],  # positions 0-2 both ways; key 3 is padding, seen by itself only
              [1, 1, 1, 0],
              [1, 1, 1, 0],
              [1, 1, 1, 1]]
    assert mask.shape == (2, 1, 4, 4)
    assert mask[:, 0].int().tolist() == [first, second]


def _prefix_vlm() -> VLM:
    model = _vlm()
    model.cfg.prefix_lm = True
    return model


def test_a_prefix_lm_lets_image_and_question_see_the_whole_question_but_no_answer():
    model, images = _prefix_vlm(), torch.rand(1, 3, 32, 32)
    ids, prompt = torch.randint(0, 64, (1, 6)), torch.tensor([3])  # 3 question tokens, then the answer
    later_question, answer = ids.clone(), ids.clone()
    later_question[0, 2] = (ids[0, 2] + 1) % 64
    answer[0, 4:] = (ids[0, 4:] + 1) % 64
    base = model(ids, images=images, prompt_lens=prompt)
    assert not torch.allclose(base[:, 0], model(later_question, images=images, prompt_lens=prompt)[:, 0], atol=1e-6)
    assert torch.allclose(base[:, :4], model(answer, images=images, prompt_lens=prompt)[:, :4], atol=1e-6)
    with pytest.raises(ValueError, match="prompt_lens"):
        model(ids, images=images)


def test_prefix_lm_greedy_decoding_matches_its_forward_pass_with_and_without_cache():
    from kiln.generate.sampling import generate

    model, images = _prefix_vlm(), torch.rand(2, 3, 32, 32)
    prompts = [[3, 4, 5], [7]]
    prefix = model.image_tokens(images)
    cached = generate(model.text, prompts, 6, prefix=prefix, prefix_lm=True)
    assert cached == generate(model.text, prompts, 6, prefix=prefix, prefix_lm=True, use_cache=False)
    assert cached != generate(model.text, prompts, 6, prefix=prefix)  # the causal decoder answers otherwise
    for row, ids in enumerate(prompts):  # each row alone through the VLM's training forward
        seq = list(ids)
        for _ in range(6):
            logits = model(torch.tensor([seq]), images=images[row:row + 1], prompt_lens=torch.tensor([len(ids)]))
            seq.append(int(logits[0, -1, :64].argmax()))
        assert seq[len(ids):] == cached[row]


def test_the_prefix_lm_setting_travels_with_the_config():
    cfg = _prefix_vlm().cfg
    assert VLMConfig.from_dict(cfg.to_dict()).prefix_lm is True
    older = {k: v for k, v in cfg.to_dict().items() if k != "prefix_lm"}
    assert VLMConfig.from_dict(older).prefix_lm is False


def test_a_hue_rotation_changes_every_colour_and_keeps_greys():
    from kiln.vlm.model import rotate_hue
    from kiln.vlm.scenes import COLOURS

    pixels = lambda rgb: torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
    third = torch.tensor([2 * math.pi / 3])
    assert torch.allclose(rotate_hue(pixels([1.0, 0.0, 0.0]), third), pixels([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(rotate_hue(pixels([0.0, 1.0, 0.0]), third), pixels([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(rotate_hue(pixels([0.3, 0.3, 0.3]), torch.tensor([1.0])), pixels([0.3, 0.3, 0.3]))
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32).view(-1, 3, 1, 1) / 255
    for angle in (math.pi / 3, math.pi, 5 * math.pi / 3):  # the range the training draws from, ends included
        turned = rotate_hue(palette, torch.full((len(palette),), angle))
        assert (turned - palette).flatten(1).norm(dim=1).min() > 0.2  # every object colour moves
    assert torch.allclose(rotate_hue(palette, torch.full((len(palette),), 2 * math.pi)), palette, atol=1e-6)


def test_the_hue_rotated_rows_add_a_shape_loss_in_training_only(monkeypatch):
    """With the rotation made the identity, the extra term is the shape cross-entropy of the first rows' patches,
    which is then computable by hand; in eval mode nothing is added."""
    import kiln.vlm.model as vlm_model

    ids, images = torch.randint(0, 64, (4, 5)), torch.rand(4, 3, 32, 32)
    labels = torch.randint(0, 7, (4, 2, 4, 4))
    plain, shared = _vlm().train(), _vlm(shape_hue_share=0.5).train()  # same seed: same weights
    base = plain(ids, images=images, object_labels=labels)[1]
    monkeypatch.setattr(vlm_model, "rotate_hue", lambda x, angles: x)
    extra = shared(ids, images=images, object_labels=labels)[1] - base
    shape = shared.objects.proj(shared.vision(images[:2]))[..., 7:]
    by_hand = torch.nn.functional.cross_entropy(shape.reshape(-1, 7), labels[:2, 1].reshape(-1))
    assert torch.allclose(extra, shared.cfg.vision.object_loss * by_hand, atol=1e-6)
    assert torch.allclose(shared.eval()(ids, images=images, object_labels=labels)[1],
                          plain.eval()(ids, images=images, object_labels=labels)[1])
