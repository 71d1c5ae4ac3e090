"""VLM-as-judge: a Qwen2.5-VL model (e.g. Qwen2.5-VL-7B-Instruct, or a judge fine-tuned
from it such as UnifiedReward-qwen) answers a templated question about each frame, and
the score is read from the next-token distribution, never from sampled text.

``scale = "yes_no"``: ``P(yes) / (P(yes) + P(no))``, each side summing the probabilities of
its answer tokens (``yes`` / ``no`` options, one token each), in [0, 1].

``scale = "rating"``: the expected rating ``sum r P(r) / sum P(r)`` over r = 1..10. Qwen's
tokenizer writes numbers digit by digit, so "10" is "1" then "0": a second, batched
generation step with "1" forced reads ``P("0" | "1")`` and splits the first step's "1"
into ``P(10) = P(1) P(0|1)`` and ``P(1) = P(1) (1 - P(0|1))``. With a tokenizer where "10"
is one token, one step suffices.

Frames are judged one by one (as images) and aggregated like every per-frame scorer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.base import FrameOptions, FrameScorer, resolve_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

TEMPLATES = {
    "yes_no": 'Does this image show "{prompt}"? Answer Yes or No.',
    "rating": 'How well does this image show "{prompt}", and how good is it? Rate it from 1 (worst) '
              "to 10 (best). Answer with the number only.",
}


class VlmJudgeConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Qwen2.5-VL model folder (tokenizer, preprocessor config, weights) or hub id in the local cache."""
    scale: Literal["yes_no", "rating"] = "yes_no"
    template: str = ""
    """The question; ``{prompt}`` is replaced by the prompt text. Empty: a default for the scale."""
    yes: list[str] = msgspec.field(default_factory=lambda: ["Yes", "yes"])
    """Answer tokens counted as yes (scale = "yes_no")."""
    no: list[str] = msgspec.field(default_factory=lambda: ["No", "no"])
    max_pixels: Annotated[int, Meta(ge=0)] = 448 * 448
    """Image resolution bound of the processor (0: the model's own, 12.8 MP for Qwen2.5-VL)."""
    min_pixels: Annotated[int, Meta(ge=0)] = 0
    batch_size: Annotated[int, Meta(ge=1)] = 8
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"

    def __post_init__(self) -> None:
        if self.template and "{prompt}" not in self.template:
            raise ValueError("template must contain {prompt}")
        if self.scale == "yes_no" and not (self.yes and self.no):
            raise ValueError("yes and no need at least one answer each")

    def question(self, prompt: str) -> str:
        return (self.template or TEMPLATES[self.scale]).replace("{prompt}", prompt)


class VlmJudge(FrameScorer):
    name: ClassVar[str] = "vlm_judge"
    Config: ClassVar[type[VlmJudgeConfig]] = VlmJudgeConfig

    def __init__(self, config: VlmJudgeConfig | None = None) -> None:
        super().__init__(config)
        from unirl_stream.rewards.qwen_vl import load_qwen_vl

        cfg: VlmJudgeConfig = self.config  # type: ignore[assignment]
        self.device = resolve_device(cfg.device)
        self.vl = load_qwen_vl(cfg.model, self.name, "model", self.device, cfg.dtype,
                               "Qwen2_5_VLForConditionalGeneration", cfg.min_pixels, cfg.max_pixels)
        self.yes = [self.vl.single_token(t, "yes", self.name) for t in cfg.yes]
        self.no = [self.vl.single_token(t, "no", self.name) for t in cfg.no]
        self.ratings = self._rating_tokens() if cfg.scale == "rating" else []

    def _rating_tokens(self) -> list[list[int]]:
        seqs = [self.vl.tokenizer.encode(str(r), add_special_tokens=False) for r in range(1, 11)]
        if any(len(s) != 1 for s in seqs[:9]) or len(seqs[9]) > 2 or (len(seqs[9]) == 2 and seqs[9][0] != seqs[0][0]):
            raise UserInputError(f"reward {self.name}: the tokenizer writes the ratings 1..10 as {seqs}; "
                                 f"expected one token each, or '10' as '1' + '0'")
        return seqs

    def score_frames(self, frames: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
        b, f = frames.shape[:2]
        cfg: VlmJudgeConfig = self.config  # type: ignore[assignment]
        images = [frames[i, j].numpy() for i in range(b) for j in range(f)]
        questions = [cfg.question(p.text) for p in prompts for _ in range(f)]
        first, second = self.answer_logprobs(self.vl.inputs(images, questions))
        score = self._yes_no(first) if cfg.scale == "yes_no" else self._rating(first, second)
        return score.view(b, f)

    def answer_logprobs(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-softmax of the first answer token [N, V] and, when "10" is two tokens, of the
        token after a forced "1" [N, V] (one batched generate call, greedy, raw logits)."""
        two_steps = bool(self.ratings) and len(self.ratings[9]) == 2
        one = self.ratings[0][0] if two_steps else -1
        out = self.vl.model.generate(
            **inputs, max_new_tokens=2 if two_steps else 1, min_new_tokens=2 if two_steps else 1,
            do_sample=False, output_logits=True, return_dict_in_generate=True,
            pad_token_id=self.vl.tokenizer.pad_token_id,
            prefix_allowed_tokens_fn=(lambda _b, ids: [one]) if two_steps else None,
        )
        # output_logits holds the raw logits: the forced "1" constrains only the choice
        first = out.logits[0].float().log_softmax(-1)
        second = out.logits[1].float().log_softmax(-1) if two_steps else None
        return first, second

    def _yes_no(self, first: torch.Tensor) -> torch.Tensor:
        y = first[:, self.yes].logsumexp(-1)
        n = first[:, self.no].logsumexp(-1)
        return (y - n).sigmoid()  # P(yes) / (P(yes) + P(no))

    def _rating(self, first: torch.Tensor, second: torch.Tensor | None) -> torch.Tensor:
        import torch

        p1 = first.exp()
        p = torch.stack([p1[:, s[0]] for s in self.ratings[:9]], dim=1)  # [N, 9]: ratings 1..9
        if second is None:
            p = torch.cat([p, p1[:, self.ratings[9][0], None]], dim=1)
        else:
            zero = second[:, self.ratings[9][1], None].exp()  # [N, 1]
            p = torch.cat([(p[:, :1] * (1 - zero)), p[:, 1:], p[:, :1] * zero], dim=1)
        r = torch.arange(1, 11, dtype=p.dtype, device=p.device)
        return (p * r).sum(1) / p.sum(1)
