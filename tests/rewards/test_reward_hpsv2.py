"""open_clip -> transformers CLIP key mapping, and the HPSv2 scorer built on it."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch
from PIL import Image
from reward_helpers import make_media, make_prompts
from reward_openclip_ref import OpenClipRef
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from unirl_stream.api import UserInputError
from unirl_stream.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from unirl_stream.rewards.hpsv2 import HPSv2
from unirl_stream.rewards.openclip import MappingError, check_complete, openclip_to_hf
from unirl_stream.rewards.testing import openclip_state_dict

# Key names as they appear in a real open_clip ViT-H-14 / HPS v2.1 state dict.
REAL_KEYS = [
    "positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
    "ln_final.weight", "ln_final.bias", "visual.class_embedding", "visual.positional_embedding",
    "visual.proj", "visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_post.bias",
    "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.attn.in_proj_bias",
    "transformer.resblocks.0.attn.out_proj.weight", "transformer.resblocks.1.mlp.c_fc.weight",
    "transformer.resblocks.1.mlp.c_proj.bias", "transformer.resblocks.1.ln_2.weight",
    "visual.transformer.resblocks.0.ln_1.bias", "visual.transformer.resblocks.1.attn.in_proj_weight",
]


@pytest.fixture(scope="module")
def pair(tiny):
    """(open_clip reference module, transformers CLIPModel with the mapped weights)."""
    config = CLIPConfig.from_pretrained(str(tiny.hps_clip), local_files_only=True)
    state = openclip_state_dict(config, seed=7)
    ref = OpenClipRef(config).eval()
    ref.load_state_dict(state, strict=True)  # the generator's layout is open_clip's
    model = CLIPModel.from_pretrained(None, config=config, state_dict=openclip_to_hf(state)).eval()
    return ref, model, state, config


def test_generated_layout_uses_real_open_clip_names(pair) -> None:
    _, _, state, _ = pair
    assert set(REAL_KEYS) <= set(state)
    assert state["transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)  # [3W, W]
    assert state["visual.proj"].shape == (32, 16)  # [W, D], used as x @ proj


def test_mapping_is_complete_and_splits_fused_qkv(pair) -> None:
    _, model, state, _ = pair
    mapped = openclip_to_hf(state)
    check_complete(mapped, model.state_dict())  # every model key, right shapes, no extras
    w = state["visual.transformer.resblocks.1.attn.in_proj_weight"]
    b = state["transformer.resblocks.0.attn.in_proj_bias"]
    layer = "vision_model.encoder.layers.1.self_attn"
    assert torch.equal(mapped[f"{layer}.q_proj.weight"], w[:32])
    assert torch.equal(mapped[f"{layer}.k_proj.weight"], w[32:64])
    assert torch.equal(mapped[f"{layer}.v_proj.weight"], w[64:])
    assert torch.equal(mapped["text_model.encoder.layers.0.self_attn.v_proj.bias"], b[64:])
    assert torch.equal(mapped["visual_projection.weight"], state["visual.proj"].t())
    assert torch.equal(mapped["text_model.embeddings.position_embedding.weight"], state["positional_embedding"])
    assert torch.equal(mapped["logit_scale"], state["logit_scale"])


def test_mapped_model_computes_open_clip_features(pair) -> None:
    ref, model, _, config = pair
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    vocab = config.text_config.vocab_size
    ids = torch.zeros(2, 77, dtype=torch.long)  # open_clip pads with 0 after end-of-text
    ids[0, :5] = torch.tensor([vocab - 2, 10, 300, 513, vocab - 1])
    ids[1, :3] = torch.tensor([vocab - 2, 42, vocab - 1])
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=ids, attention_mask=(torch.arange(77) < torch.tensor([[5], [3]])).long())
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        torch.testing.assert_close(img, ref.encode_image(pixels), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(txt, ref.encode_text(ids), rtol=1e-5, atol=1e-5)
    assert img.abs().mean() > 0.01 and txt.abs().mean() > 0.01


def test_mapping_rejects_what_it_does_not_know(pair) -> None:
    _, model, state, _ = pair
    with pytest.raises(MappingError, match="unmapped keys: \\['visual.attn_pool.weight'\\]"):
        openclip_to_hf({**state, "visual.attn_pool.weight": torch.zeros(1)})
    partial = openclip_to_hf({k: v for k, v in state.items() if k != "visual.ln_post.weight"})
    with pytest.raises(MappingError, match="missing \\['vision_model.post_layernorm.weight'\\]"):
        check_complete(partial, model.state_dict())
    ddp = openclip_to_hf({f"module.{k}": v for k, v in state.items()})  # DDP-saved checkpoints
    assert set(ddp) == set(openclip_to_hf(state))


def _hps_reference(tiny, media: torch.Tensor, texts: list[str]) -> list[float]:
    """HPSv2's scoring on the open_clip reference: ResizeMaxSize(224)-style pad on PIL,
    normalized features, image @ text diagonal."""
    config = CLIPConfig.from_pretrained(str(tiny.hps_clip), local_files_only=True)
    ref = OpenClipRef(config).eval()
    ref.load_state_dict(torch.load(tiny.hps_checkpoint, weights_only=True)["state_dict"])
    side = config.vision_config.image_size
    pix = []
    for m in media[:, 0]:
        h, w = m.shape[:2]
        s = side / max(h, w)
        nh, nw = round(h * s), round(w * s)
        canvas = Image.new("RGB", (side, side))
        canvas.paste(Image.fromarray(m.numpy()).resize((nw, nh), Image.BICUBIC), ((side - nw) // 2, (side - nh) // 2))
        x = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255
        pix.append((x - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1))
    tok = AutoTokenizer.from_pretrained(str(tiny.hps_clip), local_files_only=True)
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        img = ref.encode_image(torch.stack(pix))
        txt = ref.encode_text(ids)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1).tolist()


def test_hpsv2_scorer_matches_reference_and_batches(tiny) -> None:
    opts = {"checkpoint": str(tiny.hps_checkpoint), "clip": str(tiny.hps_clip)}
    scorer = HPSv2(msgspec.convert(opts, HPSv2.Config))
    media, prompts = make_media(4, 1, 48, 64, seed=8), make_prompts(4)
    got = scorer.score(media, prompts).scores
    assert got == pytest.approx(_hps_reference(tiny, media, [p.text for p in prompts]), abs=1e-5)
    assert all(-1 <= s <= 1 for s in got) and max(got) - min(got) > 0.01
    assert scorer.score(media, prompts).scores == got  # same model, same shapes: bit for bit
    # other batch shapes or a second load: ~1e-7 apart on some CPUs (BLAS kernel choice)
    split = scorer.score(media[:2], prompts[:2]).scores + scorer.score(media[2:], prompts[2:]).scores
    assert split == pytest.approx(got, rel=1e-6, abs=1e-6)
    again = HPSv2(msgspec.convert(opts, HPSv2.Config)).score(media, prompts).scores
    assert again == pytest.approx(got, rel=1e-6, abs=1e-6)
    video = make_media(2, 3, 48, 64, seed=9)
    per_frame = [[scorer.score(video[:, f : f + 1], prompts[:2]).scores[b] for f in range(3)] for b in range(2)]
    mins = HPSv2(msgspec.convert({**opts, "aggregate": "min"}, HPSv2.Config)).score(video, prompts[:2]).scores
    assert mins == pytest.approx([min(r) for r in per_frame], abs=1e-6)


def test_hpsv2_checkpoint_errors_are_clear(tiny, tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(32, 16)}}, bad)
    with pytest.raises(UserInputError, match=r"options\.checkpoint: .*bad\.pt: checkpoint does not fit"):
        HPSv2(msgspec.convert({"checkpoint": str(bad), "clip": str(tiny.hps_clip)}, HPSv2.Config))
    with pytest.raises(UserInputError, match=r"options\.checkpoint: cannot load file 'xswu/HPSv2/missing\.pt'"):
        HPSv2(msgspec.convert({"checkpoint": "xswu/HPSv2/missing.pt", "clip": str(tiny.hps_clip)}, HPSv2.Config))
