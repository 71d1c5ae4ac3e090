"""Heavy reward scorers at real size on one GPU: images/s of HPSv3 (Qwen2-VL-7B) and the
VLM judge (Qwen2.5-VL-7B), random weights, through the scorers' real loading code.

Each model is drawn at random in bf16 on the GPU from the published 7B configs (written
out below: the hub is out of reach), saved the way the scorer reads it (the judge: a
``save_pretrained`` folder; HPSv3: a base folder plus one safetensors checkpoint with the
``rm_head``), freed, then loaded by the scorer and timed on 512 x 512 images at several
batch sizes. The tokenizer is a 32k byte-level BPE trained here on English text from
installed packages' sources (digits split one by one, as Qwen's): Qwen's own vocabulary
is not reachable, and a bytes-only tokenizer would make HPSv3's ~2,900-character
instruction 5x too long. Prompt token counts are reported with each row.

Usage: python benchmarks/gpu_rewards.py [--tiny] [--out benchmarks/results/gpu_rewards.jsonl]
``--tiny`` runs the same path with the tests' tiny models on CPU (a smoke test).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

TEXT_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
               rms_norm_eps=1e-6, tie_word_embeddings=False)
VISION_25 = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                 patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                 fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
DEVICE = "cuda"  # where the random weights are drawn (a CPU smoke test of the full path sets "cpu")
VISION_2 = dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2)


def train_tokenizer(folder: Path, corpus_mb: int = 24) -> Any:
    """A 32k byte-level BPE on English from installed sources, Qwen's specials and template."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from unirl_stream.rewards.testing_vlm import CHAT_TEMPLATE, QWEN_SPECIALS

    files, total = [], 0
    for f in sorted(Path(transformers.__file__).parent.rglob("*.py")):
        files.append(str(f))
        total += f.stat().st_size
        if total > corpus_mb << 20:
            break
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=32000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=QWEN_SPECIALS, show_progress=False)
    bpe.train(files, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=QWEN_SPECIALS, padding_side="left")
    tok.add_tokens([w for w in ("Yes", "No", "yes", "no") if len(tok.encode(w, add_special_tokens=False)) != 1])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    return tok


def ids_of(tok: Any) -> dict[str, int]:
    names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    i = {n: tok.convert_tokens_to_ids(n) for n in names}
    return dict(image_token_id=i[names[0]], video_token_id=i[names[1]], vision_start_token_id=i[names[2]],
                vision_end_token_id=i[names[3]])


def copy_tokenizer(root: Path, folder: Path) -> Any:
    """The tokenizer trained once per run (``root/tok``), saved into ``folder``."""
    from transformers import AutoTokenizer

    if not (root / "tok").exists():
        train_tokenizer(root / "tok")
    tok = AutoTokenizer.from_pretrained(str(root / "tok"))
    tok.save_pretrained(str(folder))
    return tok


