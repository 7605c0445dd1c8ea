"""Masked-autoencoder pretraining (He et al. 2022) around a timm ViT encoder, as FR-pretraining's stage 0
uses it (docs/concepts/methods.md#stage-0-mae-pre-training: mask ratio 0.75, pixel MSE on the masked patches
only, its own light decoder with fixed 2-D sin-cos position embeddings, norm_pix_loss off).

The encoder is the very `VisionTransformer` the classifier of the next stage uses, so its trained weights
are handed on by reference, with no key renaming.
"""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from bench.errors import FERBenchError


def patchify(images: Tensor, patch: int) -> Tensor:
    """(N, C, H, W) -> (N, L, patch*patch*C), patches in row-major order, pixels (p, q, c) inside each."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def random_masking(n: int, length: int, ratio: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per sample, keep a uniformly random (1 - ratio) share of the patches (MAE's argsort of noise).

    Returns (keep_idx (N, K), mask (N, L) with 1 = masked), drawn from torch's global generator (the
    engine seeds it per step, so masks are reproducible and survive resume)."""
    keep = int(round(length * (1 - ratio)))
    if not 0 < keep < length:
        raise FERBenchError(f"mask_ratio={ratio}: keeps {keep} of {length} patches; expected some kept and some masked")
    noise = torch.rand(n, length, device=device)
    order = noise.argsort(dim=1)
    keep_idx = order[:, :keep]
    mask = torch.ones(n, length, device=device)
    mask.scatter_(1, keep_idx, 0.0)
    return keep_idx, mask


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked patches of the per-patch mean squared error (visible patches do not count)."""
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    """A timm ViT encoder that sees only the visible patches, plus a light transformer decoder that
    predicts the pixels of every patch from the encoded visible ones and mask tokens."""

    def __init__(self, encoder: nn.Module, decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 mask_ratio: float = 0.75) -> None:
        super().__init__()
        needed = ("patch_embed", "pos_embed", "cls_token", "blocks", "norm")
        if any(getattr(encoder, a, None) is None for a in needed) or getattr(encoder, "no_embed_class", False):
            raise FERBenchError(f"backbone {type(encoder).__name__}: MAE pretraining needs a timm VisionTransformer "
                                "with a class token and learned position embeddings (e.g. vit_base_patch16_224)")
        if getattr(encoder, "num_prefix_tokens", 1) != 1 or getattr(encoder, "dynamic_img_size", False):
            raise FERBenchError("MAE pretraining: the ViT must have exactly one prefix token and a fixed image size")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.patch = int(encoder.patch_embed.patch_size[0])
        grid = tuple(int(g) for g in encoder.patch_embed.grid_size)
        dim = int(encoder.embed_dim)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = build_sincos2d_pos_embed(list(grid), decoder_dim)
        # fixed, not learned (MAE); the class token's position is zeros
        self.register_buffer("decoder_pos_embed", torch.cat([torch.zeros(1, decoder_dim), pos]).unsqueeze(0),
                             persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                              for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoded (class token + visible patches), the kept patch indices and the mask."""
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        n, length, dim = x.shape
        keep_idx, mask = random_masking(n, length, self.mask_ratio, x.device)
        x = torch.gather(x, 1, keep_idx.unsqueeze(-1).expand(-1, -1, dim))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(n, -1, -1)
        x = enc.norm(enc.blocks(torch.cat([cls, x], dim=1)))
        return x, keep_idx, mask

    def decode(self, latent: Tensor, keep_idx: Tensor, length: int) -> Tensor:
        x = self.decoder_embed(latent)
        n, d = x.shape[0], x.shape[2]
        full = self.mask_token.expand(n, length, d).clone()
        full.scatter_(1, keep_idx.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])  # visible patches back in place
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:]  # (N, L, patch*patch*3); the class token predicts nothing

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, predicted patches (N, L, p*p*3), mask (N, L))."""
        latent, keep_idx, mask = self.encode(images)
        pred = self.decode(latent, keep_idx, mask.shape[1])
        loss = masked_mse(pred, patchify(images, self.patch), mask)
        return loss, pred, mask
