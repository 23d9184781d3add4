"""Throughput and peak memory of the EMO models: inference and one training step (forward, backward, AdamW step).

    python emo/bench.py [--models [emo_1m,emo_5m]] [--device auto|cpu|cuda] [--batch_size 32] [--amp [off,bf16,fp16]]
                        [--channels_last [off,on]] [--compile [off,on]] [--fuse_bn [off,on]] [--modes [infer,train]]
                        [--task classification|ssdlite|deeplabv3|pspnet] [-c settings.yaml]

``--task`` times the whole dense model with the EMO backbone instead of the classifier: SSDLite at 320 x 320 (80
classes; a training step is the SSD loss on one box per image) or DeepLabv3 / PSPNet with the auxiliary head at
512 x 512 (150 classes; the decode + 0.4 x auxiliary cross entropy on random labels).

Every combination of the --amp / --channels_last / --compile values is run for every model and mode, and printed as
a table. Defaults: CPU runs fp32 eager only, each configuration in a fresh process (--isolate); CUDA runs
fp32/bf16/fp16 x channels-last off/on x compile off/on x (inference) BatchNorm folding off/on in one process.
With ``--official PATH`` (a checkout of https://github.com/zhangzjn/EMO, never part of this project) it instead
compares this package's models with the official code, side by side in one process; see :func:`compare_official`:

    python -m emo.bench --official PATH [--models [emo_1m,emo_5m]] [--batch_sizes [1,16]] [--channels_last [off,on]]
                        [--compile [off,on]] [--amp [off,bf16]] [--modes [infer,train]] [--rounds 7]

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and, on CPU, the peak resident-set growth from just
after model creation over the warm-up and timed steps, sampled every 2 ms (an approximation: the allocator's
caching and the sampling both affect it).
"""

import concurrent.futures
import copy
import functools
import importlib
import itertools
import multiprocessing
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import psutil
import timm
import torch
import torch.nn.functional as F

from emo.model import fuse_batchnorm  # importing emo.model registers the EMO models with timm
from shared.benchmark import seconds_per_call
from shared.config import AmpMode, DeviceName, config_from_dict, config_to_dict, script_parser
from shared.training import resolve_device

AMP_DTYPES = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
OnOff = Literal['off', 'on']
TaskName = Literal['classification', 'ssdlite', 'deeplabv3', 'pspnet']
TASKS = get_args(TaskName)
DEFAULT_IMG_SIZE = {'classification': 224, 'ssdlite': 320, 'deeplabv3': 512, 'pspnet': 512}


class PeakRSS:
    """Context manager sampling this process's resident set size in a thread; ``peak_delta`` is in bytes."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak_delta = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_delta = max(self.peak_delta, self.process.memory_info().rss - self.start)
            time.sleep(self.interval_s)

    def __enter__(self) -> 'PeakRSS':
        self.start = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_one(
    model_name: str,
    device: torch.device,
    mode: str,
    batch_size: int,
    img_size: int,
    amp: str,
    channels_last: bool,
    compile_model: bool,
    steps: int,
    warmup: int,
    fuse_bn: bool = False,
    task: str = 'classification',
) -> dict[str, float]:
    """Time ``steps`` iterations after ``warmup``; return img/s, ms/step and peak memory in MiB."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model, x, loss_fn = _task_model(task, model_name, batch_size, img_size, device, memory_format)
    if fuse_bn:  # inference only: fold the BatchNorms into the convs (emo.model.fuse_batchnorm)
        fuse_batchnorm(model.eval())
    step = _make_step(model, mode, x, None, AMP_DTYPES[amp], device, compile_model, loss_fn)

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        memory = nullcontext()
    else:
        memory = PeakRSS()
    with memory:  # the first steps allocate the activations and optimizer state: they count for the peak
        seconds = seconds_per_call(step, device, warmup=warmup, iters=steps)
    peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else memory.peak_delta
    return dict(img_s=batch_size / seconds, ms_step=1000 * seconds, peak_mib=peak / 2**20)


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def bench_isolated(threads: int | None, **kwargs) -> dict[str, float]:
    """:func:`bench_one` in a fresh (spawned) process, so that no configuration inherits another's cached memory."""
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=context, initializer=_set_threads, initargs=(threads,)
    ) as pool:
        return pool.submit(bench_one, **kwargs).result()


