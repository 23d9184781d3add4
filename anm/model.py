"""SANM backbones and the reconstruction decoder M_D (Tu et al., "Learning with Noisy Labels via Self-supervised
Adversarial Noisy Masking", CVPR 2023, arXiv 2302.06805).

* :class:`SupCEResNet`: C2D's "SupCE" ResNet, the network of the released SANM code: an ImageNet-style ResNet
  (``BasicBlock``/``Bottleneck`` with batch-normalised 1x1 shortcuts) under ``encoder``, a linear classifier ``fc``
  and the decoder ``recon_module``. ResNet-18 uses the CIFAR stem (3x3 conv, stride 1, no max-pool), ResNet-50 the
  ImageNet stem (7x7 conv stride 2 + max-pool, Clothing1M). Its state-dict keys are the released ones
  (``encoder.layer1.0.shortcut.1.weight``, ``fc.weight``, ``recon_module.layer1.weight`` ...), so C2D's
  self-supervised checkpoints load strictly (:func:`load_c2d_checkpoint`).
* :class:`PreActResNet18SANM`: DivideMix's PreAct ResNet-18 (:mod:`shared.noisy.models`) with the same decoder
  attached as ``recon_module`` (the released ``PreResNet.py`` layout).
* :class:`DigitsCNN`: the small CNN of the CPU evidence (README, "Evidence"): three 3x3 convolutions, the last two
  with stride 2, so a 16 x 16 input gives a 4 x 4 feature map, as ResNet-18 gives on 32 x 32 CIFAR images.
* :class:`ReconstructionDecoder`: three transposed convolutions with no normalisation or non-linearity between them
  (Eq. 10 of the paper; the sizes are in README, "Method").

Every model has ``forward_feature_map(x) -> B x C x h x w`` (the last feature map, the input of the attention map
and of the decoder), ``pool(fmap) -> B x C``, ``forward_head(features) -> logits``, ``reconstruct(fmap) -> image``,
``forward(x, return_features=False)`` and ``num_features``.

``double_softmax`` (ResNet-18 only) reproduces a quirk of the released code: its SupCE ResNet-18 returns the softmax
of the classifier output as "logits", so every loss sees softmax(softmax(z)) (README, "Fidelity notes"). It is off by
default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.checkpoint import load_weights_file
from shared.noisy.models import FeatureClassifier, PreActResNet18

__all__ = [
    "VARIANTS",
    "DigitsCNN",
    "PreActResNet18SANM",
    "ReconstructionDecoder",
    "SupCEResNet",
    "create_model",
    "load_c2d_checkpoint",
]


# ------------------------------------------------------------------------------------------------ the decoder M_D
#: (out_channels, kernel, stride, output_padding) of the three transposed convolutions, per decoder layout.
DECODER_LAYOUTS: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    # 4x4 (ResNet-18 on 32 px) -> 10 -> 15 -> 32
    "resnet18": ((256, 4, 2, 0), (128, 6, 1, 0), (3, 4, 2, 0)),
    # 7x7 (ResNet-50 on 224 px) -> 25 -> 75 -> 224
    "resnet50": ((256, 6, 3, 1), (128, 2, 3, 1), (3, 2, 3, 0)),
    # 4x4 (DigitsCNN on 16 px) -> 8 -> 16 -> 16 (CPU evidence; not in the paper)
    "digits": ((64, 2, 2, 0), (32, 2, 2, 0), (3, 1, 1, 0)),
}


class ReconstructionDecoder(nn.Module):
    """M_D: three transposed convolutions (``layer1..3``), no normalisation or activation between them.

    Args:
        in_channels: channels of the encoder's last feature map (512 for ResNet-18, 2048 for ResNet-50).
        layout: ``"resnet18"`` (4x4 -> 32x32), ``"resnet50"`` (7x7 -> 224x224) or ``"digits"`` (4x4 -> 16x16).
        width_scale: divides the hidden channels (tiny CPU variants; 1 = the released sizes).
        out_channels: image channels.
    """

    def __init__(self, in_channels: int, layout: str = "resnet18", width_scale: int = 1, out_channels: int = 3):
        super().__init__()
        if layout not in DECODER_LAYOUTS:
            raise ValueError(f"decoder layout must be one of {sorted(DECODER_LAYOUTS)}, got {layout!r}")
        specs = DECODER_LAYOUTS[layout]
        channels = [in_channels] + [max(1, c // width_scale) for c, *_ in specs[:-1]] + [out_channels]
        for i, (_, kernel, stride, output_padding) in enumerate(specs):
            conv = nn.ConvTranspose2d(channels[i], channels[i + 1], kernel, stride, 0, output_padding)
            self.add_module(f"layer{i + 1}", conv)
        self.layout = layout

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(fmap)))


# ------------------------------------------------------------------------------------------------ SupCE ResNet
class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN + (1x1 conv-BN) shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Bottleneck block (1x1, 3x3 with the stride, 1x1 x4), batch-normalised 1x1 shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class C2DResNet(nn.Module):
    """The encoder of C2D's SupCE/SupCon ResNet (the ``encoder.*`` part of the released checkpoints).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage.
        imagenet_stem: 7x7 stride-2 conv + 3x3 max-pool (Clothing1M) instead of the 3x3 stride-1 CIFAR stem.
        width: channels of the first stage (64 released).
        in_chans: input channels.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, ...],
        imagenet_stem: bool = False,
        width: int = 64,
        in_chans: int = 3,
    ):
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        for i, blocks in enumerate(num_blocks):
            planes = width * 2**i
            layers = []
            for j in range(blocks):
                layers.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_features = in_planes
        for m in self.modules():  # the released initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (before global pooling)."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _DecoderClassifier(FeatureClassifier):
    """A feature map (``forward_feature_map``) pooled by ``adaptive_avg_pool2d`` into the features, a head
    (``forward_head``) and SANM's reconstruction decoder ``recon_module`` (``reconstruct``)."""

    recon_module: nn.Module

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(fmap, 1).flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_feature_map(x))

    def reconstruct(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.recon_module(fmap)


class SupCEResNet(_DecoderClassifier):
    """C2D's SupCE ResNet with SANM's decoder: ``encoder`` + ``fc`` + ``recon_module``.

    Args:
        arch: ``"resnet18"`` (CIFAR stem, decoder 4x4 -> 32x32) or ``"resnet50"`` (ImageNet stem, 7x7 -> 224x224).
        num_classes: classifier outputs.
        width: first-stage channels (64 released; smaller for tests).
        double_softmax: ResNet-18 only: ``forward`` returns softmax(fc(features)) as the released code does
            (README, "Fidelity notes"); off = proper logits.
    """

    def __init__(self, arch: str = "resnet18", num_classes: int = 10, width: int = 64, double_softmax: bool = False):
        super().__init__()
        if arch == "resnet18":
            self.encoder = C2DResNet(BasicBlock, (2, 2, 2, 2), imagenet_stem=False, width=width)
        elif arch == "resnet50":
            self.encoder = C2DResNet(Bottleneck, (3, 4, 6, 3), imagenet_stem=True, width=width)
        else:
            raise ValueError(f"arch must be 'resnet18' or 'resnet50', got {arch!r}")
        self.arch = arch
        self.num_features = self.encoder.num_features
        self.fc = nn.Linear(self.num_features, num_classes)
        self.recon_module = ReconstructionDecoder(self.num_features, arch, width_scale=max(1, 64 // width))
        # The released ResNet-50 branch returns raw logits; only ResNet-18 has the quirk.
        self.double_softmax = double_softmax and arch == "resnet18"

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        score = self.fc(features)
        return F.softmax(score, dim=-1) if self.double_softmax else score


# ------------------------------------------------------------------------------------------------ other backbones
class PreActResNet18SANM(PreActResNet18):
    """DivideMix's PreAct ResNet-18 (``shared.noisy.models``) with SANM's decoder as ``recon_module``."""

    def __init__(self, num_classes: int = 10, width: int = 64, in_chans: int = 3):
        super().__init__(num_classes=num_classes, width=width, in_chans=in_chans)
        self.recon_module = ReconstructionDecoder(self.num_features, "resnet18", width_scale=max(1, 64 // width))

    def reconstruct(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.recon_module(fmap)


class DigitsCNN(_DecoderClassifier):
    """Three-convolution CNN for 16 x 16 inputs (the CPU evidence): 4 x 4 x ``4 width`` feature map, linear head.

    Args:
        num_classes: classifier outputs.
        width: channels of the first convolution (then x2, x4).
        in_chans: input channels.
        pool: ``"avg"``: global average pooling into the head (``4 width`` features); ``"flatten"``: the whole
            4 x 4 map (``64 width`` features, 16 px inputs only), a head that can memorise noisy labels the way a
            ResNet-18 does on CIFAR (README, "Evidence").
    """

    def __init__(self, num_classes: int = 10, width: int = 32, in_chans: int = 3, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "flatten"):
            raise ValueError(f"pool must be 'avg' or 'flatten', got {pool!r}")
        chans = [in_chans, width, 2 * width, 4 * width]
        layers = []
        for i in range(3):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, 1 if i == 0 else 2, 1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool_mode = pool
        self.num_features = chans[-1] * (16 if pool == "flatten" else 1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.recon_module = ReconstructionDecoder(chans[-1], "digits")

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.pool_mode == "avg":
            return super().pool(fmap)
        if fmap.shape[-2:] != (4, 4):
            raise ValueError(f"DigitsCNN(pool='flatten') needs 16 x 16 inputs (a 4 x 4 map), got {tuple(fmap.shape)}")
        return fmap.flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


# ------------------------------------------------------------------------------------------------ registry
def _supce18(num_classes: int, **kw) -> nn.Module:
    return SupCEResNet("resnet18", num_classes, **kw)


def _supce50(num_classes: int, **kw) -> nn.Module:
    return SupCEResNet("resnet50", num_classes, **kw)


def _preact18(num_classes: int, **kw) -> nn.Module:
    return PreActResNet18SANM(num_classes, **kw)


def _digits(num_classes: int, **kw) -> nn.Module:
    return DigitsCNN(num_classes, **kw)


def _digits_flat(num_classes: int, **kw) -> nn.Module:
    return DigitsCNN(num_classes, pool="flatten", **kw)


#: name -> (builder, default keyword arguments). ``supce_resnet18`` = the released CIFAR network,
#: ``supce_resnet50`` = Clothing1M, ``preact_resnet18`` = SANM + DivideMix, ``digits_cnn`` = the embedded default,
#: ``digits_cnn_flat`` = the CPU evidence (a flattened 4 x 4 map into the head), ``*_tiny`` = test variants.
VARIANTS: dict[str, tuple[Callable[..., nn.Module], dict]] = {
    "supce_resnet18": (_supce18, {}),
    "supce_resnet50": (_supce50, {}),
    "preact_resnet18": (_preact18, {}),
    "digits_cnn": (_digits, {"width": 32}),
    "digits_cnn_flat": (_digits_flat, {"width": 32}),
    "supce_resnet18_tiny": (_supce18, {"width": 8}),
    "supce_resnet50_tiny": (_supce50, {"width": 8}),
    "preact_resnet18_tiny": (_preact18, {"width": 8}),
    "digits_cnn_tiny": (_digits, {"width": 8}),
}


def create_model(name: str, num_classes: int = 10, **overrides) -> nn.Module:
    """Build a variant of :data:`VARIANTS` (``double_softmax=True`` is accepted by the SupCE variants only)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(VARIANTS)}")
    builder, kwargs = VARIANTS[name]
    return builder(num_classes, **{**kwargs, **overrides})


# ------------------------------------------------------------------------------------------------ C2D checkpoints
def load_c2d_checkpoint(model: SupCEResNet, path: str | Path) -> list[str]:
    """Load a C2D self-supervised checkpoint (the released ``ckpt_<dataset>_<arch>.pth`` format) into ``model``.

    The file is ``{"model": state_dict, ...}`` whose keys carry DataParallel's ``module.`` prefix, e.g.
    ``module.encoder.conv1.weight`` and the SimCLR projection ``module.head.*``. After stripping ``module.`` every
    ``encoder.*`` weight of ``model`` must be present with its shape and no other ``encoder.*`` key may be left
    (strict on the encoder); the projection head is dropped, and ``fc`` and ``recon_module`` keep their fresh
    initialisation. Read with ``weights_only=True`` (SupContrast's ``{"opt": Namespace, "model", "optimizer",
    "epoch"}`` layout included).

    Returns:
        the names of the parameters left at initialisation (``fc.*``, ``recon_module.*``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a C2D checkpoint, or its encoder does not match ``model`` (the message names the
            file and the first offending keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"C2D SSL checkpoint not found: {path}. The released SANM code expects C2D's "
            "ckpt_cifar10_resnet18.pth / ckpt_cifar100_resnet18.pth / ckpt_clothing_resnet50.pth (README, Recipes)."
        )
    state = load_weights_file(path, "C2D checkpoint")  # SupContrast's layout (options beside the weights) included
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path}: not a C2D checkpoint (expected a dict with a 'model' state dict)")
    weights = {k.replace("module.", "", 1): v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}
    encoder = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    target = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    missing = [k for k in target if k not in encoder]
    unexpected = [k for k in encoder if k not in target]
    wrong = [k for k in target if k in encoder and encoder[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: the C2D encoder does not match {model.arch} (width {model.encoder.bn1.num_features}): "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]})"
        )
    model.load_state_dict(encoder, strict=False)
    return [k for k, _ in model.named_parameters() if not k.startswith("encoder.")]
