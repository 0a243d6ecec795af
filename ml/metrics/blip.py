"""BLIP's vision transformer and BERT-with-cross-attention text encoder, as used by ImageReward.

Module and parameter names follow BLIP's `vit.py` / `med.py` (as vendored by THUDM ImageReward), so
the official `ImageReward.pt` / `FS_model.pt` state dicts load with `strict=True`. Only the
encoder path ImageReward uses is implemented (no decoder, no pooler, no caches). Sizes come from
configs: the text side from the official `med_config.json`, the vision side from a
`vision_config.json` next to the checkpoint when there is one (tiny test models), else ViT-L/16.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionConfig:
    """BLIP's `create_vit('large', 224)`: ViT-L/16, qkv bias, LayerNorm eps 1e-6."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    # BLIP builds ViT-L with stochastic depth 0.1; it only acts in train mode.
    drop_path_rate: float = 0.1

    @classmethod
    def from_json_file(cls, path: Path) -> VisionConfig:
        raw = json.loads(path.read_text())
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(
                f"{path}: unknown vision config keys {unknown}; known: {sorted(known)}"
            )
        return cls(**raw)


@dataclass(frozen=True)
class TextConfig:
    """The fields of BLIP's `med_config.json` that shape the encoder."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    pad_token_id: int
    # BLIP overwrites med_config's encoder_width with the vision width in code (1024 for ViT-L).
    encoder_width: int

    @classmethod
    def from_med_config(cls, path: Path, *, encoder_width: int) -> TextConfig:
        raw: dict[str, Any] = json.loads(path.read_text())
        required = [
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ]
        absent = [key for key in required if key not in raw]
        if absent:
            raise ValueError(f"{path}: med config lacks {absent}")
        # Refuse variants this encoder does not implement instead of silently computing
        # something else.
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} unsupported (gelu only)")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        if not raw.get("add_cross_attention", False):
            raise ValueError(f"{path}: ImageReward needs add_cross_attention: true")
        if raw["hidden_size"] % raw["num_attention_heads"]:
            raise ValueError(f"{path}: hidden_size is not a multiple of num_attention_heads")
        if raw.get("encoder_width") not in (None, encoder_width):
            logger.debug(
                "med config encoder_width %s overridden by vision width %d (as BLIP does)",
                raw.get("encoder_width"),
                encoder_width,
            )
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_position_embeddings=raw["max_position_embeddings"],
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            hidden_dropout_prob=raw.get("hidden_dropout_prob", 0.1),
            attention_probs_dropout_prob=raw.get("attention_probs_dropout_prob", 0.1),
            pad_token_id=raw.get("pad_token_id", 0),
            encoder_width=encoder_width,
        )


# --- vision ---------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth per sample; identity in eval mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.proj = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} pixels, got {tuple(pixels.shape)}"
            )
        return self.proj(pixels).flatten(2).transpose(1, 2)


class ViTAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, width * 3, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(query, key, value)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class ViTMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, config: VisionConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=1e-6)
        self.attn = ViTAttention(config.width, config.heads)
        self.norm2 = nn.LayerNorm(config.width, eps=1e-6)
        self.mlp = ViTMlp(config.width, int(config.width * config.mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size or config.width % config.heads:
            raise ValueError(f"inconsistent vision config {config}")
        self.config = config
        num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, config.width))
        # Linearly growing stochastic depth (timm's rule); plain floats so meta-device builds work.
        rates = [
            config.drop_path_rate * i / max(config.layers - 1, 1) for i in range(config.layers)
        ]
        self.blocks = nn.ModuleList(ViTBlock(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# --- text -----------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    """Word + absolute position embeddings (BLIP's med.py has no token-type embeddings)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Persistent, as in med.py, so it is part of the official state dict.
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1))
        )

    position_ids: torch.Tensor

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    def __init__(self, config: TextConfig, *, is_cross_attention: bool) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.dropout_p = config.attention_probs_dropout_prob
        kv_width = config.encoder_width if is_cross_attention else config.hidden_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_width, config.hidden_size)
        self.value = nn.Linear(kv_width, config.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor,
        attention_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        query = self._heads(self.query(hidden))
        key = self._heads(self.key(context))
        value = self._heads(self.value(context))
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=None if attention_bias is None else attention_bias.to(query.dtype),
            dropout_p=self.dropout_p if self.training else 0.0,
        )
        batch, _, tokens, _ = out.shape
        return out.transpose(1, 2).reshape(batch, tokens, -1)


class BertSelfOutput(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: TextConfig, *, is_cross_attention: bool = False) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, is_cross_attention=is_cross_attention)
        self.output = BertSelfOutput(config)

    def forward(
        self, hidden: torch.Tensor, context: torch.Tensor, attention_bias: torch.Tensor | None
    ) -> torch.Tensor:
        return self.output(self.self(hidden, context, attention_bias), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))


class BertOutput(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self, hidden: torch.Tensor, self_bias: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.attention(hidden, hidden, self_bias)
        # Every image token is attended to (ImageReward passes an all-ones image mask).
        hidden = self.crossattention(hidden, image_embeds, None)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertModel(nn.Module):
    """med.py's `BertModel(add_pooling_layer=False)` in 'multimodal' mode."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """The last hidden state, (batch, tokens, hidden)."""
        hidden = self.embeddings(input_ids)
        # med.py adds -10000 at padded keys (not -inf); identical after softmax in fp32.
        self_bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.encoder.layer:
            hidden = layer(hidden, self_bias, image_embeds)
        return hidden


class BLIPEncoder(nn.Module):
    """The `blip` part of ImageReward (BLIP_Pretrain): towers plus the unused ITC projections,
    which are in the official checkpoint and kept so strict loading holds."""

    def __init__(self, vision: VisionConfig, text: TextConfig, embed_dim: int = 256) -> None:
        super().__init__()
        self.visual_encoder = VisionTransformer(vision)
        self.text_encoder = BertModel(text)
        self.vision_proj = nn.Linear(vision.width, embed_dim)
        self.text_proj = nn.Linear(text.hidden_size, embed_dim)
        self.apply(_init_like_blip)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The text encoder's first-token feature after cross-attending to the image."""
        image_embeds = self.visual_encoder(pixels)
        return self.text_encoder(input_ids, attention_mask, image_embeds)[:, 0, :]


def _init_like_blip(module: nn.Module) -> None:
    # Only matters for random (test) models and fresh training heads; checkpoints overwrite it.
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