def _add_row(rows: list[dict], row: dict, label: str, measure: Callable[[], str]) -> None:
    """Add ``row`` to ``rows`` once ``measure()`` has put its numbers in it, and print ``label`` with the columns
    ``measure`` returns; a failing configuration is reported in ``row['error']`` and the others go on."""
    try:
        result = measure()
    except Exception as e:  # report the failing configuration and go on with the others
        row['error'] = f'{type(e).__name__}: {e}'
        result = f"error: {row['error'][:80]}"
    rows.append(row)
    print(f'{label} {result}', flush=True)


def _bench_row(row: dict, config: dict[str, Any], isolate: bool, threads: int | None) -> str:
    """Time one configuration (in a fresh process with ``isolate``) into ``row``; returns its printed columns."""
    row.update(bench_isolated(threads, **config) if isolate else bench_one(**config))
    return f"{row['img_s']:>9.1f} {row['ms_step']:>9.1f} {row['peak_mib']:>9.0f}"


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``; lists as ``--models [emo_1m,emo_5m]`` or one value ``--models emo_1m``).

    ``None`` picks by device (the CUDA default, else the CPU one).
    """

    models: list[str] = field(default_factory=lambda: ['emo_1m', 'emo_2m', 'emo_5m', 'emo_6m'])
    device: DeviceName = field(default='auto', metadata={'help': 'auto: cuda when available'})
    modes: list[Literal['infer', 'train']] = field(
        default_factory=lambda: ['infer', 'train'], metadata={'help': 'infer and/or train'}
    )
    batch_size: int | None = field(default=None, metadata={'help': 'default: 256 on CUDA, 16 on CPU'})
    img_size: int | None = field(default=None, metadata={'help': 'default: 224, 320 (ssdlite), 512 (segmentation)'})
    task: TaskName = field(default='classification', metadata={'help': 'model around the EMO backbone'})
    amp: list[AmpMode] | None = field(default=None, metadata={'help': 'default: [off,bf16,fp16] on CUDA, off on CPU'})
    channels_last: list[OnOff] | None = field(
        default=None, metadata={'help': 'off and/or on (default: [off,on] CUDA, off CPU)'}
    )
    compile: list[OnOff] | None = field(
        default=None, metadata={'help': 'off and/or on (default: [off,on] CUDA, off CPU)'}
    )
    fuse_bn: list[OnOff] | None = field(
        default=None,
        metadata={'help': 'inference with the BatchNorms folded into the convs (default: [off,on], CUDA; off, CPU)'},
    )
    iters: int | None = field(default=None, metadata={'help': 'timed steps (default: 50 CUDA, 3 CPU)'})
    warmup: int | None = field(default=None, metadata={'help': 'untimed steps (default: 10 CUDA, 1 CPU)'})
    threads: int | None = field(default=None, metadata={'help': 'torch.set_num_threads (CPU)'})
    isolate: bool | None = field(
        default=None,
        metadata={
            'help': 'run each configuration in a fresh process (default: on for CPU, where the peak-RSS measure '
            'needs it, off for CUDA)'
        },
    )
    official: str | None = field(
        default=None,
        metadata={
            'help': 'PATH: compare with the official code in this checkout of github.com/zhangzjn/EMO '
            '(see compare_official)'
        },
    )
    batch_sizes: list[int] | None = field(
        default=None, metadata={'help': '--official: default [1,16] (CPU), [1,16,256] (CUDA)'}
    )
    rounds: int = field(default=7, metadata={'help': '--official: interleaved timing rounds (median)'})


parse_args = script_parser(BenchConfig, 'EMO throughput / memory benchmark')


def _check(cfg: BenchConfig) -> None:
    """A config built in Python gets the command line's type checks (ConfigError, a ValueError, names the key)."""
    config_from_dict(BenchConfig, config_to_dict(cfg))


