"""EMO: Efficient MOdel built only from iRMBs (Inverted Residual Mobile Blocks)

Paper: `Rethinking Mobile Block for Efficient Attention-based Models` - https://arxiv.org/abs/2301.01146
(Zhang et al., ICCV 2023).

Re-implemented from the facts of the official code at https://github.com/zhangzjn/EMO
(`model/emo.py`, `model/basic_modules.py` read at commit 703e0b7; see the README, Fidelity notes).
The state_dict is key- and shape-identical to the released `resources/EMO_*/net.pth` checkpoints.

Points that matter for loading the released weights and reproducing their accuracy:
* EW-MHSA partitions the map into a *dilated grid*, not contiguous windows: group (a, b) holds the pixels at rows
  a (mod n1) and columns b (mod n2), n1 x n2 groups of window_size^2 tokens each (zero padding on the bottom/right
  up to a multiple of the window size, no attention mask, cropped back afterwards).
* attn_pre=True (all released models): attention mixes the normed input x per head, the expanding `v` projection
  (1x1 conv + act) is applied afterwards.
* BatchNorm and LayerNorm use eps=1e-6; the depthwise conv is always BN + SiLU, even in the LN/GELU stages.
* The first block of each stage (stride 2) doubles the expansion ratio and has no skip connection.
"""

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    SelectAdaptivePool2d,
    get_act_layer,
    register_notrace_function,
    trunc_normal_,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch.jit import Final

from emo.weights import OFFICIAL_CHECKPOINTS, checkpoint_filter_fn, download_official_checkpoint

__all__ = ['EMO', 'ConvNormAct', 'LayerNorm2d', 'MSPatchEmb', 'fuse_batchnorm', 'iRMB']


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor.

    Kept as a wrapper around ``nn.LayerNorm`` (state_dict keys ``<name>.norm.weight``) to match the official
    checkpoints; timm's ``LayerNorm2d`` subclasses ``nn.LayerNorm`` and would drop the ``.norm`` level.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(
            x.permute(0, 2, 3, 1), self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps
        )
        return x.permute(0, 3, 1, 2)


# Official norm names; both use eps=1e-6 (PyTorch's BatchNorm default of 1e-5 changes eval outputs).
_NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    'none': lambda num_channels: nn.Identity(),
    'bn_2d': partial(nn.BatchNorm2d, eps=1e-6),
    'ln_2d': partial(LayerNorm2d, eps=1e-6),
}


def _norm_layer(name: str, num_channels: int) -> nn.Module:
    if name not in _NORM_LAYERS:
        raise ValueError(f'unknown norm layer {name!r}, expected one of {sorted(_NORM_LAYERS)}')
    return _NORM_LAYERS[name](num_channels)


def _act_layer(name: str, inplace: bool = False) -> nn.Module:
    # timm's 'gelu' is the exact (erf) GELU and 'silu' is nn.SiLU, as in the official get_act. In place (as the
    # official ConvNormAct) where the input is a fresh conv / norm output that nothing else reads: no new buffer.
    return nn.Identity() if name == 'none' else get_act_layer(name)(inplace=inplace)


def _keep_modules() -> bool:
    """True under an FX trace or TorchScript: run conv -> BN as modules, not :meth:`ConvNormAct._conv_bn_eval`."""
    if torch.jit.is_scripting():
        return True
    else:
        return torch.fx._symbolic_trace.is_fx_tracing()


