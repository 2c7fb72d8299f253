"""A dual image-text encoder (CLIP-shaped) for CMA fine-tuning and NegLabel scoring.

:class:`DualEncoder` wraps any image encoder (``[B, 3, H, W] -> [B, Di]``) and text encoder
(token ids ``[B, L]`` -> ``[B, Dt]``) with linear projections to a shared ``embed_dim`` and CLIP's
learnable ``logit_scale`` (log of the multiplier, initialised to ``log(1 / 0.07)`` as in CLIP).
``encode_image`` / ``encode_text`` return L2-normalised embeddings; :meth:`DualEncoder.neglabel`
builds the NegLabel scorer (``scoring.NegLabel``) from ID and negative label texts.

Real CLIP weights load from a local file in open_clip's layout (``visual.*``, ``token_embedding``,
``transformer.*``, ``text_projection``, ``logit_scale``) through the ``open_clip`` package when it
is installed (:func:`load_open_clip`; nothing is downloaded); :func:`open_clip_layout` checks a
state dict's layout without it. Tests use :class:`TinyImageEncoder` and :class:`TinyTextEncoder`
with :class:`HashTokenizer`.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ood_perception.scoring.neglabel import NegLabel

#: Keys every open_clip CLIP state dict holds (the text tower and the shared scale).
OPEN_CLIP_KEYS: tuple[str, ...] = ("token_embedding.weight", "positional_embedding", "text_projection",
                                   "logit_scale", "ln_final.weight")


class HashTokenizer:
    """Lower-cased words hashed (crc32) into ``vocab_size - 1`` ids, 0 = padding; fixed length."""

    def __init__(self, vocab_size: int = 4096, length: int = 8) -> None:
        if vocab_size < 2 or length < 1:
            raise ValueError("vocab_size >= 2 and length >= 1 needed")
        self.vocab_size, self.length = int(vocab_size), int(length)

    def __call__(self, texts: Sequence[str]) -> Tensor:
        out = torch.zeros(len(texts), self.length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())[: self.length]
            for j, w in enumerate(words):
                out[i, j] = 1 + zlib.crc32(w.encode()) % (self.vocab_size - 1)
        return out


class TinyTextEncoder(nn.Module):
    """Mean of token embeddings (padding excluded) and an MLP: ``[B, L]`` ids -> ``[B, dim]``."""

    def __init__(self, vocab_size: int = 4096, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.out_dim = dim

    def forward(self, tokens: Tensor) -> Tensor:
        mask = (tokens != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        mean = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.mlp(mean)


class TinyImageEncoder(nn.Module):
    """Two strided convs and global average pooling: ``[B, 3, H, W] -> [B, dim]``."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.ReLU(), nn.Conv2d(dim, dim, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = dim

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class DualEncoder(nn.Module):
    """Image and text towers with projections into one embedding space (see the module doc).

    Args:
        image_encoder, text_encoder: the towers; their output widths are ``image_dim``/``text_dim``
            (default: the towers' ``out_dim`` attribute).
        tokenizer: texts -> token ids ``[B, L]`` for the text tower.
        embed_dim: shared width; ``None`` with equal tower widths keeps the towers' outputs
            (identity projections, e.g. for a loaded CLIP whose towers already project).
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, tokenizer: Callable[[Sequence[str]], Tensor],
                 embed_dim: int | None = 32, image_dim: int | None = None, text_dim: int | None = None,
                 init_logit_scale: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        self.image_encoder, self.text_encoder, self.tokenizer = image_encoder, text_encoder, tokenizer
        di = int(image_dim if image_dim is not None else image_encoder.out_dim)
        dt = int(text_dim if text_dim is not None else text_encoder.out_dim)
        if embed_dim is None:
            if di != dt:
                raise ValueError(f"embed_dim=None needs equal tower widths, got {di} and {dt}")
            self.image_proj: nn.Module = nn.Identity()
            self.text_proj: nn.Module = nn.Identity()
            embed_dim = di
        else:
            self.image_proj, self.text_proj = nn.Linear(di, embed_dim, bias=False), nn.Linear(dt, embed_dim, bias=False)
        self.embed_dim = int(embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings ``[B, E]``."""
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)

    def encode_text(self, texts: Sequence[str] | Tensor) -> Tensor:
        """L2-normalised text embeddings ``[B, E]`` of strings (tokenised here) or token ids."""
        tokens = texts if isinstance(texts, Tensor) else self.tokenizer(list(texts))
        return F.normalize(self.text_proj(self.text_encoder(tokens)), dim=-1)

    def scale(self) -> Tensor:
        """The logit multiplier ``exp(logit_scale)``, clamped at 100 as CLIP does."""
        return self.logit_scale.exp().clamp(max=100.0)

    def forward(self, images: Tensor, texts: Sequence[str] | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(image_emb, text_emb, scale)``: the inputs of ``losses.cma_loss``."""
        return self.encode_image(images), self.encode_text(texts), self.scale()

    @torch.no_grad()
    def neglabel(self, id_labels: Sequence[str], negative_labels: Sequence[str], template: str = "a photo of a {}.",
                 temperature: float = 0.01) -> NegLabel:
        """A fitted NegLabel scorer from prompts of the ID and negative label names."""
        if not id_labels or not negative_labels:
            raise ValueError("NegLabel needs at least one ID and one negative label")
        id_emb = self.encode_text([template.format(x) for x in id_labels])
        neg_emb = self.encode_text([template.format(x) for x in negative_labels])
        return NegLabel(temperature=temperature, id_text_embeddings=id_emb, neg_text_embeddings=neg_emb)


def open_clip_layout(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Check an open_clip CLIP state dict and summarise it (no open_clip needed).

    Returns:
        ``{"embed_dim", "vocab_size", "context_length", "text_width", "visual_keys", "logit_scale"}``.

    Raises:
        ValueError: keys of open_clip's layout are missing.
    """
    sd = state_dict.get("state_dict", state_dict)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    missing = [k for k in OPEN_CLIP_KEYS if k not in sd]
    if missing or not any(k.startswith("visual.") for k in sd):
        raise ValueError(f"not an open_clip CLIP state dict: missing {missing or ['visual.*']}")
    tok, proj = sd["token_embedding.weight"], sd["text_projection"]
    return {"embed_dim": int(proj.shape[1]), "vocab_size": int(tok.shape[0]),
            "context_length": int(sd["positional_embedding"].shape[0]), "text_width": int(tok.shape[1]),
            "visual_keys": sum(k.startswith("visual.") for k in sd), "logit_scale": float(sd["logit_scale"])}


#: CLIP's image normalisation (RGB in [0, 1]).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class _OpenClipImage(nn.Module):
    """open_clip's image tower on RGB in [0, 1] (normalised here)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model.encode_image((images - self.mean) / self.std)


class _OpenClipText(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model.encode_text(tokens)


def load_open_clip(path: str | os.PathLike[str], model_name: str = "ViT-B-32") -> DualEncoder:
    """A :class:`DualEncoder` from local open_clip weights (``open_clip`` must be installed).

    The file is checked with :func:`open_clip_layout` first, so a wrong file fails with one line
    even before open_clip is imported. Images go in as RGB in [0, 1] at the model's input size
    (224 for the usual ViT-B-32); CLIP's normalisation is applied inside.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    info = open_clip_layout(torch.load(path, map_location="cpu", weights_only=True))
    try:
        import open_clip  # optional dependency, only for real CLIP weights
    except ImportError:
        raise ImportError("loading CLIP weights needs `pip install open_clip_torch`") from None
    model = open_clip.create_model(model_name, pretrained=path)
    tokenizer = open_clip.get_tokenizer(model_name)
    enc = DualEncoder(_OpenClipImage(model), _OpenClipText(model), tokenizer, embed_dim=None,
                      image_dim=info["embed_dim"], text_dim=info["embed_dim"])
    with torch.no_grad():
        enc.logit_scale.copy_(model.logit_scale.detach())
    return enc