def build_judge(root: Path, tiny: bool) -> dict[str, Any]:
    """A Qwen2.5-VL folder; returns the vlm_judge options."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    from unirl_stream.rewards.testing_vlm import save_tiny_qwen_vl

    if tiny:
        return {"model": str(save_tiny_qwen_vl(root / "judge")), "dtype": "float32", "max_pixels": 112 * 112}
    tok = copy_tokenizer(root, root / "judge")
    Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056}).save_pretrained(str(root / "judge"))
    config = Qwen2_5_VLConfig(text_config=dict(TEXT_7B, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                              vision_config=VISION_25, **ids_of(tok))
    with torch.device(DEVICE):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(root / "judge"))
    del model
    return {"model": str(root / "judge"), "dtype": "bfloat16", "max_pixels": 448 * 448}


def build_hpsv3(root: Path, tiny: bool) -> dict[str, Any]:
    """A Qwen2-VL base folder + an HPSv3-layout checkpoint; returns the hpsv3 options."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    from unirl_stream.rewards.testing_vlm import save_tiny_hpsv3

    if tiny:
        base, ckpt = save_tiny_hpsv3(root / "hps")
        return {"base": str(base), "checkpoint": str(ckpt), "dtype": "float32", "pixels": 56 * 56}
    base = root / "hps_base"
    tok = copy_tokenizer(root, base)
    Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056}).save_pretrained(str(base))
    config = Qwen2VLConfig(text_config=dict(TEXT_7B, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                           vision_config=VISION_2, **ids_of(tok))
    config.save_pretrained(str(base))
    with torch.device(DEVICE):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        head = torch.nn.Sequential(torch.nn.Linear(TEXT_7B["hidden_size"], 1024), torch.nn.ReLU(), torch.nn.Dropout(0.05),
                                   torch.nn.Linear(1024, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state |= {f"rm_head.{k}": v.float().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(root / "HPSv3.safetensors"))
    del model, state
    return {"base": str(base), "checkpoint": str(root / "HPSv3.safetensors"), "dtype": "bfloat16"}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(rows: Rows, name: str, options: dict[str, Any], batches: list[int], side: int, min_s: float) -> None:
    import torch

    from unirl_stream.api import Prompt
    from unirl_stream.rewards.combine import build_scorer
    from unirl_stream.rewards.config import RewardSpec

    t0 = time.perf_counter()
    scorer = build_scorer(RewardSpec(name=name, options={**options, "batch_size": max(batches)}), name)
    load_s = time.perf_counter() - t0
    print(f"{name}: loaded in {load_s:.1f} s", flush=True)
    for b in batches:
        g = torch.Generator().manual_seed(b)
        media = torch.randint(0, 256, (b, 1, side, side, 3), generator=g, dtype=torch.uint8)
        prompts = [Prompt(id=f"g:{i}", text="a red dog to the left of two blue cats") for i in range(b)]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        scorer.score(media, prompts)  # warm-up
        sync()
        n, start = 0, time.perf_counter()
        while n < 3 * b or time.perf_counter() - start < min_s:
            scorer.score(media, prompts)
            n += b
        sync()
        ips = n / (time.perf_counter() - start)
        vl = scorer.vl  # type: ignore[attr-defined]
        tokens = int(vl.inputs([media[0, 0].numpy()], [prompt_text(name, scorer, prompts[0])])["input_ids"].shape[1])
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        cfg = {"scorer": name, "batch": b, "size": side, "prompt_tokens": tokens, "dtype": options["dtype"],
               "load_s": round(load_s, 1), "peak_gib": round(peak, 1)}
        rows.add(cfg, "throughput", ips, "images/s")
        print(f"{name:10s} batch {b:3d}: {ips:8.2f} images/s, {tokens} tokens/prompt, peak {peak:.1f} GiB", flush=True)
    del scorer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prompt_text(name: str, scorer: Any, prompt: Any) -> str:
    from unirl_stream.rewards.hpsv3 import INSTRUCTION, SUFFIX

    if name == "hpsv3":
        return INSTRUCTION.format(text_prompt=prompt.text) + SUFFIX
    return scorer.config.question(prompt.text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/gpu_rewards.jsonl")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--min-s", type=float, default=8.0)
    args = ap.parse_args()
    rows = Rows("gpu_rewards", args.out)
    batches = [int(b) for b in args.batches.split(",")]
    # 17 GB per model: RAM-backed /dev/shm writes and reads at memory speed, where a disk may not
    shm = Path("/dev/shm")
    roomy = shm.is_dir() and shutil.disk_usage(shm).free > 40 << 30 and not args.tiny
    print(f"model files in {'/dev/shm' if roomy else tempfile.gettempdir()}", flush=True)
    with tempfile.TemporaryDirectory(dir=shm if roomy else None) as tmp:
        root = Path(tmp)
        for name, build in (("hpsv3", build_hpsv3), ("vlm_judge", build_judge)):
            t0 = time.perf_counter()
            options = build(root, args.tiny)
            print(f"{name}: built and saved in {time.perf_counter() - t0:.1f} s", flush=True)
            bench(rows, name, options, batches, 512, args.min_s)
            if name == "vlm_judge":
                bench(rows, name, {**options, "scale": "rating"}, batches[-1:], 512, args.min_s)
            for f in [Path(v) for k, v in options.items() if k in ("model", "base", "checkpoint")]:
                shutil.rmtree(f) if f.is_dir() else f.unlink()  # free /dev/shm for the next model


if __name__ == "__main__":
    main()
