"""Tiny pipelines: the real architectures with random weights, saved like the real ones.

Nothing on these machines can download the weights, so tests load these through the very
same loader (``from_pretrained`` of every component from a diffusers folder) that loads the
real checkpoints. Three Wan layouts mirror the real ones (other families, e.g. ``sd3``, are
built by their own module, listed in ``OTHER_FAMILIES``, and cached the same way):

``two_expert``  T2V-A14B style: ``transformer`` (high noise) + ``transformer_2`` (low noise),
                ``boundary_ratio`` 0.875, 16 latent channels, the standard (z_dim 16) VAE.
``ti2v``        TI2V-5B style: one transformer with 48 latent channels, the residual VAE with
                ``z_dim`` 48, ``patch_size`` 2, ``scale_factor_spatial`` 16 and 12 VAE in/out
                channels (3 RGB x 2x2 patch), and ``expand_timesteps`` (a timestep per token).
``wan21``       Wan2.1 style: one transformer over the standard 16-channel VAE, no boundary.

``resolve_model_path("tiny:two_expert")`` builds into a cache folder on first use, keyed by a
hash of the config, so a changed config never reuses a stale build. The build happens in a
temporary folder that is renamed into place atomically; two processes racing both build, and
the loser throws its copy away.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TINY_PREFIX = "tiny:"
WAN_LAYOUTS = ("two_expert", "ti2v", "wan21")
# Other families build their tiny models in their own module (same two functions).
OTHER_FAMILIES = {"sd3": "unirl_stream.models.sd3_tiny", "qwen_image": "unirl_stream.models.qwen_image_tiny",
                  "z_image": "unirl_stream.models.z_image_tiny", "flux2_klein": "unirl_stream.models.flux2_klein_tiny",
                  "hunyuan_video15": "unirl_stream.models.hunyuan_video15_tiny"}
LAYOUTS = (*WAN_LAYOUTS, *OTHER_FAMILIES)

# A word-level vocabulary: enough distinct words that test prompts get distinct embeddings;
# anything else maps to [UNK]. Index 0 is padding (UMT5's pad id), 1 end of sequence.
_SPECIAL = ["<pad>", "</s>", "<unk>"]
_WORDS = (
    "a an the of in on at with and or to from by for is are over under near under into "
    "red green blue yellow black white orange purple pink brown gray golden silver dark bright "
    "cat dog bird fish horse cow fox bear lion tiger rabbit panda owl duck frog snake robot car "
    "tree flower forest river lake sea ocean mountain hill sky cloud sun moon star rain snow "
    "city street house room window door table chair book cup bottle lamp light shadow fire "
    "man woman child person girl boy people crowd hand face eye hair dress hat shirt "
    "running walking flying swimming jumping dancing sitting standing sleeping eating playing "
    "big small tall short old young happy sad calm fast slow beautiful cinematic realistic "
    "photo painting video scene view closeup aerial night day morning evening sunset sunrise "
    "sign text word letter says reading writing glowing neon wooden stone glass metal water"
).split()
VOCAB: dict[str, int] = {w: i for i, w in enumerate(_SPECIAL + sorted(set(_WORDS)))}

_TEXT_DIM = 32
_TRANSFORMER = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 12,  # rope splits a head into t/h/w parts: 12 -> 4 + 4 + 4
    "text_dim": _TEXT_DIM,
    "freq_dim": 32,
    "ffn_dim": 48,
    "num_layers": 2,
    "rope_max_seq_len": 64,
}
_TEXT_ENCODER = {
    "vocab_size": len(VOCAB),
    "d_model": _TEXT_DIM,
    "d_kv": 8,
    "d_ff": 48,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "feed_forward_proj": "gated-gelu",
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
_VAE_COMMON = {
    "base_dim": 8,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}


def _vae(z_dim: int, residual: bool) -> dict[str, Any]:
    cfg = dict(_VAE_COMMON, z_dim=z_dim)
    # Stats of a unit Gaussian: the tiny VAE's latents are not calibrated, and a mean/std of
    # 0/1 keeps the decode's denormalisation visible in the code path without distorting it.
    cfg["latents_mean"] = [0.0] * z_dim
    cfg["latents_std"] = [1.0] * z_dim
    if residual:
        cfg.update(
            is_residual=True,
            patch_size=2,
            in_channels=12,
            out_channels=12,
            scale_factor_spatial=16,
            decoder_base_dim=12,
        )
    return cfg


def _family(layout: str) -> Any:
    import importlib

    return importlib.import_module(OTHER_FAMILIES[layout])


def tiny_config(layout: str) -> dict[str, Any]:
    """Every constructor argument of the tiny pipeline of ``layout`` (what the hash covers)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown tiny layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout in OTHER_FAMILIES:
        return _family(layout).tiny_config(layout)
    two = layout == "two_expert"
    # wan21: Wan2.1's layout, one transformer over the standard 16-channel VAE.
    channels = 48 if layout == "ti2v" else 16
    transformer = dict(_TRANSFORMER, in_channels=channels, out_channels=channels)
    return {
        "layout": layout,
        "seed": 0,
        "vocab": VOCAB,
        "text_encoder": _TEXT_ENCODER,
        "transformer": transformer,
        "transformer_2": transformer if two else None,
        "vae": _vae(48, residual=True) if layout == "ti2v" else _vae(16, residual=False),
        # Random conv biases make a tiny VAE paint one fixed texture whatever the latent
        # (pixel std ~25 of 255 from an all-zero latent), which leaves a reward almost
        # nothing to learn; with zero biases the decoded video follows the latent.
        "vae_biases": "zero",
        "boundary_ratio": 0.875 if two else None,
        "expand_timesteps": layout == "ti2v",
        "scheduler": {"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                      "flow_shift": 3.0 if layout == "ti2v" else 5.0, "num_train_timesteps": 1000},
    }


def config_hash(cfg: dict[str, Any]) -> str:
    import diffusers
    import transformers

    payload = json.dumps(
        [cfg, diffusers.__version__, transformers.__version__], sort_keys=True
    ).encode()
    return hashlib.blake2b(payload, digest_size=6).hexdigest()


# ----------------------------------------------------------------------------- building
def build_tokenizer(vocab: dict[str, int] | None = None, *, bos: str | None = None, eos: str = "</s>",
                    pad: str = "<pad>", max_length: int | None = None) -> Any:
    """An offline word-level tokenizer (no download), wrapped like the real ones: T5/UMT5 style
    by default (``$A </s>``); CLIP style with ``bos`` (``<bos> $A <eos>``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # T5 appends </s> to every sequence (CLIP also prepends its start token); keep that so
    # the attention mask counts it and CLIP pools at the end token.
    single = f"{bos} $A {eos}" if bos else f"$A {eos}"
    specials = [(t, vocab[t]) for t in (bos, eos) if t]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    extra = {"bos_token": bos} if bos else {}
    if max_length is not None:
        extra["model_max_length"] = max_length
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token="<unk>", **extra)


def zero_biases(vae: Any, mode: str) -> None:
    """Random conv biases make a tiny VAE paint one fixed texture whatever the latent; with
    zero biases its output follows the latent (FACTS.md)."""
    import torch

    if mode == "zero":
        with torch.no_grad():
            for name, param in vae.named_parameters():
                if name.endswith("bias"):
                    param.zero_()


def build_pipeline(layout: str) -> Any:
    """The tiny ``WanPipeline`` of ``layout`` in memory, weights seeded (bit-reproducible)."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    if layout in OTHER_FAMILIES:
        return _family(layout).build_pipeline(layout)
    cfg = tiny_config(layout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        text_encoder = UMT5EncoderModel(UMT5Config(**cfg["text_encoder"])).eval()
        vae = AutoencoderKLWan(**cfg["vae"]).eval()
        zero_biases(vae, cfg["vae_biases"])
        transformer = WanTransformer3DModel(**cfg["transformer"]).eval()
        transformer_2 = (
            WanTransformer3DModel(**cfg["transformer_2"]).eval() if cfg["transformer_2"] else None
        )
    return WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(**cfg["scheduler"]),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=cfg["boundary_ratio"],
        expand_timesteps=cfg["expand_timesteps"],
    )


def save_tiny(layout: str, path: str | Path) -> Path:
    """Build and save the tiny pipeline in the diffusers folder layout at ``path``."""
    path = Path(path)
    build_pipeline(layout).save_pretrained(str(path), safe_serialization=True)
    (path / "tiny_config.json").write_text(json.dumps(tiny_config(layout), sort_keys=True))
    return path


def cache_root() -> Path:
    env = os.environ.get("UNIRL_STREAM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unirl_stream"


def tiny_layout(spec: str) -> str:
    """``tiny:two_expert`` -> ``two_expert``; ValueError for an unknown layout."""
    layout = spec[len(TINY_PREFIX):]
    if layout not in LAYOUTS:
        raise ValueError(
            f"unknown tiny model {spec!r}; use one of "
            + ", ".join(TINY_PREFIX + x for x in LAYOUTS)
        )
    return layout


def resolve_model_path(spec: str) -> Path:
    """A local diffusers folder for ``spec``: ``tiny:<layout>`` is built (once) into the cache;
    anything else is returned as a path unchanged (see ``loading.resolve_weights``)."""
    if not spec.startswith(TINY_PREFIX):
        return Path(spec).expanduser()
    layout = tiny_layout(spec)
    final = cache_root() / "tiny" / f"{layout}-{config_hash(tiny_config(layout))}"
    if (final / "model_index.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{layout}-", dir=final.parent))
    try:
        save_tiny(layout, tmp)
        try:
            os.rename(tmp, final)  # atomic on one filesystem; fails if another won the race
        except OSError:
            if not (final / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
