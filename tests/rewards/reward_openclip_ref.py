"""A reference open_clip ViT CLIP in plain torch, for testing the key mapping.

Written from open_clip's architecture (``open_clip.model.CLIP`` with a standard
``VisionTransformer`` and text ``Transformer``): parameter names are open_clip's, and the
attention is ``nn.MultiheadAttention`` (open_clip's own choice), so the fused ``in_proj``
layout is torch's and not something our mapping could agree with by construction.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width))
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class Visual(nn.Module):
    def __init__(self, image_size: int, patch: int, width: int, layers: int, heads: int, dim: int) -> None:
        super().__init__()
        grid = image_size // patch
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # [N, grid*grid, W]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)[:, 0] @ self.proj


class OpenClipRef(nn.Module):
    def __init__(self, config) -> None:  # a transformers CLIPConfig (sizes only)
        super().__init__()
        tc, vc = config.text_config, config.vision_config
        d = config.projection_dim
        self.visual = Visual(vc.image_size, vc.patch_size, vc.hidden_size, vc.num_hidden_layers,
                             vc.num_attention_heads, d)
        self.token_embedding = nn.Embedding(tc.vocab_size, tc.hidden_size)
        self.positional_embedding = nn.Parameter(torch.zeros(tc.max_position_embeddings, tc.hidden_size))
        self.transformer = Transformer(tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads)
        self.ln_final = nn.LayerNorm(tc.hidden_size)
        self.text_projection = nn.Parameter(torch.zeros(tc.hidden_size, d))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        mask = torch.full((n, n), float("-inf")).triu(1)  # causal only, like open_clip
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        x = self.ln_final(self.transformer(x, mask))
        return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection
