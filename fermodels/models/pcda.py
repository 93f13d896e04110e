"""Product-cross dual attention + NeAA loss (Nie et al., CVM 2024). No public code exists.

Built from the paper (Nie et al., docs/models.md; §3) and the components it names:

* image features X: IR-50 stages 1-3 at 112 -> 256 x 14 x 14 (MS-Celeb-1M init via ``pretrained``);
* landmark features L: 128 x 14 x 14, either from a frozen MobileFaceNet's ``conv_4`` (the paper;
  needs ``landmark_checkpoint``) or, by default, from 68 Gaussian heatmaps rendered at 14 x 14
  from ``batch["lmk"]`` and a small conv (the pipeline already ran a landmark detector);
* dot-product attention: H = channel-max of L, F = X * act(H); the paper multiplies by H itself
  (Eq. 1, act = identity: ``h_norm="raw"``); the default ``sigmoid`` bounds the scale (our choice),
  and also flattens the contrast between landmark and background cells (largest / smallest weight
  per face about 1.6 at initialisation against about 10 with ``raw``, the Gaussian substitute on 16
  faces): for the paper's attention set ``h_norm: raw``;
* cross-feature attention: landmark tokens (queries) and fusion tokens (keys/values), each with
  a learned class token and a shared learned position embedding, ``depth`` blocks
  t' = t_F + Proj(CrossAttn(LN(Q_lm), LN(K_F), LN(V_F))), t_F = t' + MLP(LN(t')): Eq. 5 with, our
  choice, a LayerNorm before the attention too (pre-LN) and an output projection; LN; class token -> FC;
* loss CE + 0.01 * NeAA on the class tokens of the batch (§3.2, :func:`neutral_aware_anchor`).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from fermodels.checkpoints import load_pretrained
from fermodels.losses import GLOBAL_BATCH, label_loss, neutral_aware_anchor
from fermodels.models.backbones import IR50, MobileFaceNetTrunk, freeze
from fermodels.models.common import Batch, arange_like, check_heatmap_centres, require
from fermodels.registry import ModelCard, register_model

H_NORMS = ("sigmoid", "raw", "minmax", "softmax")
NUM_LANDMARKS = 68


class GaussianLandmarkEncoder(nn.Module):
    """68 landmarks (pixel coords at ``input_size``) -> Gaussian maps on a grid -> 128 channels."""

    def __init__(self, input_size: int, grid: int, channels: int = 128, sigma: float = 1.0,
                 centres: str = "features") -> None:
        super().__init__()
        check_heatmap_centres(centres)
        if not sigma > 0:           # 0: 0/0 = nan where a landmark sits on a cell centre; < 0: the square hides it
            raise ValueError(f"heatmap_sigma must be > 0 (feature cells), got {sigma!r}")
        self.cell = input_size / grid
        self.grid, self.sigma, self.centres = grid, sigma * self.cell, centres
        self.conv = nn.Conv2d(NUM_LANDMARKS, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def render(self, lmk: Tensor) -> Tensor:
        """(B, 68, 2) -> (B, 68, grid, grid) unnormalised Gaussians, one per feature cell.

        Landmarks use the pipeline's pixel-centre convention (pixel i is centred at i). The maps
        multiply IR-50's 14 x 14 features (as the paper's MobileFaceNet maps do), whose cell j sits
        over pixel ``j * cell``: both trunks reach the grid through stride-2 3 x 3 convolutions
        padded by 1, each centring output j on input 2j. ``centres="cells"`` puts them at
        ``(j + 0.5) * cell - 0.5`` instead, the middle of pixels [j*cell, (j+1)*cell), 3.5 px off
        the features at 112 (how checkpoints saved before this keyword were trained).
        """
        steps = arange_like(lmk, self.grid)
        centres = steps * self.cell if self.centres == "features" else (steps + 0.5) * self.cell - 0.5
        dx = centres[None, None, None, :] - lmk[:, :, 0, None, None]
        dy = centres[None, None, :, None] - lmk[:, :, 1, None, None]
        return torch.exp(-(dx ** 2 + dy ** 2) / (2 * self.sigma ** 2))

    def forward(self, lmk: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(self.render(lmk))))


class CrossAttentionBlock(nn.Module):
    """Landmark-query / fusion-key-value attention block; only the fusion stream is updated."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float = 0.0) -> None:
        super().__init__()
        if not (dim >= 1 and heads >= 1):                     # heads 0: ZeroDivisionError; dim 0: no features
            raise ValueError(f"dim and heads must be >= 1, got {dim!r}, {heads!r}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm_lm, self.norm_fusion = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(drop)            # the attention output and both MLP layers' (ViT drop_ratio)

    def forward(self, lm: Tensor, fusion: Tensor) -> Tensor:
        b, n, d = fusion.shape
        h = self.heads
        q = self.q(self.norm_lm(lm)).reshape(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm_fusion(fusion)).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1)
        fusion = fusion + self.drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, d)))
        fc1, act, fc2 = self.mlp
        return fusion + self.drop(fc2(self.drop(act(fc1(self.norm_mlp(fusion))))))


def normalise_heatmap(h: Tensor, mode: str) -> Tensor:
    """Map the channel-max heatmap (B, 1, h, w) to attention weights."""
    if mode == "sigmoid":
        return torch.sigmoid(h)
    if mode == "raw":
        return h
    flat = h.flatten(1)
    if mode == "minmax":
        lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        return ((flat - lo) / (hi - lo + 1e-6)).view_as(h)
    if mode == "softmax":  # scaled so the mean weight is 1, keeping the feature scale
        return (torch.softmax(flat, dim=1) * flat.shape[1]).view_as(h)
    raise ValueError(f"h_norm must be one of {H_NORMS}, got {mode!r}")


class PCDA(nn.Module):
    """Product-cross dual attention network; see the module docstring."""

    def __init__(self, num_classes: int, card: ModelCard, dim: int, depth: int,
                 heads: int, mlp_ratio: float, drop: float, h_norm: str, neaa_weight: float,
                 heatmap_sigma: float, head_drop: float, landmark_checkpoint: str | None,
                 pretrained: str | None, heatmap_centres: str = "features") -> None:
        super().__init__()
        if h_norm not in H_NORMS:
            raise ValueError(f"h_norm must be one of {H_NORMS}, got {h_norm!r}")
        if not neaa_weight >= 0:                              # a negative weight: training maximises NeAA
            raise ValueError(f"neaa_weight must be >= 0, got {neaa_weight!r}")
        if not (dim >= 1 and heads >= 1):                     # checked here too: depth 0 builds no block
            raise ValueError(f"dim and heads must be >= 1, got {dim!r}, {heads!r}")
        # depth 0: no block reads the image, the class token alone is the prediction (the same for every
        # face), and the landmark tokens get no gradient (DDP without find_unused_parameters fails)
        if not (depth >= 1 and mlp_ratio > 0):
            raise ValueError(f"depth must be >= 1 and mlp_ratio > 0, got {depth!r}, {mlp_ratio!r}")
        self.card, self.h_norm, self.neaa_weight = card, h_norm, neaa_weight
        grid = card.input_size // 8
        self.image_backbone = IR50(num_stages=3)
        self.landmark_backbone: MobileFaceNetTrunk | None = None
        self.landmark_encoder: GaussianLandmarkEncoder | None = None
        if landmark_checkpoint:
            self.landmark_backbone = MobileFaceNetTrunk()
            load_pretrained(self.landmark_backbone, landmark_checkpoint, "mobilefacenet")
            freeze(self.landmark_backbone)
        else:
            self.landmark_encoder = GaussianLandmarkEncoder(card.input_size, grid, sigma=heatmap_sigma,
                                                            centres=heatmap_centres)
        if pretrained:
            load_pretrained(self.image_backbone, pretrained, "ir50")
        self.embed_lm = nn.Linear(MobileFaceNetTrunk.out_channels, dim)
        self.embed_fusion = nn.Linear(self.image_backbone.out_channels, dim)
        self.cls_lm = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_fusion = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        for p in (self.cls_lm, self.cls_fusion, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.token_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, mlp_ratio, drop) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(head_drop), nn.Linear(dim, num_classes))

    def train(self, mode: bool = True) -> "PCDA":
        """Keep the frozen landmark backbone in eval mode (fixed BN statistics)."""
        super().train(mode)
        if self.landmark_backbone is not None:
            self.landmark_backbone.eval()
        return self

    def landmark_features(self, batch: Batch) -> Tensor:
        if self.landmark_backbone is not None:
            return self.landmark_backbone(require(batch, "image", self.card))
        return self.landmark_encoder(require(batch, "lmk", self.card))

    def _tokens(self, fmap: Tensor, embed: nn.Linear, cls: Tensor) -> Tensor:
        tokens = embed(fmap.flatten(2).transpose(1, 2))
        return self.token_drop(torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        x = self.image_backbone(require(batch, "image", self.card))
        lm = self.landmark_features(batch)
        heat = normalise_heatmap(lm.amax(dim=1, keepdim=True), self.h_norm)
        fusion = self._tokens(x * heat, self.embed_fusion, self.cls_fusion)
        lm_tokens = self._tokens(lm, self.embed_lm, self.cls_lm)
        for block in self.blocks:
            fusion = block(lm_tokens, fusion)
        feats = self.norm(fusion)[:, 0]
        return {"logits": self.head(feats), "features": feats, "heatmap": heat}

    def losses(self, out: Mapping[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        rows, whole = (out["features"], out["logits"], batch["label"]), batch.get(GLOBAL_BATCH)
        neaa = neutral_aware_anchor(*rows) if whole is None else whole.loss(neutral_aware_anchor, *rows)
        return {"ce": label_loss(out["logits"], batch), "neaa": self.neaa_weight * neaa}


@register_model("pcda")
def pcda(num_classes: int = 7, dim: int = 768, depth: int = 2, heads: int = 8, mlp_ratio: float = 4.0,
         drop: float = 0.5, h_norm: str = "sigmoid", neaa_weight: float = 0.01, heatmap_sigma: float = 1.0,
         head_drop: float = 0.0, landmark_checkpoint: str | None = None,
         pretrained: str | None = None, heatmap_centres: str = "features") -> PCDA:
    source = ("frozen MobileFaceNet conv_4 (paper)" if landmark_checkpoint else
              f"Gaussian heatmaps of batch lmk at 14x14 (sigma {heatmap_sigma} cells, centred on the "
              f"image features' cells: heatmap_centres {heatmap_centres!r}) + conv3x3 "
              "68->128 + BN + PReLU (our substitute for the MobileFaceNet, trainable)")
    card = ModelCard(
        name="pcda", input_size=112, fields=("image",) if landmark_checkpoint else ("image", "lmk"),
        losses=("ce", "neaa"),
        paper="Nie et al.: Face Expression Recognition via Product-Cross Dual Attention and "
              "Neutral-Aware Anchor Loss, CVM 2024 (OpenReview QXQq9U0BVU)",
        notes=("Paper-only (no public code). Landmark features: " + source + ". From the paper: "
               "IR-50 stages 1-3 at 112, H = channel-max of landmark features, F = X*act(H), "
               "landmark-query / fusion-key-value cross attention with class tokens, 2 blocks, "
               "NeAA exactly as Eqs. 6-10 with lambda 0.01. Interpretation: "
               f"act = h_norm ({h_norm!r}; the paper's Eq. 1 is 'raw'); pre-LN blocks; {heads} attention "
               "heads (Eq. 4 is single-headed: heads=1, same parameters); one shared learned pos-embed; "
               "q/k/v without bias; a LayerNorm on the class token before the FC (not in Fig. 1); "
               "landmark tokens are not updated between blocks; "
               "W_q_fusion (in the paper's Eq. 3 but unused by Eq. 4) is not built; no SE gate. Defaults "
               "follow the paper (class token c_t=768, MLP ratio 4, drop ratio 0.5): a 14.63M attention "
               "module against the paper's 15.6M (a gap of 0.97M not explained: W_q_fusion's 1.18M is not "
               "built, an output projection after the attention, as in ViT, 1.18M, and GELU in the MLP, "
               "neither in Eqs. 4-5, are); the drop "
               "ratio is read as the drop_ratio of the ViT code POSTER builds on (dropout of the tokens, "
               "the attention output and in the MLP; drop=0 turns it off); POSTER's dim=512, mlp_ratio=2 "
               "is one keyword each. With a MobileFaceNet the normalised image is fed as POSTER does (the "
               "net was trained on BGR /255)."))
    return PCDA(num_classes, card, dim, depth, heads, mlp_ratio, drop, h_norm, neaa_weight, heatmap_sigma,
                head_drop, landmark_checkpoint, pretrained, heatmap_centres)
