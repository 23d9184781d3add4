"""Pyramid ViG and PVG (Progressive Vision Graph) backbones, registered with timm.

Papers: `Vision GNN: An Image is Worth Graph of Nodes` - https://arxiv.org/abs/2206.00272 (Han et al., NeurIPS 2022)
and `PVG: Progressive Vision Graph for Vision Recognition` - https://arxiv.org/abs/2308.00574 (Wu et al., ACM MM 2023).

Pyramid ViG follows the facts of the official code (huawei-noah/Efficient-AI-Backbones, ``vig_pytorch``): the
state_dict of ``pvig_ti/s/m/b`` has the official keys, order and shapes, so the released ``pvig_*`` files load
with ``strict=True`` (README, "Loading the official weights"). Points that matter for that:

* ``backbone`` is one flat ``nn.Sequential``: the ``Downsample`` modules sit between the blocks (indices 2, 5, 12 for
  Ti/S); each block is ``Sequential(Grapher, FFN)``.
* The max-relative graph conv interleaves the channels of x and of ``max_j (x_j - x_i)`` before a grouped (4) 1x1
  conv; a plain concatenation would load the weights and silently compute something else.
* ``relative_pos`` is a frozen parameter (in the state_dict, not trainable); k = 9 everywhere, dilation
  ``min(idx // 4 + 1, 49 // 9)`` over the global block index, key reduction ``[4, 2, 1, 1]`` by average pooling.

PVG adds three switchable components on this skeleton (README, "Fidelity notes": no official PVG code exists and
every internal choice is ours): PSGC (``graph='psgc'``), MaxE (``aggregation='maxe'``), GraphLU (``block_act=
'graphlu'``). The graph itself is built by :mod:`pvg.graph` (``graph_mode='fast'`` chunked, ``'dense'`` the
official-style reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from pvg.graph import (
    DEFAULT_CHUNK_ELEMENTS,
    cached_spatial_neighbours,
    gather_neighbours,
    knn_graph,
    relative_position_bias,
)
from pvg.weights import checkpoint_filter_fn

__all__ = [
    'FFN',
    'DynamicGraphConv',
    'GraphLU',
    'Grapher',
    'MaxE',
    'MaxRelativeConv',
    'PyramidViG',
    'psgc_global_channels',
]

VIG_MEAN = VIG_STD = (0.5, 0.5, 0.5)


class GraphLU(nn.Module):
    """GraphLU (Graph error Linear Unit, PVG paper's abstract): ``x * Phi(x / (1 + eps))``.

    A GELU whose Gaussian gate is widened by ``1 + eps``, so small and negative inputs are suppressed less ("enhance
    low-value information in a relaxed form"). The paper's formula was not available; this form and ``eps = 1`` are
    a third-party reading (README, Fidelity notes). ``eps = 0`` is exactly GELU.
    """

    def __init__(self, eps: float = 1.0):
        super().__init__()
        if eps <= -1.0:
            raise ValueError(f'GraphLU needs eps > -1, got {eps}')
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.erf(x / (math.sqrt(2.0) * (1.0 + self.eps))))

    def extra_repr(self) -> str:
        return f'eps={self.eps}'


def _act(name: str, graphlu_eps: float = 1.0) -> nn.Module:
    if name == 'gelu':
        return nn.GELU()
    if name == 'graphlu':
        return GraphLU(graphlu_eps)
    raise ValueError(f"activation must be 'gelu' or 'graphlu', got {name!r}")


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=True)
    return [conv, nn.BatchNorm2d(out_chs)]


class Stem(nn.Module):
    """Stride-4 stem: conv3x3 s2 -> BN -> GELU -> conv3x3 s2 -> BN -> GELU -> conv3x3 -> BN (keys ``convs.N``)."""

    def __init__(self, in_chans: int, out_chs: int):
        super().__init__()
        self.convs = nn.Sequential(
            *_conv_bn(in_chans, out_chs // 2, 3, 2),
            nn.GELU(),
            *_conv_bn(out_chs // 2, out_chs, 3, 2),
            nn.GELU(),
            *_conv_bn(out_chs, out_chs, 3, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class Downsample(nn.Module):
    """Stage entry: conv3x3 s2 -> BN, no activation (keys ``conv.0``, ``conv.1``)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Sequential(*_conv_bn(in_chs, out_chs, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FFN(nn.Module):
    """Residual FFN: 1x1 conv C -> 4C -> BN -> act -> 1x1 conv 4C -> C -> BN -> DropPath, plus the input."""

    def __init__(self, dim: int, hidden: int, act: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.fc1 = nn.Sequential(*_conv_bn(dim, hidden))
        self.act = act
        self.fc2 = nn.Sequential(*_conv_bn(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.fc2(self.act(self.fc1(x)))) + x


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Channels [a_0, b_0, a_1, b_1, ...] (the official stack-on-dim-2 then reshape)."""
    batch, channels, height, width = a.shape
    return torch.stack([a, b], dim=2).reshape(batch, 2 * channels, height, width)


class MaxRelativeConv(nn.Module):
    """ViG's max-relative graph conv (MRConv): interleave x and ``max_j (x_j - x_i)``, then a grouped 1x1 conv
    (2C -> 2C, groups 4) -> BN -> act (keys ``nn.0``, ``nn.1``)."""

    needs_mean = False

    def __init__(self, dim: int, act: nn.Module, groups: int = 4):
        super().__init__()
        self.nn = nn.Sequential(*_conv_bn(2 * dim, 2 * dim, groups=groups), act)

    def forward(self, x: torch.Tensor, rel_max: torch.Tensor, rel_mean: torch.Tensor | None = None) -> torch.Tensor:
        return self.nn(_interleave(x, rel_max))


class MaxE(nn.Module):
    """MaxE (PVG): aggregate with Max pooling and the mathematical Expectation of the relative neighbour features.

    ``a_i = max_j (x_j - x_i) + mean_j (x_j - x_i)``; ``combine='sum'`` updates ``x_i + a_i`` with a grouped 1x1
    conv C -> C (groups 4) -> BN -> act; ``combine='concat'`` interleaves x and a (2C) and maps 2C -> C. Both are
    lighter than MRConv's 2C -> 2C conv followed by the Grapher's 2C -> C fc2 (README, Fidelity notes).
    """

    needs_mean = True

    def __init__(self, dim: int, act: nn.Module, combine: str = 'sum', groups: int = 4):
        super().__init__()
        if combine not in ('sum', 'concat'):
            raise ValueError(f"MaxE combine must be 'sum' or 'concat', got {combine!r}")
        self.combine = combine
        in_chs = dim if combine == 'sum' else 2 * dim
        self.nn = nn.Sequential(*_conv_bn(in_chs, dim, groups=groups), act)

    def forward(self, x: torch.Tensor, rel_max: torch.Tensor, rel_mean: torch.Tensor | None = None) -> torch.Tensor:
        if rel_mean is None:
            raise ValueError('MaxE needs the mean of the relative neighbour features')
        agg = rel_max + rel_mean
        return self.nn(x + agg if self.combine == 'sum' else _interleave(x, agg))


def psgc_global_channels(dim: int, ratio: float, multiple: int = 4) -> int:
    """Channels of PSGC's global-graph branch for a global share ``ratio`` (rounded to ``multiple``)."""
    return int(min(dim, max(0, multiple * round(ratio * dim / multiple))))


def _relative_stats(
    centre: torch.Tensor, keys: torch.Tensor, index: torch.Tensor, mode: str, need_mean: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``max_j (x_j - x_i)`` (and ``mean_j (x_j - x_i)``) over the neighbours ``index`` (B, N, k), as (B, C, N)."""
    if mode == 'dense':
        # official: gather x_j and the repeated centres x_i, both (B, C, N, k)
        centre_index = torch.arange(centre.shape[-1], device=centre.device).view(1, -1, 1).expand_as(index)
        diff = gather_neighbours(keys, index, 'dense') - gather_neighbours(centre, centre_index, 'dense')
        return diff.amax(-1), diff.mean(-1) if need_mean else None
    picked = gather_neighbours(keys, index, 'fast')  # (B, N, k, C)
    rel_max = picked.amax(2).transpose(1, 2) - centre
    rel_mean = picked.mean(2).transpose(1, 2) - centre if need_mean else None
    return rel_max, rel_mean


class DynamicGraphConv(nn.Module):
    """Builds the graph of a Grapher and runs its aggregation/update module (``gconv``).

    ``global_channels`` (all channels for ViG) use the dynamic kNN graph against average-pooled keys (reduction r)
    with the relative-position bias; the other channels (PSGC's local branch) use the fixed k nearest grid
    positions at full resolution.
    """

    def __init__(
        self,
        gconv: nn.Module,
        k: int,
        dilation: int,
        reduction: int,
        global_channels: int,
        graph_mode: str = 'fast',
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ):
        super().__init__()
        self.gconv = gconv
        self.k, self.dilation, self.reduction = k, dilation, reduction
        self.global_channels = global_channels
        self.graph_mode = graph_mode
        self.chunk_elements = chunk_elements

    def _local_index(self, height: int, width: int, batch: int, device: torch.device) -> torch.Tensor:
        return cached_spatial_neighbours(height, width, self.k, str(device)).unsqueeze(0).expand(batch, -1, -1)

    def effective_dilation(self, num_keys: int) -> int:
        """The block's dilation, lowered to ``num_keys // k`` on inputs too small for k * d keys (README,
        Fidelity notes); unchanged at the design resolution."""
        if self.k > num_keys:
            raise ValueError(f'the graph needs k={self.k} neighbours but the feature map has only {num_keys} keys')
        return max(1, min(self.dilation, num_keys // self.k))

    def forward(self, x: torch.Tensor, relative_pos: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        flat = x.flatten(2)
        need_mean = self.gconv.needs_mean
        maxes, means = [], []
        cg = self.global_channels
        if cg > 0:
            xg = x[:, :cg] if cg < channels else x
            keys = F.avg_pool2d(xg, self.reduction, self.reduction) if self.reduction > 1 else xg
            keys = keys.flatten(2)
            index = knn_graph(
                flat[:, :cg],
                keys,
                self.k,
                self.effective_dilation(keys.shape[-1]),
                relative_pos,
                self.graph_mode,
                self.chunk_elements,
            )
            rel_max, rel_mean = _relative_stats(flat[:, :cg], keys, index, self.graph_mode, need_mean)
            maxes.append(rel_max)
            means.append(rel_mean)
        if cg < channels:
            local = flat[:, cg:]
            index = self._local_index(height, width, batch, x.device)
            rel_max, rel_mean = _relative_stats(local, local, index, self.graph_mode, need_mean)
            maxes.append(rel_max)
            means.append(rel_mean)
        rel_max = torch.cat(maxes, 1) if len(maxes) > 1 else maxes[0]
        rel_mean = (torch.cat(means, 1) if len(means) > 1 else means[0]) if need_mean else None
        shape = (batch, channels, height, width)
        return self.gconv(x, rel_max.reshape(shape), rel_mean.reshape(shape) if rel_mean is not None else None)


class Grapher(nn.Module):
    """Grapher: fc1 (1x1 conv + BN) -> graph conv -> fc2 (1x1 conv + BN) -> DropPath, plus the input.

    Keys: ``relative_pos`` (frozen, (1, N, N / r^2) at the design resolution), ``fc1.{0,1}``,
    ``graph_conv.gconv.nn.{0,1}``, ``fc2.{0,1}`` (``fc2`` is absent for MaxE without ``maxe_out_proj``).
    """

    def __init__(
        self,
        dim: int,
        num_nodes: int,
        gconv: nn.Module,
        gconv_out: int,
        k: int = 9,
        dilation: int = 1,
        reduction: int = 1,
        global_channels: int | None = None,
        relative_pos: bool = True,
        out_proj: bool = True,
        drop_path: float = 0.0,
        graph_mode: str = 'fast',
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ):
        super().__init__()
        self.num_nodes, self.reduction = num_nodes, reduction
        global_channels = dim if global_channels is None else global_channels
        if relative_pos and global_channels > 0:
            self.relative_pos = nn.Parameter(relative_position_bias(dim, num_nodes, reduction), requires_grad=False)
        else:
            self.register_parameter('relative_pos', None)
        self.fc1 = nn.Sequential(*_conv_bn(dim, dim))
        self.graph_conv = DynamicGraphConv(
            gconv, k, dilation, reduction, global_channels, graph_mode=graph_mode, chunk_elements=chunk_elements
        )
        self.fc2 = nn.Sequential(*_conv_bn(gconv_out, dim)) if out_proj else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self._bias_cache: dict[tuple, torch.Tensor] = {}

    def _relative_pos(self, height: int, width: int) -> torch.Tensor | None:
        """The bias for an H x W map: the stored one at the design size, else bicubically resized (official)."""
        rel = self.relative_pos
        if rel is None or height * width == self.num_nodes:
            return rel
        num_keys = (height // self.reduction) * (width // self.reduction)
        key = (height, width, rel.device, rel.dtype, rel._version)
        cached = self._bias_cache.get(key) if self.graph_conv.graph_mode == 'fast' else None
        if cached is None:
            with torch.no_grad():
                cached = F.interpolate(rel.unsqueeze(0), size=(height * width, num_keys), mode='bicubic').squeeze(0)
            if self.graph_conv.graph_mode == 'fast':
                self._bias_cache = {key: cached}
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.fc1(x)
        x = self.graph_conv(x, self._relative_pos(x.shape[2], x.shape[3]))
        return self.drop_path(self.fc2(x)) + shortcut


class PyramidViG(nn.Module):
    """Pyramid ViG (and PVG with its switches): stem, 4 stages of (Grapher, FFN) blocks, 1x1-conv MLP head.

    Keys follow the official code: ``pos_embed``, ``stem.convs.*``, ``backbone.{n}`` (a flat Sequential with the
    Downsamples interleaved), ``prediction.{0,1,4}``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = 'avg',
        depths: Sequence[int] = (2, 2, 6, 2),
        channels: Sequence[int] = (80, 160, 400, 640),
        k: int = 9,
        reduce_ratios: Sequence[int] = (4, 2, 1, 1),
        img_size: int = 224,
        emb_dims: int = 1024,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        graph: str = 'knn',
        psgc_global_ratio: tuple[float, float] = (0.25, 1.0),
        aggregation: str = 'mr',
        maxe_combine: str = 'sum',
        maxe_out_proj: bool = False,
        block_act: str = 'gelu',
        graphlu_eps: float = 1.0,
        relative_pos: bool = True,
        graph_mode: str = 'fast',
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ):
        """
        Args:
            in_chans / num_classes: Input channels; classifier classes (0: no classifier, pre-logits out).
            global_pool: 'avg' (official) or '' (no pooling and no head MLP; needs num_classes=0).
            depths / channels: Blocks and channels per stage.
            k: Neighbours per node. reduce_ratios: key average-pooling factor per stage.
            img_size: Design resolution: sizes ``pos_embed`` and the stored ``relative_pos`` (other sizes are
                interpolated at run time).
            emb_dims: Width of the head's hidden 1x1 conv.
            drop_rate / drop_path_rate: Head dropout; stochastic depth, linear from 0 over the blocks.
            graph: 'knn' (ViG: every channel in the dynamic global graph) or 'psgc' (PVG's split graph).
            psgc_global_ratio: PSGC's global channel share at the first and last block, linear in between.
            aggregation: 'mr' (ViG's max-relative conv) or 'maxe' (PVG).
            maxe_combine / maxe_out_proj: MaxE's update ('sum' or 'concat'); keep a C -> C fc2 after MaxE.
            block_act: Activation of the Graphers and FFNs: 'gelu' (ViG) or 'graphlu' (PVG). graphlu_eps: its eps.
            relative_pos: Add the relative-position bias to the kNN distance.
            graph_mode: 'fast' (chunked kNN, light gather) or 'dense' (official-style reference).
            chunk_elements: Largest distance buffer of the fast path, in entries.
        """
        super().__init__()
        if graph not in ('knn', 'psgc'):
            raise ValueError(f"graph must be 'knn' or 'psgc', got {graph!r}")
        if aggregation not in ('mr', 'maxe'):
            raise ValueError(f"aggregation must be 'mr' or 'maxe', got {aggregation!r}")
        if graph_mode not in ('fast', 'dense'):
            raise ValueError(f"graph_mode must be 'fast' or 'dense', got {graph_mode!r}")
        if len(depths) != 4 or len(channels) != 4 or len(reduce_ratios) != 4:
            raise ValueError('depths, channels and reduce_ratios need one entry per stage (4)')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = channels[-1]
        self.head_hidden_size = emb_dims
        self.img_size = img_size
        self.grad_checkpointing = False
        total = sum(depths)
        dpr = [v.item() for v in torch.linspace(0, drop_path_rate, total, device='cpu')]
        global_share = [
            v.item() for v in torch.linspace(psgc_global_ratio[0], psgc_global_ratio[1], total, device='cpu')
        ]
        max_dilation = 49 // k

        self.stem = Stem(in_chans, channels[0])
        self.pos_embed = nn.Parameter(torch.zeros(1, channels[0], img_size // 4, img_size // 4))
        side = img_size // 4
        blocks: list[nn.Module] = []
        self.feature_info = []
        self.stage_ends: list[int] = []
        idx = 0
        for i, (depth, dim) in enumerate(zip(depths, channels)):
            if i > 0:
                blocks.append(Downsample(channels[i - 1], dim))
                side = (side + 1) // 2  # the 3x3 stride-2 conv with padding 1: ceil(side / 2)
            for _ in range(depth):
                if aggregation == 'mr':
                    gconv, gconv_out, out_proj = MaxRelativeConv(dim, _act(block_act, graphlu_eps)), 2 * dim, True
                else:
                    gconv = MaxE(dim, _act(block_act, graphlu_eps), combine=maxe_combine)
                    gconv_out, out_proj = dim, maxe_out_proj
                grapher = Grapher(
                    dim,
                    side * side,
                    gconv,
                    gconv_out,
                    k=k,
                    dilation=min(idx // 4 + 1, max_dilation),
                    reduction=reduce_ratios[i],
                    global_channels=psgc_global_channels(dim, global_share[idx]) if graph == 'psgc' else dim,
                    relative_pos=relative_pos,
                    out_proj=out_proj,
                    drop_path=dpr[idx],
                    graph_mode=graph_mode,
                    chunk_elements=chunk_elements,
                )
                ffn = FFN(dim, 4 * dim, _act(block_act, graphlu_eps), drop_path=dpr[idx])
                blocks.append(nn.Sequential(grapher, ffn))
                idx += 1
            self.stage_ends.append(len(blocks) - 1)
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f'backbone.{len(blocks) - 1}'))
        self.backbone = nn.Sequential(*blocks)
        self.prediction = nn.Sequential(
            *_conv_bn(channels[-1], emb_dims),
            nn.GELU(),
            nn.Dropout(drop_rate),
            nn.Conv2d(emb_dims, num_classes, 1) if num_classes > 0 else nn.Identity(),
        )
        self._check_head(num_classes, global_pool)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official model_init: kaiming-normal convs with zero bias; BN weight 1 / bias 0; pos_embed zeros
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def _check_head(num_classes: int, global_pool: str) -> None:
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        if not global_pool and num_classes > 0:
            raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")

    def set_graph_mode(self, mode: str, chunk_elements: int | None = None) -> None:
        """Switch every Grapher between the 'fast' and the 'dense' graph path (weights are unaffected)."""
        if mode not in ('fast', 'dense'):
            raise ValueError(f"graph_mode must be 'fast' or 'dense', got {mode!r}")
        for m in self.modules():
            if isinstance(m, DynamicGraphConv):
                m.graph_mode = mode
                if chunk_elements is not None:
                    m.chunk_elements = chunk_elements

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stem|^pos_embed', blocks=r'^backbone\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.prediction[4]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final 1x1 conv (``prediction.4``); 0 gives the 1024-d pre-logits. ``global_pool=''`` (with
        ``num_classes=0``) makes ``forward`` return the unpooled last-stage map."""
        global_pool = self.global_pool if global_pool is None else global_pool
        self._check_head(num_classes, global_pool)
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.prediction[4] = nn.Conv2d(self.head_hidden_size, num_classes, 1) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pos = self.pos_embed
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode='bicubic', align_corners=False)
        return x + pos

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem + position embedding and the four stages: the (B, C_last, H/32, W/32) map."""
        x = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.backbone, x)
        return self.backbone(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pool -> conv 1x1 -> BN -> GELU -> dropout (pre-logits, 1024-d) -> conv 1x1 classifier."""
        if not self.global_pool:
            return x
        x = self.prediction[:4](F.adaptive_avg_pool2d(x, 1))
        if not pre_logits:
            x = self.prediction[4](x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the outputs of stages 1-4 (strides 4, 8, 16, 32): what the official detection
        code feeds to the FPN. ``norm`` is accepted for timm's interface (there is no final norm)."""
        if output_fmt != 'NCHW':
            raise ValueError('output_fmt must be NCHW')
        take_indices, max_index = feature_take_indices(4, indices)
        last = self.stage_ends[max_index] if stop_early else len(self.backbone) - 1
        ends = {end: i for i, end in enumerate(self.stage_ends)}
        intermediates = []
        x = self._embed(x)
        for n, module in enumerate(self.backbone[: last + 1]):
            x = module(x)
            if n in ends and ends[n] in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the modules after the last stage in ``indices`` (and the head)."""
        take_indices, max_index = feature_take_indices(4, indices)
        self.backbone = self.backbone[: self.stage_ends[max_index] + 1]
        self.stage_ends = self.stage_ends[: max_index + 1]
        if prune_head:
            self.prediction = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity())
            self.num_classes = 0
            self.global_pool = ''
        return take_indices


def _create(variant: str, pretrained: bool = False, **kwargs) -> PyramidViG:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        PyramidViG,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> dict:
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'mean': VIG_MEAN,
        'std': VIG_STD,
        'first_conv': 'stem.convs.0',
        'classifier': 'prediction.4',
        'license': 'unknown',
        'paper_ids': 'arXiv:2206.00272',
        'origin_url': 'https://github.com/huawei-noah/Efficient-AI-Backbones',
        **kwargs,
    }


_PVG_PAPER = dict(paper_ids='arXiv:2308.00574', origin_url='https://arxiv.org/abs/2308.00574')

default_cfgs = generate_default_cfgs(
    {
        'pvig_ti.in1k': _cfg(),
        'pvig_s.in1k': _cfg(),
        'pvig_m.in1k': _cfg(),
        'pvig_b.in1k': _cfg(crop_pct=0.95),
        'pvig_test.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
        'pvg_ti.untrained': _cfg(**_PVG_PAPER),
        'pvg_s.untrained': _cfg(**_PVG_PAPER),
        'pvg_m.untrained': _cfg(**_PVG_PAPER),
        'pvg_b.untrained': _cfg(crop_pct=0.95, **_PVG_PAPER),
        'pvg_test.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), **_PVG_PAPER),
    }
)

#: Depths and widths of the official Pyramid ViG variants (PVG uses the same skeleton).
ARCHS = {
    'ti': dict(depths=(2, 2, 6, 2), channels=(48, 96, 240, 384)),
    's': dict(depths=(2, 2, 6, 2), channels=(80, 160, 400, 640)),
    'm': dict(depths=(2, 2, 16, 2), channels=(96, 192, 384, 768)),
    'b': dict(depths=(2, 2, 18, 2), channels=(128, 256, 512, 1024)),
    'test': dict(depths=(1, 1, 2, 1), channels=(16, 32, 48, 64), k=4, img_size=64, emb_dims=64),
}

#: PVG's switches (README, Fidelity notes): PSGC graph, MaxE aggregation, GraphLU activation.
PVG_ARGS = dict(graph='psgc', aggregation='maxe', block_act='graphlu')


@register_model
def pvig_ti(pretrained: bool = False, **kwargs) -> PyramidViG:
    """Pyramid ViG-Ti (official ``pvig_ti_224_gelu``): 10.71 M trainable params, top-1 78.5."""
    return _create('pvig_ti', pretrained, **dict(ARCHS['ti'], **kwargs))


@register_model
def pvig_s(pretrained: bool = False, **kwargs) -> PyramidViG:
    """Pyramid ViG-S (official ``pvig_s_224_gelu``): 27.25 M trainable params, top-1 82.1."""
    return _create('pvig_s', pretrained, **dict(ARCHS['s'], **kwargs))


@register_model
def pvig_m(pretrained: bool = False, **kwargs) -> PyramidViG:
    """Pyramid ViG-M (official ``pvig_m_224_gelu``): 49.53 M trainable params, top-1 83.1."""
    return _create('pvig_m', pretrained, **dict(ARCHS['m'], **kwargs))


@register_model
def pvig_b(pretrained: bool = False, **kwargs) -> PyramidViG:
    """Pyramid ViG-B (official ``pvig_b_224_gelu``): 92.98 M trainable params, top-1 83.7."""
    return _create('pvig_b', pretrained, **dict(ARCHS['b'], **kwargs))


@register_model
def pvig_test(pretrained: bool = False, **kwargs) -> PyramidViG:
    """Tiny Pyramid ViG for tests (k = 4, designed for 64 x 64 inputs)."""
    return _create('pvig_test', pretrained, **dict(ARCHS['test'], **kwargs))


@register_model
def pvg_ti(pretrained: bool = False, **kwargs) -> PyramidViG:
    """PVG-Ti (our design: Pyramid ViG-Ti skeleton with PSGC, MaxE, GraphLU; not in the paper's abstract)."""
    return _create('pvg_ti', pretrained, **dict(ARCHS['ti'], **PVG_ARGS, **kwargs))


@register_model
def pvg_s(pretrained: bool = False, **kwargs) -> PyramidViG:
    """PVG-S: Pyramid ViG-S skeleton with PSGC, MaxE, GraphLU (paper: about 22.2 M params, top-1 83.0)."""
    return _create('pvg_s', pretrained, **dict(ARCHS['s'], **PVG_ARGS, **kwargs))


@register_model
def pvg_m(pretrained: bool = False, **kwargs) -> PyramidViG:
    """PVG-M (our design: Pyramid ViG-M skeleton with PSGC, MaxE, GraphLU; not in the paper's abstract)."""
    return _create('pvg_m', pretrained, **dict(ARCHS['m'], **PVG_ARGS, **kwargs))


@register_model
def pvg_b(pretrained: bool = False, **kwargs) -> PyramidViG:
    """PVG-B: Pyramid ViG-B skeleton with PSGC, MaxE, GraphLU (paper: top-1 84.2; params not given)."""
    return _create('pvg_b', pretrained, **dict(ARCHS['b'], **PVG_ARGS, **kwargs))


@register_model
def pvg_test(pretrained: bool = False, **kwargs) -> PyramidViG:
    """Tiny PVG for tests (k = 4, designed for 64 x 64 inputs)."""
    return _create('pvg_test', pretrained, **dict(ARCHS['test'], **PVG_ARGS, **kwargs))