def main(cfg: BenchConfig) -> list[dict]:
    """Time every configuration (or, with ``official``, :func:`compare_official`); returns the table rows."""
    _check(cfg)
    device = resolve_device(cfg.device)
    cuda = device.type == 'cuda'
    _set_threads(cfg.threads)
    if cfg.img_size is None:
        cfg = replace(cfg, img_size=DEFAULT_IMG_SIZE[cfg.task])
    if cfg.official is not None:
        if cfg.models == BenchConfig().models:
            cfg = replace(cfg, models=['emo_1m', 'emo_5m'])
        return compare_official(cfg)
    isolate = cfg.isolate if cfg.isolate is not None else not cuda
    batch_size = cfg.batch_size if cfg.batch_size is not None else (256 if cuda else 16)
    amps = cfg.amp or (['off', 'bf16', 'fp16'] if cuda else ['off'])
    cls = cfg.channels_last or (['off', 'on'] if cuda else ['off'])
    compiles = cfg.compile or (['off', 'on'] if cuda else ['off'])
    fuses = cfg.fuse_bn or (['off', 'on'] if cuda else ['off'])
    steps = cfg.iters if cfg.iters is not None else (50 if cuda else 3)
    warmup = cfg.warmup if cfg.warmup is not None else (10 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f'CPU, {torch.get_num_threads()} threads'
    print(
        f'torch {torch.__version__}, timm {timm.__version__}, {hardware}; batch {batch_size}, '
        f'{cfg.img_size}px, {steps} timed steps after {warmup} warm-up'
        f'{", one process per configuration" if isolate else ""}'
    )

    header = (
        f"{'model':<8} {'mode':<5} {'amp':<4} {'ch-last':<7} {'compile':<7} {'fuse-bn':<7} {'img/s':>9} "
        f"{'ms/step':>9} {'peak MiB':>9}"
    )
    print(header)
    print('-' * len(header))
    rows = []
    for name, mode, amp, cl, comp, fuse in itertools.product(cfg.models, cfg.modes, amps, cls, compiles, fuses):
        if mode == 'train' and fuse == 'on':
            continue  # folding running statistics is for inference only
        row = dict(model=name, mode=mode, amp=amp, channels_last=cl, compile=comp, fuse_bn=fuse)
        config = dict(
            model_name=name,
            device=device,
            mode=mode,
            batch_size=batch_size,
            img_size=cfg.img_size,
            amp=amp,
            channels_last=cl == 'on',
            compile_model=comp == 'on',
            steps=steps,
            warmup=warmup,
            fuse_bn=fuse == 'on',
            task=cfg.task,
        )
        measure = functools.partial(_bench_row, row, config, isolate, cfg.threads)
        _add_row(rows, row, f'{name:<8} {mode:<5} {amp:<4} {cl:<7} {comp:<7} {fuse:<7}', measure)
        if cuda:
            torch.cuda.empty_cache()
    return rows


# ---- side by side with the official code ------------------------------------------------------------------------

# timm modules the official code (written for timm 0.6) imports under names that timm 1.x moved; aliased to the
# very same modules under their new names (nothing is reimplemented or stubbed).
_TIMM_MOVED = {
    'timm.models.layers.activations': 'timm.layers.activations',
    'timm.models.layers.weight_init': 'timm.layers.weight_init',
    'timm.models.efficientnet_blocks': 'timm.models._efficientnet_blocks',
    'timm.models.efficientnet_builder': 'timm.models._efficientnet_builder',
}


def load_official(path: str | Path):
    """Import ``model/emo.py`` of an official checkout (it needs ``einops`` and ``cv2``, imported by its modules)."""
    path = Path(path).resolve()
    if not (path / 'model' / 'emo.py').is_file():
        raise SystemExit(f'--official {path}: no model/emo.py (expected a checkout of github.com/zhangzjn/EMO)')
    for old, new in _TIMM_MOVED.items():
        if old not in sys.modules:
            try:
                importlib.import_module(old)
            except ImportError:
                sys.modules[old] = importlib.import_module(new)
    sys.path.insert(0, str(path))  # the official code imports itself as the top-level packages `model` and `util`
    try:
        return importlib.import_module('model.emo')
    except ImportError as e:
        raise SystemExit(f'the official code needs a package this environment lacks: {e}') from e


class _Logits(torch.nn.Module):
    """The official EMO returns ``{'out': logits, 'out_kd': logits}``; this returns the logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)['out']


def _task_model(task, model_name, batch_size, img_size, device, memory_format):
    """(model, input, loss function of the model) of ``task`` with the EMO backbone ``model_name``."""
    shape = (batch_size, 3, img_size, img_size)
    if task == 'classification':
        model = timm.create_model(model_name).to(device).to(memory_format=memory_format)
        target = torch.randint(0, model.num_classes, (batch_size,), device=device)
        x = torch.randn(shape, device=device).to(memory_format=memory_format)
        return model, x, lambda out_fn: F.cross_entropy(out_fn(x), target)
    if task == 'ssdlite':
        from emo.ssdlite import build_ssdlite

        model = build_ssdlite(model_name, num_classes=80).to(device)
        images = list(torch.rand(shape, device=device))
        box = torch.tensor([[0.2, 0.3, 0.7, 0.8]], device=device) * img_size
        targets = [{'boxes': box, 'labels': torch.tensor([1], device=device)}] * batch_size
        return model, images, lambda out_fn: sum(out_fn(images, targets).values())
    if task in ('deeplabv3', 'pspnet'):
        from emo.segmentation import build_segmentor, segmentation_loss

        model = build_segmentor(model_name, task, num_classes=150).to(device).to(memory_format=memory_format)
        x = torch.rand(shape, device=device).to(memory_format=memory_format)
        labels = torch.randint(0, 150, (batch_size, img_size, img_size), device=device)

        def seg_loss(out_fn):
            decode, aux = out_fn(x)
            return segmentation_loss(decode, labels) + 0.4 * segmentation_loss(aux, labels)

        return model, x, seg_loss
    raise ValueError(f'unknown task {task!r}, expected one of {TASKS}')


def _make_step(model, mode, x, target, dtype, device, compile_model, loss_fn=None):
    """One timed step: an inference forward, or forward + backward + AdamW step (GradScaler for fp16).

    ``loss_fn(runner)`` computes the training loss of a dense model; None: cross entropy of ``runner(x)`` and
    ``target`` (classification)."""
    runner = torch.compile(model) if compile_model else model
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    if mode == 'infer':
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast:
                runner(x)

        return step
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(runner) if loss_fn is not None else F.cross_entropy(runner(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _compare_row(
    row: dict,
    models: dict[str, torch.nn.Module],
    x: torch.Tensor,
    target: torch.Tensor,
    rounds: int,
    device: torch.device,
    steps: int,
    warmup: int,
) -> str:
    """Time fresh copies of ``models`` (official, ours) in ``row``'s configuration into ``row``: ``warmup``
    untimed steps each, then ``rounds`` rounds of ``steps`` steps, alternating which goes first; returns the
    printed columns."""
    memory_format = torch.channels_last if row['channels_last'] == 'on' else torch.contiguous_format
    fns = {}
    for key, model in models.items():
        model = copy.deepcopy(model).to(memory_format=memory_format)
        fns[key] = _make_step(model, row['mode'], x, target, AMP_DTYPES[row['amp']], device, row['compile'] == 'on')
        for _ in range(warmup):
            fns[key]()
    times = {'official': [], 'ours': []}
    for r in range(rounds):
        for key in ('official', 'ours') if r % 2 == 0 else ('ours', 'official'):
            times[key].append(seconds_per_call(fns[key], device, warmup=0, iters=steps))
    for key in times:
        row[f'{key}_img_s'] = row['batch_size'] / statistics.median(times[key])
    row['ratio'] = row['ours_img_s'] / row['official_img_s']
    return f"{row['official_img_s']:>14.1f} {row['ours_img_s']:>10.1f} {row['ratio']:>5.2f}x"


def compare_official(cfg: BenchConfig) -> list[dict]:
    """Official vs ours, same weights, every configuration timed interleaved (A B, B A, ...) in this process.

    For each model both networks are built, the official weights (its random init) are loaded into ours with
    ``strict=True`` and the eval-mode logits compared (a mismatch is an error). Each configuration then gets
    fresh copies of both, ``warmup`` untimed steps each, and ``rounds`` rounds of ``steps`` steps each, alternating
    which model goes first; the reported time is the median round. ratio = our img/s / official img/s.
    """
    _check(cfg)
    if cfg.img_size is None:
        cfg = replace(cfg, img_size=DEFAULT_IMG_SIZE[cfg.task])
    official = load_official(cfg.official)
    device = resolve_device(cfg.device)
    cuda = device.type == 'cuda'
    batch_sizes = cfg.batch_sizes or ([1, 16, 256] if cuda else [1, 16])
    amps = cfg.amp or (['off', 'bf16', 'fp16'] if cuda else ['off'])
    cls = cfg.channels_last or ['off', 'on']
    compiles = cfg.compile or (['off', 'on'] if cuda else ['off'])
    steps = cfg.iters if cfg.iters is not None else (20 if cuda else 2)
    warmup = cfg.warmup if cfg.warmup is not None else (5 if cuda else 1)
    hardware = torch.cuda.get_device_name(device) if cuda else f'CPU, {torch.get_num_threads()} threads'
    print(
        f'torch {torch.__version__}, timm {timm.__version__}, {hardware}; {cfg.img_size}px; median of {cfg.rounds} '
        f'interleaved rounds of {steps} steps after {warmup} warm-up; official: {cfg.official}'
    )
    header = (
        f"{'model':<7} {'mode':<5} {'batch':>5} {'amp':<4} {'ch-last':<7} {'compile':<7} "
        f"{'official img/s':>14} {'ours img/s':>10} {'ratio':>6}"
    )
    rows = []
    for name in cfg.models:
        torch.manual_seed(0)
        ref = _Logits(getattr(official, name.upper())()).to(device).eval()
        ours = timm.create_model(name).to(device).eval()
        ours.load_state_dict(ref.model.state_dict(), strict=True)
        with torch.inference_mode():
            x = torch.randn(2, 3, cfg.img_size, cfg.img_size, device=device)
            diff = (ref(x) - ours(x)).abs().max().item()
        print(f'{name}: same weights, eval logits max |official - ours| = {diff:.2e}')
        if diff > 1e-3:
            raise SystemExit(f'{name}: outputs differ from the official model ({diff:.2e})')
        print(header)
        print('-' * len(header))
        for mode, bs, amp, cl, comp in itertools.product(cfg.modes, batch_sizes, amps, cls, compiles):
            row = dict(model=name, mode=mode, batch_size=bs, amp=amp, channels_last=cl, compile=comp)
            memory_format = torch.channels_last if cl == 'on' else torch.contiguous_format
            x = torch.randn(bs, 3, cfg.img_size, cfg.img_size, device=device).to(memory_format=memory_format)
            target = torch.randint(0, 1000, (bs,), device=device)
            models = {'official': ref, 'ours': ours}
            measure = functools.partial(_compare_row, row, models, x, target, cfg.rounds, device, steps, warmup)
            _add_row(rows, row, f'{name:<7} {mode:<5} {bs:>5} {amp:<4} {cl:<7} {comp:<7}', measure)
            if cuda:
                torch.cuda.empty_cache()
    return rows


if __name__ == '__main__':
    main(parse_args())
