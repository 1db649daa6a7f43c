"""The bundled world: deterministic data, held-out concepts kept out, and shipped assets that load."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.world.data import FONT_PATH, HELD_IN, HELD_OUT, generate, sample_scene, scene_rng, world_words
from lifelong.world.tokenizer import build_tokenizer

ASSETS = Path(__file__).resolve().parents[1] / "assets"
needs_font = pytest.mark.skipif(not FONT_PATH.exists(), reason="emoji font not installed")


def test_scenes_are_deterministic_per_seed() -> None:
    first = [sample_scene(scene_rng(3, i)) for i in range(50)]
    again = [sample_scene(scene_rng(3, i)) for i in range(50)]
    other = [sample_scene(scene_rng(4, i)) for i in range(50)]
    assert first == again
    assert first != other


def test_pair_share_sets_how_many_scenes_hold_two_emoji() -> None:
    def share(pairs: float) -> float:
        return float(
            np.mean([len(sample_scene(scene_rng(7, i), pairs=pairs).objects) == 2 for i in range(400)])
        )

    assert share(0.0) == 0.0 and share(1.0) == 1.0
    assert 0.18 < share(0.25) < 0.32 and 0.42 < share(0.5) < 0.58
    shipped = [sample_scene(scene_rng(7, i)) for i in range(50)]
    assert shipped == [sample_scene(scene_rng(7, i), pairs=0.25) for i in range(50)]  # the default unchanged


@needs_font
def test_rendering_is_deterministic_per_seed() -> None:
    a, scene_a = generate(0, 11)
    b, scene_b = generate(0, 11)
    assert scene_a == scene_b
    assert a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_held_out_emoji_never_in_training_captions() -> None:
    held_out = {e.char for e in HELD_OUT}
    assert len(HELD_OUT) >= 20
    assert not held_out & {e.char for e in HELD_IN}
    for i in range(3000):
        scene = sample_scene(scene_rng(0, i))
        assert not held_out & {p.emoji.char for p in scene.objects}
        for emoji in HELD_OUT:
            assert not re.search(rf"\b{re.escape(emoji.name)}\b", scene.caption)


def test_captions_use_only_world_words() -> None:
    tokenizer = build_tokenizer(world_words())
    for i in range(500):
        ids = tokenizer(sample_scene(scene_rng(1, i)).caption).input_ids
        assert tokenizer.unk_token_id not in ids


@needs_font
def test_broad_scenes_hold_every_other_emoji_captioned_by_class_word_only() -> None:
    from lifelong.world.data import broad_pool

    pool = broad_pool()
    known = {e.char for e in HELD_IN + HELD_OUT}
    assert len(pool) > 1000 and not known & {e.char for e in pool}
    tokenizer = build_tokenizer(world_words())
    drawn = set()
    for i in range(300):
        _, scene = generate(3, i, broad=1.0)
        drawn |= {p.emoji.char for p in scene.objects}
        assert tokenizer.unk_token_id not in tokenizer(scene.caption).input_ids
    assert drawn <= {e.char for e in pool} and len(drawn) > 200
    # a plain cache draws the same scenes as before the broad pool existed
    assert generate(0, 7)[1] == generate(0, 7, broad=0.0)[1]


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    if not (ASSETS / "base-model" / "model_index.json").exists():
        pytest.skip("assets/base-model not assembled")
    return StableDiffusionPipeline.from_pretrained(
        ASSETS / "base-model", safety_checker=None, requires_safety_checker=False
    )


def test_shipped_tokenizer_pads_adds_tokens_and_tolerates_unknown_words(pipe) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "base-model" / "tokenizer")
    assert tokenizer.model_max_length == 32
    ids = tokenizer(
        ["A Cat face, on the LEFT!", "a wibble"], padding="max_length", max_length=tokenizer.model_max_length
    ).input_ids
    assert all(len(row) == 32 for row in ids)
    assert tokenizer.unk_token_id in ids[1]
    assert tokenizer.unk_token_id not in tokenizer("a cat face, on the left").input_ids
    assert pipe.text_encoder.config.eos_token_id == tokenizer.eos_token_id != 2
    size = len(tokenizer)
    assert tokenizer.add_tokens(["<|slot0|>"]) == 1
    assert tokenizer("a <|slot0|> animal").input_ids[2] == size
    text_encoder = copy.deepcopy(pipe.text_encoder)
    text_encoder.resize_token_embeddings(len(tokenizer))
    hidden = text_encoder(torch.tensor([tokenizer("a <|slot0|>").input_ids])).last_hidden_state
    assert hidden.shape == (1, 4, text_encoder.config.hidden_size)


def test_shipped_pipeline_generates_a_64px_image(pipe) -> None:
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a cat face on a red background",
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)
    config = pipe.scheduler.config
    assert (config.steps_offset, config.clip_sample) == (1, False)


def test_eval_clip_loads_with_its_processor() -> None:
    from transformers import CLIPModel, CLIPProcessor

    if not (ASSETS / "eval-clip" / "config.json").exists():
        pytest.skip("assets/eval-clip not assembled")
    model = CLIPModel.from_pretrained(ASSETS / "eval-clip")
    processor = CLIPProcessor.from_pretrained(ASSETS / "eval-clip")
    from PIL import Image

    inputs = processor(
        text=["a cat face", "a bus"],
        images=[Image.new("RGB", (100, 80), "red")],
        return_tensors="pt",
        padding=True,
    )
    assert model(**inputs).logits_per_image.shape == (1, 2)


def test_shipped_concepts_have_five_references_and_known_class_words() -> None:
    index = json.loads((ASSETS / "concepts" / "index.json").read_text())
    assert len(index) >= 20
    words = set(world_words())
    held_out_names = {e.name for e in HELD_OUT}
    for entry in index:
        assert re.fullmatch(r"[a-z0-9_-]+", entry["name"])
        assert entry["emoji_name"] in held_out_names
        assert entry["class_word"] in words
        assert len(list((ASSETS / "concepts" / entry["name"]).glob("*.png"))) == 5


def test_linear_projection_is_the_same_unet():
    from diffusers import UNet2DConditionModel

    from lifelong.world.assemble import with_linear_projection

    torch.manual_seed(0)
    conv = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=16,
    ).eval()
    linear = with_linear_projection(conv)
    assert not conv.config.use_linear_projection and linear.config.use_linear_projection
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    with torch.no_grad():
        expected, got = conv(x, 500, c).sample, linear(x, 500, c).sample
    assert expected.abs().mean() > 0.01
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert with_linear_projection(linear) is linear


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16,
        latent_channels=4,
    ).eval()


def _assert_same_vae_function(vae, other) -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean
        torch.testing.assert_close(other.encode(x).latent_dist.mean, latents, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            other.decode(latents).sample, vae.decode(latents).sample, atol=1e-4, rtol=1e-4
        )


def test_widened_vae_is_the_same_function_with_room_to_learn():
    from lifelong.world.train_vae import widen_vae

    vae = _tiny_vae()
    wide = widen_vae(vae, (64, 128)).eval()
    assert sum(p.numel() for p in wide.parameters()) > 3 * sum(p.numel() for p in vae.parameters())
    _assert_same_vae_function(vae, wide)
    shares = wide.decoder.conv_out.weight  # the two copies of each unit feed the output differently
    assert not torch.equal(shares[:, 0::2], shares[:, 1::2])
    with pytest.raises(ValueError, match="multiple"):
        widen_vae(vae, (48, 64))


def test_deepened_vae_is_the_same_function_with_layers_that_learn():
    from lifelong.world.train_vae import deepen_vae

    vae = _tiny_vae()
    deep = deepen_vae(vae, 2).eval()
    assert len(deep.decoder.up_blocks[0].resnets) == len(vae.decoder.up_blocks[0].resnets) + 1
    _assert_same_vae_function(vae, deep)
    latents = torch.randn(1, 4, 8, 8)
    deep.decode(latents).sample.square().mean().backward()
    added = deep.decoder.up_blocks[0].resnets[-1]
    assert added.conv2.weight.grad.abs().sum() > 0  # the zero conv is where learning starts
    with pytest.raises(ValueError, match="fewer"):
        deepen_vae(deep, 1)


@needs_font
def test_render_cache_is_the_same_with_workers(tmp_path) -> None:
    from lifelong.world.data import render_cache

    render_cache(tmp_path / "one", 24, seed=5)
    render_cache(tmp_path / "three", 24, seed=5, workers=3)
    for name in ("images.npy", "captions.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()
    assert np.array_equal(np.load(tmp_path / "one" / "images.npy")[7], np.asarray(generate(5, 7)[0]))


def _unet_16_level(down: tuple[str, ...], up: tuple[str, ...]):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
        use_linear_projection=True,
    ).eval()


def test_grown_unet_is_the_same_function_with_text_at_the_finest_level():
    from lifelong.world.grow import new_parameter_names, with_fine_attention

    torch.manual_seed(0)
    unet = _unet_16_level(("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"))
    grown = with_fine_attention(unet).eval()
    assert grown.config.down_block_types[0] == "CrossAttnDownBlock2D"
    assert grown.config.up_block_types[-1] == "CrossAttnUpBlock2D"
    added = new_parameter_names(unet, grown)
    assert added and all(".attentions." in name for name in added)
    assert any("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in name for name in added)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    text = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(unet(x, t, text).sample, grown(x, t, text).sample)
        # the new blocks do see the text once their output projection moves
        grown.down_blocks[0].attentions[0].proj_out.weight.normal_()
        assert not torch.allclose(grown(x, t, text).sample, grown(x, t, torch.randn(2, 5, 32)).sample)
    assert with_fine_attention(grown) is grown


def test_shipped_unet_has_cross_attention_at_its_finest_level() -> None:
    config = json.loads((Path(__file__).parents[1] / "assets/base-model/unet/config.json").read_text())
    assert config["down_block_types"][0] == "CrossAttnDownBlock2D"
    assert config["up_block_types"][-1] == "CrossAttnUpBlock2D"


def test_identity_encoder_tells_the_held_out_concepts_apart() -> None:
    """The shipped evaluator's leave-one-out identification of the 26 held-out concepts' references."""
    from lifelong.folders import load_concepts
    from lifelong.intake import load_images
    from lifelong.metrics import IdentityEncoder, identity_features, leave_one_out_identification

    encoder = IdentityEncoder.load()
    groups = [identity_features(encoder, load_images(list(c.images), 64)) for c in load_concepts()]
    assert len(groups) == 26
    assert leave_one_out_identification(groups) >= 0.95


@needs_font
def test_identity_training_scenes_show_the_glyph_on_a_background() -> None:
    from lifelong.world.data import renderable_emoji
    from lifelong.world.train_identity import compose, glyph_bank

    chars = renderable_emoji()
    assert len(chars) > 1000 and all(e.char in chars for e in HELD_OUT)
    images = compose(glyph_bank(chars[:8]), torch.Generator().manual_seed(0))
    assert images.shape == (8, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert (images.flatten(1).std(dim=1) > 0.05).all()  # not a flat background: the emoji is drawn


def test_shipped_concepts_say_each_references_background_in_a_caption_file() -> None:
    from lifelong.colors import NAMED_COLORS
    from lifelong.folders import load_concepts
    from lifelong.intake import load_images
    from lifelong.metrics import background_color

    for concept in load_concepts()[:6]:
        assert len(concept.captions) == len(concept.images) == 5
        for image, caption in zip(load_images(list(concept.images), 64), concept.captions, strict=True):
            assert caption == f"on a {background_color(image, NAMED_COLORS)} background"
