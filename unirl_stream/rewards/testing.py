"""Tiny random-weight models of the real reward architectures, saved to disk.

For tests and benchmarks: nothing here downloads. Each builder writes exactly what the
real loader reads (``CLIPModel``/``CLIPProcessor`` folders, an aesthetic head state dict,
an open_clip-layout HPS checkpoint), so the scorers' real loading code is exercised.

The CLIP tokenizer is the real ``CLIPTokenizer`` built offline from a tiny BPE vocabulary:
the 256 byte-level symbols and their end-of-word forms, a few merges, and the two special
tokens last (as in CLIP's real vocabulary, where end-of-text has the largest id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MERGES = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>"]


def _byte_symbols() -> list[str]:
    """The byte -> printable-unicode table of GPT-2/CLIP byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def write_clip_tokenizer(folder: Path) -> Any:
    """Build a CLIPTokenizer from vocab.json + merges.txt and save it in ``folder``."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    for merge in MERGES:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tok.save_pretrained(str(folder))
    return tok


def tiny_clip_config(vocab_size: int, width: int = 32, layers: int = 2, image_size: int = 32) -> Any:
    from transformers import CLIPConfig

    common = dict(
        hidden_size=width,
        intermediate_size=4 * width,  # open_clip's mlp_ratio 4, as ViT-H-14 (1280 -> 5120)
        num_hidden_layers=layers,
        num_attention_heads=4,
        hidden_act="gelu",  # laion/open_clip ViT-H uses exact GELU (OpenAI models: quick_gelu)
    )
    text = dict(common, vocab_size=vocab_size, max_position_embeddings=77,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(common, image_size=image_size, patch_size=8)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def save_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random CLIPModel + CLIPProcessor (CLIP's resize/crop/mean/std at ``image_size``)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = write_clip_tokenizer(folder / "_tok")
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(len(tok), image_size=image_size))
    with torch.no_grad():  # a visible logit scale, so scale bugs show in the numbers
        model.logit_scale.fill_(2.0)
    model.save_pretrained(str(folder))
    return folder


def save_aesthetic_head(path: Path, embed_dim: int = 16, seed: int = 0) -> Path:
    """The published MLP layout with random weights, as a torch state dict file."""
    import torch

    from unirl_stream.rewards.aesthetic import aesthetic_head

    torch.manual_seed(seed)
    head = aesthetic_head(embed_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), path)
    return path


def openclip_state_dict(config: Any, seed: int = 0) -> dict[str, Any]:
    """Random weights under open_clip's ViT CLIP key names and shapes for ``config``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tc, vc = config.text_config, config.vision_config

    def rnd(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix: str, w: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + rnd(w), f"{prefix}.bias": rnd(w)}

    def blocks(prefix: str, w: int, n: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i in range(n):
            p = f"{prefix}.resblocks.{i}"
            out |= norm(f"{p}.ln_1", w) | norm(f"{p}.ln_2", w)
            out |= {f"{p}.attn.in_proj_weight": rnd(3 * w, w), f"{p}.attn.in_proj_bias": rnd(3 * w),
                    f"{p}.attn.out_proj.weight": rnd(w, w), f"{p}.attn.out_proj.bias": rnd(w),
                    f"{p}.mlp.c_fc.weight": rnd(4 * w, w), f"{p}.mlp.c_fc.bias": rnd(4 * w),
                    f"{p}.mlp.c_proj.weight": rnd(w, 4 * w), f"{p}.mlp.c_proj.bias": rnd(w)}
        return out

    tw, vw, d = tc.hidden_size, vc.hidden_size, config.projection_dim
    grid = vc.image_size // vc.patch_size
    sd = {
        "positional_embedding": rnd(tc.max_position_embeddings, tw),
        "text_projection": rnd(tw, d, scale=0.2),
        "logit_scale": torch.tensor(2.0),
        "token_embedding.weight": rnd(tc.vocab_size, tw, scale=0.5),
        "visual.class_embedding": rnd(vw, scale=0.5),
        "visual.positional_embedding": rnd(grid * grid + 1, vw),
        "visual.proj": rnd(vw, d, scale=0.2),
        "visual.conv1.weight": rnd(vw, 3, vc.patch_size, vc.patch_size, scale=0.1),
    }
    sd |= norm("ln_final", tw) | norm("visual.ln_pre", vw) | norm("visual.ln_post", vw)
    sd |= blocks("transformer", tw, tc.num_hidden_layers)
    sd |= blocks("visual.transformer", vw, vc.num_hidden_layers)
    return sd


def save_tiny_hps(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(HPS-style checkpoint ``{"state_dict": open_clip keys}``, CLIP config+tokenizer folder)."""
    import torch
    from transformers import CLIPConfig

    clip_dir = save_tiny_clip(folder / "clip", seed=seed)
    config = CLIPConfig.from_pretrained(str(clip_dir), local_files_only=True)
    ckpt = folder / "HPS_tiny.pt"
    torch.save({"state_dict": openclip_state_dict(config, seed)}, ckpt)
    return ckpt, clip_dir


GOT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]


def save_tiny_got(folder: Path, seed: int = 0) -> Path:
    """A random GOT-OCR-2.0 (SAM-style ViT + Qwen2 decoder) with its processor.

    The processor asks for 256 image tokens (its default, as the real model's 1024 px
    input gives): a 128 px image in 2 px patches is a 64 x 64 grid, which the model's two
    stride-2 convolutions reduce to 16 x 16 = 256. The tokenizer is byte-level BPE with no
    merges (every byte a token) plus GOT's chat and image special tokens.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GotOcr2Config,
        GotOcr2ForConditionalGeneration,
        GotOcr2Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.got_ocr2 import GotOcr2ImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(_byte_symbols())}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=GOT_SPECIALS
    )
    image_processor = GotOcr2ImageProcessorPil(size={"height": 128, "width": 128})
    GotOcr2Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(str(folder))
    vision = dict(hidden_size=16, output_channels=8, num_hidden_layers=1, num_attention_heads=2, image_size=128,
                  patch_size=2, window_size=8, global_attn_indexes=[], mlp_dim=32)  # windowed only: a global layer over 4096 tokens costs seconds
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    config = GotOcr2Config(vision_config=vision, text_config=text, image_seq_length=256,
                           image_token_index=tok.convert_tokens_to_ids("<imgpad>"))
    torch.manual_seed(seed)
    GotOcr2ForConditionalGeneration(config).save_pretrained(str(folder))
    return folder


