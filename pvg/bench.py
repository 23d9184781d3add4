"""Throughput and peak memory of Pyramid ViG / PVG with the fast and the dense (official-style) graph path, in one
run: inference and one training step (forward, backward, AdamW step), plus the graph construction alone.

    python -m pvg.bench [--models [pvig_s,pvg_s]] [--device auto|cpu|cuda] [--batch_size 8] [--img_size 224]
                        [--amp [off,bf16,fp16]] [--channels_last [off,on]] [--modes [infer,train,graph]] [--iters 3]

Every model runs with ``graph_mode='fast'`` and ``'dense'`` on the same weights and input, so the rows compare like
with like; the ``speedup`` column is dense time / fast time. ``graph`` times :func:`pvg.graph.knn_graph` alone for
a stage-1 map without key reduction (N = M = (img_size / 4)^2, C = the model's first width). Defaults: CPU runs fp32
without channels-last; CUDA runs AMP (fp16) with channels-last, the setting of the acceptance criterion (batch 256).
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process's max resident set size on CPU (which
only grows: read the CPU column as an upper bound).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F

import pvg.model  # noqa: F401  (registers the models with timm)
from pvg.graph import knn_graph
from shared.benchmark import peak_memory_mb, seconds_per_call
from shared.config import AmpMode, DeviceName, config_from_dict, config_to_dict, script_parser
from shared.training import resolve_device

__all__ = ['BenchConfig', 'bench_graph', 'bench_model', 'main', 'parse_args']

_DTYPES = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def _autocast(device: torch.device, amp: str):
    dtype = _DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def bench_model(
    name: str,
    device: torch.device,
    batch_size: int,
    img_size: int,
    amp: str = 'off',
    channels_last: bool = False,
    mode: str = 'infer',
    iters: int = 3,
) -> list[dict[str, Any]]:
    """Images/s and peak memory of ``name`` with the fast and the dense graph path (same weights, same input)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000).to(device)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6) if mode == 'train' else None
    target = torch.randint(0, 1000, (batch_size,), device=device)
    model.train(mode == 'train')

    def step() -> None:
        if optimizer is None:
            with torch.no_grad(), _autocast(device, amp):
                model(x)
            return
        with _autocast(device, amp):
            loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows = []
    for graph in ('fast', 'dense'):
        model.set_graph_mode(graph)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        seconds = seconds_per_call(step, device, warmup=1, iters=iters)
        rows.append(
            dict(
                model=name, mode=mode, graph=graph, batch=batch_size, img=img_size, amp=amp,
                channels_last=channels_last, img_s=batch_size / seconds, peak_mb=peak_memory_mb(device),
            )
        )  # fmt: skip
    rows[0]['speedup'] = rows[0]['img_s'] / rows[1]['img_s']
    return rows


def bench_graph(
    device: torch.device, batch_size: int, side: int, channels: int, k: int = 9, iters: int = 3
) -> list[dict[str, Any]]:
    """Seconds of one kNN graph (no key reduction) on a side x side map, fast vs dense."""
    gen = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(batch_size, channels, side * side, generator=gen).to(device)
    rows = []
    for graph in ('fast', 'dense'):
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds = seconds_per_call(lambda g=graph: knn_graph(x, x, k, 1, None, mode=g), device, 1, iters)
        except torch.OutOfMemoryError:
            seconds = float('nan')
        rows.append(
            dict(model=f'knn {side}x{side}', mode='graph', graph=graph, batch=batch_size, img=side, amp='off',
                 channels_last=False, img_s=batch_size / seconds, peak_mb=peak_memory_mb(device))
        )  # fmt: skip
    rows[0]['speedup'] = rows[0]['img_s'] / rows[1]['img_s']
    return rows


def _table(rows: Sequence[dict[str, Any]]) -> str:
    header = 'model        mode   graph  batch  img  amp   cl     img/s    peak MiB  speedup'
    lines = [header, '-' * len(header)]
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if 'speedup' in r else ''
        lines.append(
            f"{r['model']:<12} {r['mode']:<6} {r['graph']:<6} {r['batch']:>5}  {r['img']:>3}  {r['amp']:<5} "
            f"{'on' if r['channels_last'] else 'off':<4} {r['img_s']:>8.1f}  {r['peak_mb']:>9.0f}  {speedup}"
        )
    return '\n'.join(lines)


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``; lists as ``--models [pvig_s,pvg_s]`` or one value ``--models pvig_s``).

    ``None`` picks by device (the CUDA default, else the CPU one).
    """

    models: list[str] = field(default_factory=lambda: ['pvig_s', 'pvg_s'])
    device: DeviceName = field(default='auto', metadata={'help': 'auto: cuda when available'})
    batch_size: int | None = field(default=None, metadata={'help': 'default: 256 on CUDA, 8 on CPU'})
    img_size: int = 224
    amp: list[AmpMode] | None = field(default=None, metadata={'help': 'default: fp16 CUDA, off CPU'})
    channels_last: list[Literal['off', 'on']] | None = field(
        default=None, metadata={'help': 'off and/or on (default: on CUDA, off CPU)'}
    )
    modes: list[Literal['infer', 'train', 'graph']] = field(
        default_factory=lambda: ['infer', 'train', 'graph'], metadata={'help': 'any of infer, train, graph'}
    )
    iters: int = 3
    threads: int | None = field(default=None, metadata={'help': 'torch intra-op threads on CPU'})


parse_args = script_parser(BenchConfig, __doc__.split('\n\n')[0].replace('\n', ' '))


def main(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Time every model, mode, amp and layout (fast and dense graph path); print and return the table rows."""
    config_from_dict(BenchConfig, config_to_dict(cfg))  # a config built in Python gets the command line's checks
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = device.type == 'cuda'
    batch = cfg.batch_size or (256 if cuda else 8)
    amps = cfg.amp or (['fp16'] if cuda else ['off'])
    layouts = cfg.channels_last or (['on'] if cuda else ['off'])
    rows: list[dict[str, Any]] = []
    for name, mode, amp, cl in itertools.product(cfg.models, cfg.modes, amps, layouts):
        if mode != 'graph':
            rows += bench_model(name, device, batch, cfg.img_size, amp, cl == 'on', mode, cfg.iters)
    if 'graph' in cfg.modes:
        width = timm.create_model(cfg.models[0]).stem.convs[6].out_channels
        rows += bench_graph(device, batch, cfg.img_size // 4, width, iters=cfg.iters)
    print(_table(rows))
    return rows


if __name__ == '__main__':
    main(parse_args())