class ConvNormAct(nn.Module):
    """Conv2d -> norm -> act with the official submodule names ``conv`` / ``norm`` / ``act``.

    In eval mode a BatchNorm is folded into the conv on the fly (``fold_bn``; the modules and state_dict are
    unchanged); :func:`fuse_batchnorm` does it once, for good.

    Padding is ``ceil((kernel_size - stride) / 2)`` as in the official code (k3s1/k3s2 -> 1, k5s1/k5s2 -> 2).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm_layer: str = 'none',
        act_layer: str = 'none',
    ):
        super().__init__()
        padding = math.ceil((kernel_size - stride) / 2)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=bias)
        self.norm = _norm_layer(norm_layer, out_chs)
        self.act = _act_layer(act_layer, inplace=True)
        self.fold_bn = norm_layer == 'bn_2d'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # an FX trace keeps the modules (its graph must stay right in both train and eval mode), and so does
        # TorchScript (a scripted BatchNorm does not expose eps)
        if self.fold_bn and not self.training and not _keep_modules():
            return self.act(self._conv_bn_eval(x))
        return self.act(self.norm(self.conv(x)))

    @torch.jit.unused
    def _conv_bn_eval(self, x: torch.Tensor) -> torch.Tensor:
        """``norm(conv(x))`` in eval mode as one conv: the BN's running statistics folded into the conv weights on
        the fly (a few thousand weights), which saves a full read and write of the activation map."""
        conv, bn = self.conv, self.norm
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


class MSPatchEmb(nn.Module):
    """Multi-scale patch embedding (the stem conv): one conv -> norm -> act branch per dilation, averaged.

    The released models use a single branch (dilation 1), conv 3x3 stride 2 *with* bias, BN, no activation.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 2,
        dilations: Sequence[int] = (1,),
        norm_layer: str = 'bn_2d',
        act_layer: str = 'none',
    ):
        super().__init__()
        self.convs = nn.ModuleList()
        for dilation in dilations:
            padding = math.ceil(((kernel_size - 1) * dilation + 1 - stride) / 2)
            self.convs.append(
                nn.Sequential(
                    nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, bias=True),
                    _norm_layer(norm_layer, out_chs),
                    _act_layer(act_layer),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The whole network runs channels-last from here on (each op keeps its input's layout): oneDNN's convs,
        # depthwise ones above all, are several times faster on NHWC than on NCHW; LayerNorm2d and the EW-MHSA
        # partition read it without an extra copy. A no-op when the input already is channels-last.
        x = x.contiguous(memory_format=torch.channels_last)
        if len(self.convs) == 1:
            return self.convs[0](x)
        return torch.stack([conv(x) for conv in self.convs], dim=-1).mean(-1)


def grid_partition(x: torch.Tensor, num_chunks: int, num_heads: int, n1: int, n2: int) -> torch.Tensor:
    """Split an NCHW map into the dilated groups of EW-MHSA, as per-head token sequences.

    Same grouping as the official ``rearrange(x, 'b c (h1 n1) (w1 n2) -> (b n1 n2) c h1 w1')``: group (a, b)
    takes rows a::n1 and columns b::n2. Channels are laid out ``(chunk, head, head_dim)``, like the official
    ``'b (qk heads dim_head) h w'`` split.

    Args:
        x: (B, num_chunks * num_heads * head_dim, h1 * n1, w1 * n2).
    Returns:
        (num_chunks, B * n1 * n2, num_heads, h1 * w1, head_dim).
    """
    B, C, H, W = x.shape
    h1, w1 = H // n1, W // n2
    head_dim = C // (num_chunks * num_heads)
    x = x.reshape(B, num_chunks, num_heads, head_dim, h1, n1, w1, n2)
    x = x.permute(1, 0, 5, 7, 2, 4, 6, 3)  # chunk, B, n1, n2, heads, h1, w1, head_dim
    return x.reshape(num_chunks, B * n1 * n2, num_heads, h1 * w1, head_dim)


def grid_unpartition(x: torch.Tensor, batch_size: int, n1: int, n2: int, h1: int, w1: int) -> torch.Tensor:
    """Inverse of :func:`grid_partition` for one chunk: (B * n1 * n2, heads, h1 * w1, d) -> (B, heads * d, H, W)."""
    _, num_heads, _, head_dim = x.shape
    x = x.reshape(batch_size, n1, n2, num_heads, h1, w1, head_dim)
    x = x.permute(0, 4, 1, 5, 2, 3, 6)  # B, h1, n1, w1, n2, heads, head_dim: one copy into NHWC order
    # returned as an NCHW view of channels-last memory, the layout the convs after it run fastest in
    return x.reshape(batch_size, h1 * n1, w1 * n2, num_heads * head_dim).permute(0, 3, 1, 2)


# The three helpers below hold every shape-dependent step of EW-MHSA (padding to whole windows, the group grid,
# the crop), so that they are leaves of an FX trace: torch.fx.wrap makes plain torch.fx.symbolic_trace (and
# torchvision's create_feature_extractor) record them as single calls instead of tracing Python control flow on
# shapes; register_notrace_function does the same for timm's FX feature extraction. They are TorchScript-compatible,
# so an FX graph that calls them can be scripted too.


@register_notrace_function
@torch.fx.wrap
def pad_to_window_multiple(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Zero-pad an NCHW map at the bottom/right to a multiple of ``window_size`` (unchanged if ``window_size <= 0``)."""
    if window_size <= 0:
        return x
    H, W = x.shape[-2], x.shape[-1]
    pad_b, pad_r = (window_size - H % window_size) % window_size, (window_size - W % window_size) % window_size
    if pad_b > 0 or pad_r > 0:
        x = F.pad(x, (0, pad_r, 0, pad_b))
    return x


@register_notrace_function
@torch.fx.wrap
def crop_to_size_of(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Crop an NCHW map at the bottom/right to the height and width of ``reference`` (undoes the window padding)."""
    return x[:, :, : reference.shape[-2], : reference.shape[-1]]


@register_notrace_function
@torch.fx.wrap
def grid_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    window_size: int,
    scale: float,
    dropout_p: float = 0.0,
    fused: bool = True,
) -> torch.Tensor:
    """Multi-head attention within each dilated group of EW-MHSA.

    Args:
        qk: (B, 2 * num_heads * d_qk, H, W) queries and keys, H and W multiples of the window (see
            :func:`pad_to_window_multiple`).
        v: (B, num_heads * d_v, H, W) values.
        window_size: Tokens per group side; <= 0 makes the whole map one group.
        scale: Logit scale (``d_qk ** -0.5``).
        dropout_p: Dropout on the attention weights (pass 0 in eval mode).
        fused: ``F.scaled_dot_product_attention`` instead of the explicit ``softmax(q k^T * scale) @ v``.
    Returns:
        (B, num_heads * d_v, H, W).
    """
    B, H, W = v.shape[0], v.shape[-2], v.shape[-1]
    win_h, win_w = (H, W) if window_size <= 0 else (window_size, window_size)
    n1, n2 = H // win_h, W // win_w
    q, k = grid_partition(qk, 2, num_heads, n1, n2).unbind(0)
    v = grid_partition(v, 1, num_heads, n1, n2)[0]
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    else:
        attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        if dropout_p > 0.0:
            attn = F.dropout(attn, dropout_p)
        out = attn @ v
    return grid_unpartition(out, B, n1, n2, win_h, win_w)


class iRMB(nn.Module):
    """Inverted Residual Mobile Block: the paper's instantiation of its Meta Mobile Block.

    ``x -> norm -> [EW-MHSA with expanding v | v (1x1 expand + act)] -> (+) DW conv (BN, SiLU) -> SE -> 1x1 proj``,
    with the inner residual around the depthwise conv and the outer residual only when ``has_skip`` holds
    (``dim_in == dim_out`` and stride 1). Module names match the official state_dict.

    The attention attributes (``window_size``, ``num_heads``, ``scale``, ...) exist on every block, with
    ``num_heads == 0`` where there is no attention; ``attn_s`` and ``has_skip`` are TorchScript constants, so a
    scripted attention-free block compiles without the attention branch (it has no ``qk`` submodule).
    """

    attn_s: Final[bool]
    has_skip: Final[bool]
    attn_pre: Final[bool]

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        norm_in: bool = True,
        has_skip: bool = True,
        exp_ratio: float = 1.0,
        norm_layer: str = 'bn_2d',
        act_layer: str = 'relu',
        v_proj: bool = True,
        dw_ks: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        dim_head: int = 64,
        window_size: int = 7,
        attn_s: bool = True,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_pre: bool = False,
    ):
        super().__init__()
        self.norm = _norm_layer(norm_layer, dim_in) if norm_in else nn.Identity()
        dim_mid = int(dim_in * exp_ratio)
        self.has_skip = has_skip and dim_in == dim_out and stride == 1
        self.attn_s = attn_s
        self.dim_head = dim_head
        self.window_size = window_size
        self.scale = dim_head**-0.5
        self.attn_pre = attn_pre
        self.fused_attn = use_fused_attn()
        self.num_heads = 0
        if attn_s:
            if dim_in % dim_head:
                raise ValueError(f'dim_in {dim_in} must be divisible by dim_head {dim_head}')
            self.num_heads = dim_in // dim_head
            if not attn_pre and dim_mid % self.num_heads:
                raise ValueError(f'attn_pre=False needs dim_mid {dim_mid} divisible by {self.num_heads} heads')
            self.qk = ConvNormAct(dim_in, dim_in * 2, bias=qkv_bias)
            self.v = ConvNormAct(dim_in, dim_mid, bias=qkv_bias, act_layer=act_layer)
            self.attn_drop = nn.Dropout(attn_drop)
        elif v_proj:
            self.v = ConvNormAct(dim_in, dim_mid, bias=qkv_bias, act_layer=act_layer)
        else:
            self.v = nn.Identity()
        self.conv_local = ConvNormAct(
            dim_mid, dim_mid, dw_ks, stride=stride, groups=dim_mid, norm_layer='bn_2d', act_layer='silu'
        )
        self.se = (
            SqueezeExcite(dim_mid, rd_ratio=se_ratio, act_layer=get_act_layer(act_layer))
            if se_ratio > 0.0
            else nn.Identity()
        )
        self.proj_drop = nn.Dropout(proj_drop)
        self.proj = ConvNormAct(dim_mid, dim_out)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def ew_mhsa(self, x: torch.Tensor) -> torch.Tensor:
        """Expanded Window MHSA on the normed input; returns the dim_mid-channel output of ``v``."""
        # qk (and v when attn_pre=False) run on the zero-padded map, as officially: their biases reach the padding
        padded = pad_to_window_multiple(x, self.window_size)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if self.attn_pre:
            out = grid_attention(
                self.qk(padded), padded, self.num_heads, self.window_size, self.scale, dropout_p, self.fused_attn
            )
            # v is a 1x1 conv + act: applying it after the crop equals the official order (v on the padded groups)
            return self.v(crop_to_size_of(out, x))
        out = grid_attention(
            self.qk(padded), self.v(padded), self.num_heads, self.window_size, self.scale, dropout_p, self.fused_attn
        )
        return crop_to_size_of(out, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm(x)
        if self.attn_s:
            x = self.ew_mhsa(x)
        else:
            x = self.v(x)
        if self.has_skip:
            x = x + self.se(self.conv_local(x))
        else:
            x = self.se(self.conv_local(x))
        x = self.proj(self.proj_drop(x))
        return shortcut + self.drop_path(x) if self.has_skip else x


class EMO(nn.Module):
    """EMO: the paper's ResNet-like 4-stage network built from iRMBs only.

    Module names (``stage0`` ... ``stage4``, ``norm``, ``head``) follow the official code so the released
    checkpoints load with ``strict=True``. ``stage0`` is the stem (MSPatchEmb + an SE iRMB, stride 2); stages 1-4
    have strides 4, 8, 16 and 32.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = 'avg',
        depths: Sequence[int] = (2, 2, 8, 3),
        stem_dim: int = 24,
        embed_dims: Sequence[int] = (32, 48, 80, 168),
        exp_ratios: Sequence[float] = (2.0, 2.5, 3.0, 3.5),
        norm_layers: Sequence[str] = ('bn_2d', 'bn_2d', 'ln_2d', 'ln_2d'),
        act_layers: Sequence[str] = ('silu', 'silu', 'gelu', 'gelu'),
        dw_kss: Sequence[int] = (3, 3, 5, 5),
        se_ratios: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        dim_heads: Sequence[int] = (16, 16, 20, 21),
        window_sizes: Sequence[int] = (7, 7, 7, 7),
        attn_ss: Sequence[bool] = (False, False, True, True),
        qkv_bias: bool = True,
        attn_pre: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
    ):
        """
        Args:
            in_chans: Number of input image channels.
            num_classes: Number of classifier classes (0 for no classifier).
            global_pool: Global pooling before the classifier: 'avg' (official), 'max', 'avgmax', 'catavgmax' (doubles
                the classifier's input width), their 'fast*' forms, or '' for none (needs num_classes=0; the
                head then returns the unpooled map).
            depths: Number of iRMBs per stage 1-4.
            stem_dim: Channels of the stem (stage0).
            embed_dims: Output channels of stages 1-4.
            exp_ratios: Expansion ratio per stage (doubled in the first, stride-2 block of each stage).
            norm_layers / act_layers: Per-stage norm ('bn_2d', 'ln_2d') and activation (timm act names).
            dw_kss: Depthwise kernel size per stage (the stem uses dw_kss[0]).
            se_ratios: Squeeze-excite ratio per stage (the stem block always has SE with ratio 1).
            dim_heads: Attention head width per stage.
            window_sizes: EW-MHSA window size per stage (<= 0: the whole map is one window).
            attn_ss: Whether the stride-1 blocks of a stage use EW-MHSA.
            qkv_bias: Bias in the qk and v 1x1 convs.
            attn_pre: Attention before the expanding v projection (True for all released models).
            attn_drop_rate / proj_drop_rate: Dropout in the attention and before proj.
            drop_path_rate: Stochastic depth, linear from 0 over the stage 1-4 blocks.
            drop_rate: Dropout before the classifier (not in the official code, 0 by default).
        """
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False
        dprs = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]

        self.stage0 = nn.Sequential(
            MSPatchEmb(in_chans, stem_dim, kernel_size=dw_kss[0], stride=2, norm_layer=norm_layers[0]),
            iRMB(
                stem_dim,
                stem_dim,
                norm_in=False,
                has_skip=False,
                exp_ratio=1,
                norm_layer=norm_layers[0],
                act_layer=act_layers[0],
                v_proj=False,
                dw_ks=dw_kss[0],
                se_ratio=1.0,
                attn_s=False,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
            ),
        )
        self.feature_info = []
        dim_prev = stem_dim
        block_idx = 0
        for i, depth in enumerate(depths):
            blocks = []
            for j in range(depth):
                first = j == 0
                blocks.append(
                    iRMB(
                        dim_prev,
                        embed_dims[i],
                        norm_in=True,
                        has_skip=not first,
                        exp_ratio=exp_ratios[i] * 2 if first else exp_ratios[i],
                        norm_layer=norm_layers[i],
                        act_layer=act_layers[i],
                        v_proj=True,
                        dw_ks=dw_kss[i],
                        stride=2 if first else 1,
                        se_ratio=se_ratios[i],
                        dim_head=dim_heads[i],
                        window_size=window_sizes[i],
                        attn_s=attn_ss[i] and not first,
                        qkv_bias=qkv_bias,
                        attn_drop=attn_drop_rate,
                        proj_drop=proj_drop_rate,
                        drop_path=dprs[block_idx],
                        attn_pre=attn_pre,
                    )
                )
                dim_prev = embed_dims[i]
                block_idx += 1
            setattr(self, f'stage{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f'stage{i + 1}'))

        self.norm = _norm_layer(norm_layers[-1], embed_dims[-1])
        self.global_pool, head = _create_classifier(self.num_features, num_classes, global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = head
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official init: trunc-normal Linear; norms weight 1 / bias 0 (the PyTorch default); convs keep the default.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # TorchScript compiles properties and has no list-of-modules type; scripted code calls stage1 ... stage4 by name
    __jit_unused_properties__ = ('stages',)

    @property
    def stages(self) -> list[nn.Sequential]:
        """Stages 1-4 (not registered twice: the state_dict keeps the official ``stage{i}`` names)."""
        return [self.stage1, self.stage2, self.stage3, self.stage4]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stage0',
            blocks=r'^stage(\d+)' if coarse else [(r'^stage(\d+)\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (timm semantics).

        Args:
            num_classes: New class count; 0 gives an identity head (``forward`` returns the pooled features).
            global_pool: None keeps the current pooling; '' disables it (only with ``num_classes=0``: ``forward``
                then returns the unpooled (B, C, H/32, W/32) map); otherwise a pool type of
                ``timm.layers.SelectAdaptivePool2d`` ('avg', 'max', 'avgmax', 'catavgmax', 'fast...').
        """
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.head = _create_classifier(self.num_features, num_classes, global_pool)
        self.num_classes = num_classes

    def set_window_size(self, window_size: int | Sequence[int]) -> None:
        """Change the EW-MHSA window size (per stage 1-4, or one for all); weights are unaffected.

        The official dense-prediction configs use 7 (RetinaNet 1M/2M), 10 (RetinaNet 5M) and 16 (segmentation).
        """
        sizes = [window_size] * 4 if isinstance(window_size, int) else list(window_size)
        for stage, size in zip(self.stages, sizes):
            for block in stage:
                if block.attn_s:
                    block.window_size = size

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the outputs of stages 1-4 (strides 4, 8, 16, 32).

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n stages if int, all if None, the given stage indices (0-3) if a sequence.
                Index i is the official backbone's ``out_indices`` entry i + 1.
            norm: Apply the final LayerNorm to the stage-4 intermediate (the only one it fits).
            stop_early: Stop after the last requested stage.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError('output_fmt must be NCHW')
        take_indices, max_index = feature_take_indices(4, indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stage0(x)
        for idx, stage in enumerate(stages):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if idx in take_indices:
                intermediates.append(self.norm(x) if norm and idx == 3 else x)
        if intermediates_only:
            return intermediates
        if len(stages) == 4:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last one in ``indices`` (and optionally the final norm and the head)."""
        take_indices, max_index = feature_take_indices(4, indices)
        for i in range(max_index + 1, 4):
            setattr(self, f'stage{i + 1}', nn.Sequential())
        if max_index < 3:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_norm or max_index < 3:
            self.norm = nn.Identity()
        if prune_head or max_index < 3:
            self.reset_classifier(0)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages 1-4, then the final norm: the unpooled (B, num_features, H/32, W/32) map."""
        x = self.stage0(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:
                x = checkpoint_seq(stage, x)
        else:
            x = self.stage1(x)
            x = self.stage2(x)
            x = self.stage3(x)
            x = self.stage4(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling (none if ``global_pool=''``), dropout, then the classifier unless ``pre_logits``."""
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_classifier(
    num_features: int,
    num_classes: int,
    global_pool: str,
) -> tuple[SelectAdaptivePool2d, nn.Module]:
    """timm's pooling + Linear classifier, validated: a clear ValueError instead of timm's assertions."""
    try:
        # flatten only when pooling: with global_pool='' the map passes through unchanged (timm's convention)
        pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
    except (AssertionError, AttributeError) as e:
        raise ValueError(
            f"unknown global_pool {global_pool!r}: expected '' (no pooling), 'avg', 'max', 'avgmax', 'catavgmax' "
            "or a 'fast' form of them"
        ) from e
    if not global_pool and num_classes > 0:
        raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")
    head = nn.Linear(num_features * pool.feat_mult(), num_classes) if num_classes > 0 else nn.Identity()
    return pool, head


@torch.no_grad()
def fold_bn_after_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One conv (with bias) equal to ``bn(conv(x))`` with the BN's running statistics (eval mode)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@torch.no_grad()
def fold_bn_before_conv1x1(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """One 1x1 conv (with bias) equal to ``conv(bn(x))``: the BN's per-channel affine map moves into the weights."""
    if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.padding != (0, 0):
        raise ValueError('only an ungrouped, unpadded 1x1 conv can absorb a preceding BatchNorm')
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        1,
        conv.stride,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_(conv.weight * scale.view(1, -1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=shift.device)
    fused.bias.copy_(bias + conv.weight.flatten(1) @ shift)
    return fused


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of an EMO into a neighbouring conv, for inference; returns ``model``, changed in place.

    Folded: the stem conv's BN, the BN after each depthwise ``conv_local``, and the pre-norm BN of the attention-free
    iRMBs (stages 0-2, where the norm only feeds the 1x1 ``v`` conv). Not folded: the LayerNorms of stages 3-4 and a
    BN that feeds attention (its normalised input is also the attention's values and is zero-padded). The outputs
    equal the unfused eval-mode model's up to float rounding; the state_dict no longer matches the official layout,
    so fuse after loading weights and never train or save the fused model as a checkpoint.
    """
    if model.training:
        raise RuntimeError('fuse_batchnorm folds running statistics: call model.eval() first')
    for module in list(model.modules()):
        if isinstance(module, ConvNormAct) and isinstance(module.norm, nn.BatchNorm2d):
            module.conv, module.norm = fold_bn_after_conv(module.conv, module.norm), nn.Identity()
            module.fold_bn = False
        elif isinstance(module, MSPatchEmb):
            for branch in module.convs:
                if isinstance(branch[1], nn.BatchNorm2d):
                    branch[0], branch[1] = fold_bn_after_conv(branch[0], branch[1]), nn.Identity()
        elif (
            isinstance(module, iRMB)
            and not module.attn_s
            and isinstance(module.norm, nn.BatchNorm2d)
            and isinstance(module.v, ConvNormAct)
        ):
            module.v.conv, module.norm = fold_bn_before_conv1x1(module.norm, module.v.conv), nn.Identity()
    return model


def _official_weights_overlay(variant: str, kwargs: dict) -> None:
    """Point ``pretrained=True`` at the verified, per-variant cached copy of the official checkpoint.

    timm would fetch the cfg's URL with ``torch.hub.load_state_dict_from_url``: hash check off, and all four
    variants cached under the same name ``net.pth``. When the resolved cfg would do that for one of the official
    URLs (no ``file``, ``state_dict`` or hub id given), the file is fetched by ``download_official_checkpoint``
    instead and handed to timm as ``pretrained_cfg_overlay['file']``.
    """
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    )
    official = {url: name for name, url in OFFICIAL_CHECKPOINTS.items()}
    if cfg.file or cfg.state_dict or cfg.hf_hub_id or cfg.source or cfg.url not in official:
        return
    path = download_official_checkpoint(official[cfg.url], cache_dir=kwargs.get('cache_dir'))
    kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(path))


def _create_emo(variant: str, pretrained: bool = False, **kwargs) -> EMO:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    if pretrained:
        _official_weights_overlay(variant, kwargs)
    return build_model_with_cfg(
        EMO,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stage0.0.convs.0.0',
        'classifier': 'head',
        # no licence file was found in the indexed copy of zhangzjn/EMO
        'license': 'unknown',
        'paper_ids': 'arXiv:2301.01146',
        'paper_name': 'Rethinking Mobile Block for Efficient Attention-based Models',
        'origin_url': 'https://github.com/zhangzjn/EMO',
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        'emo_1m.in1k': _cfg(url=OFFICIAL_CHECKPOINTS['emo_1m']),
        'emo_2m.in1k': _cfg(url=OFFICIAL_CHECKPOINTS['emo_2m']),
        'emo_5m.in1k': _cfg(url=OFFICIAL_CHECKPOINTS['emo_5m']),
        'emo_6m.in1k': _cfg(url=OFFICIAL_CHECKPOINTS['emo_6m']),
        'emo_test.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
    }
)


@register_model
def emo_1m(pretrained: bool = False, **kwargs) -> EMO:
    """EMO-1M: 1.36 M params, 0.261 G MACs at 224, ImageNet top-1 71.5 (official EMA weights)."""
    model_args = dict(
        depths=(2, 2, 8, 3),
        stem_dim=24,
        embed_dims=(32, 48, 80, 168),
        exp_ratios=(2.0, 2.5, 3.0, 3.5),
        dim_heads=(16, 16, 20, 21),
        drop_path_rate=0.04036,
    )
    return _create_emo('emo_1m', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def emo_2m(pretrained: bool = False, **kwargs) -> EMO:
    """EMO-2M: 2.38 M params, 0.439 G MACs at 224, ImageNet top-1 75.1."""
    model_args = dict(
        depths=(3, 3, 9, 3),
        stem_dim=24,
        embed_dims=(32, 48, 120, 200),
        exp_ratios=(2.0, 2.5, 3.0, 3.5),
        dim_heads=(16, 16, 20, 20),
        drop_path_rate=0.05,
    )
    return _create_emo('emo_2m', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def emo_5m(pretrained: bool = False, **kwargs) -> EMO:
    """EMO-5M: 5.11 M params, 0.903 G MACs at 224, ImageNet top-1 78.4."""
    model_args = dict(
        depths=(3, 3, 9, 3),
        stem_dim=24,
        embed_dims=(48, 72, 160, 288),
        exp_ratios=(2.0, 3.0, 4.0, 4.0),
        dim_heads=(24, 24, 32, 32),
        drop_path_rate=0.05,
    )
    return _create_emo('emo_5m', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def emo_6m(pretrained: bool = False, **kwargs) -> EMO:
    """EMO-6M: 6.17 M params, 0.961 G MACs at 224, ImageNet top-1 79.0."""
    model_args = dict(
        depths=(3, 3, 9, 3),
        stem_dim=24,
        embed_dims=(48, 72, 160, 320),
        exp_ratios=(2.0, 3.0, 4.0, 5.0),
        dim_heads=(16, 24, 20, 32),
        drop_path_rate=0.05,
    )
    return _create_emo('emo_6m', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def emo_test(pretrained: bool = False, **kwargs) -> EMO:
    """Tiny EMO for tests (same structure as the real variants, 2 heads in stage 3, 3 in stage 4)."""
    model_args = dict(
        depths=(1, 1, 2, 2),
        stem_dim=8,
        embed_dims=(16, 24, 32, 48),
        exp_ratios=(2.0, 2.0, 2.0, 2.0),
        dim_heads=(8, 8, 16, 16),
    )
    return _create_emo('emo_test', pretrained=pretrained, **dict(model_args, **kwargs))