BERT_WORDS = ["the", "cat", "a", "red", "dog", "hello", "world", "on", "blue", "two", "left", "of"]


def write_bert_tokenizer(folder: Path) -> Any:
    """A real BertTokenizer over a tiny word-piece vocabulary (special tokens first, as BERT)."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS, *letters, *[f"##{c}" for c in letters]]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    tok.save_pretrained(str(folder))
    return tok


def save_tiny_imagereward(folder: Path, seed: int = 0) -> Path:
    """``ImageReward.pt`` (BLIP key names, random weights), ``med_config.json`` and a BERT
    tokenizer folder ``tokenizer/``: what the imagereward scorer's loader reads.

    The weights are drawn in transformers' BLIP modules and renamed to BLIP's own names
    (the inverse of the scorer's mapping); the test checks the ViT against a reference
    that reads BLIP's names directly.
    """
    import torch
    from transformers import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    from unirl_stream.rewards.imagereward import _VIT_BLOCK, _VIT_TOP, HEAD_LAYERS, load_tokenizer

    write_bert_tokenizer(folder / "tokenizer")
    vocab = len(load_tokenizer(str(folder / "tokenizer")))  # + [DEC], [ENC]
    med = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "max_position_embeddings": 64, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "vocab_size": vocab,
           "encoder_width": 128, "add_cross_attention": True, "pad_token_id": 0}
    (folder / "med_config.json").write_text(json.dumps(med))
    torch.manual_seed(seed)
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=32, patch_size=8, layer_norm_eps=1e-6))
    text = BlipTextModel(BlipTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=128),
                         add_pooling_layer=False)
    inverse = {v: k for k, v in _VIT_TOP.items()} | {v: k for k, v in _VIT_BLOCK.items()}
    state: dict[str, Any] = {}
    for key, value in vision.state_dict().items():
        if key in inverse:
            state[f"blip.visual_encoder.{inverse[key]}"] = value
        else:
            i, rest = key.removeprefix("encoder.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            state[f"blip.visual_encoder.blocks.{i}.{inverse[module]}.{kind}"] = value
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    widths = [32, 48, 24, 16, 8, 1]  # the reference's 768-1024-128-64-16-1, shrunk
    for j, i in enumerate(HEAD_LAYERS):
        state[f"mlp.layers.{i}.weight"] = torch.empty(widths[j + 1], widths[j])
        state[f"mlp.layers.{i}.bias"] = torch.empty(widths[j + 1])
    g = torch.Generator().manual_seed(seed)
    for key, value in state.items():  # visible weights everywhere (HF init zeroes biases)
        if value.is_floating_point():
            norm = "norm" in key.lower() and key.endswith("weight")
            state[key] = (1.0 if norm else 0.0) + torch.randn(value.shape, generator=g) * (0.1 if norm else 0.2)
    state["blip.vision_proj.weight"] = torch.randn(8, 128, generator=g)  # the reference's extra heads: ignored
    torch.save(state, folder / "ImageReward.pt")
    return folder


def save_tiny_owlv2(folder: Path, seed: int = 0, image_size: int = 64) -> Path:
    """A random Owlv2ForObjectDetection with its image processor (pad to square, resize
    to ``image_size``) and the tiny CLIP tokenizer: what the geneval scorer's detector reads."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil

    tok = write_clip_tokenizer(folder)
    Owlv2ImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(str(folder))
    n = len(tok)
    text = dict(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=16)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():  # wide logits, so thresholds split detections instead of dropping all
        for p in model.class_head.parameters():
            p.mul_(20.0)
    model.save_pretrained(str(folder))
    return folder
