"""Throughput and peak memory of the EMO models: inference and one training step (forward, backward, AdamW step).

    python emo/bench.py [--models emo_1m emo_5m] [--device cpu|cuda] [--batch-size 32] [--amp off bf16 fp16]
                        [--channels-last off on] [--compile off on] [--fuse-bn off on] [--modes infer train]

Every combination of the --amp / --channels-last / --compile values is run for every model and mode, and printed as
a table. Defaults: CPU runs fp32 eager only, each configuration in a fresh process (--isolate); CUDA runs
fp32/bf16/fp16 x channels-last off/on x compile off/on x (inference) BatchNorm folding off/on in one process.
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and, on CPU, the peak resident-set growth from just
after model creation over the warm-up and timed steps, sampled every 2 ms (an approximation: the allocator's
caching and the sampling both affect it).
"""

import argparse
import concurrent.futures
import itertools
import multiprocessing
import threading
import time
from contextlib import nullcontext

import psutil
import timm
import torch
import torch.nn.functional as F

from emo.model import fuse_batchnorm  # importing emo.model registers the EMO models with timm
from shared.benchmark import seconds_per_call

AMP_DTYPES = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


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
) -> dict[str, float]:
    """Time ``steps`` iterations after ``warmup``; return img/s, ms/step and peak memory in MiB."""
    torch.manual_seed(0)
    model = timm.create_model(model_name).to(device)
    if fuse_bn:  # inference only: fold the BatchNorms into the convs (emo.model.fuse_batchnorm)
        fuse_batchnorm(model.eval())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device).to(memory_format=memory_format)
    target = torch.randint(0, model.num_classes, (batch_size,), device=device)
    dtype = AMP_DTYPES[amp]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    runner = torch.compile(model) if compile_model else model

    if mode == 'infer':
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast:
                runner(x)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(runner(x), target)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='EMO throughput / memory benchmark')
    parser.add_argument('--models', nargs='+', default=['emo_1m', 'emo_2m', 'emo_5m', 'emo_6m'])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    parser.add_argument('--batch-size', type=int, default=None, help='default: 256 on CUDA, 16 on CPU')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument(
        '--amp', nargs='+', default=None, choices=list(AMP_DTYPES), help='default: off bf16 fp16 on CUDA, off on CPU'
    )
    parser.add_argument(
        '--channels-last', nargs='+', default=None, choices=['off', 'on'], help='default: off on (CUDA), off (CPU)'
    )
    parser.add_argument(
        '--compile', nargs='+', default=None, choices=['off', 'on'], help='default: off on (CUDA), off (CPU)'
    )
    parser.add_argument(
        '--fuse-bn',
        nargs='+',
        default=None,
        choices=['off', 'on'],
        help='inference with the BatchNorms folded into the convs (default: off on, CUDA; off, CPU)',
    )
    parser.add_argument('--steps', type=int, default=None, help='timed steps (default: 50 CUDA, 3 CPU)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed steps (default: 10 CUDA, 1 CPU)')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    parser.add_argument(
        '--isolate',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='run each configuration in a fresh process (default: on for CPU, where the peak-RSS '
        'measure needs it, off for CUDA)',
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda requested but CUDA is not available')
    cuda = args.device == 'cuda'
    device = torch.device(args.device)
    _set_threads(args.threads)
    isolate = args.isolate if args.isolate is not None else not cuda
    batch_size = args.batch_size if args.batch_size is not None else (256 if cuda else 16)
    amps = args.amp or (['off', 'bf16', 'fp16'] if cuda else ['off'])
    cls = args.channels_last or (['off', 'on'] if cuda else ['off'])
    compiles = args.compile or (['off', 'on'] if cuda else ['off'])
    fuses = args.fuse_bn or (['off', 'on'] if cuda else ['off'])
    steps = args.steps if args.steps is not None else (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f'CPU, {torch.get_num_threads()} threads'
    print(
        f'torch {torch.__version__}, timm {timm.__version__}, {hardware}; batch {batch_size}, '
        f'{args.img_size}px, {steps} timed steps after {warmup} warm-up'
        f'{", one process per configuration" if isolate else ""}'
    )

    header = (
        f"{'model':<8} {'mode':<5} {'amp':<4} {'ch-last':<7} {'compile':<7} {'fuse-bn':<7} {'img/s':>9} "
        f"{'ms/step':>9} {'peak MiB':>9}"
    )
    print(header)
    print('-' * len(header))
    rows = []
    for name, mode, amp, cl, comp, fuse in itertools.product(args.models, args.modes, amps, cls, compiles, fuses):
        if mode == 'train' and fuse == 'on':
            continue  # folding running statistics is for inference only
        row = dict(model=name, mode=mode, amp=amp, channels_last=cl, compile=comp, fuse_bn=fuse)
        config = dict(
            model_name=name,
            device=device,
            mode=mode,
            batch_size=batch_size,
            img_size=args.img_size,
            amp=amp,
            channels_last=cl == 'on',
            compile_model=comp == 'on',
            steps=steps,
            warmup=warmup,
            fuse_bn=fuse == 'on',
        )
        try:
            row.update(bench_isolated(args.threads, **config) if isolate else bench_one(**config))
            result = f"{row['img_s']:>9.1f} {row['ms_step']:>9.1f} {row['peak_mib']:>9.0f}"
        except Exception as e:  # report the failing configuration and go on with the others
            row['error'] = f'{type(e).__name__}: {e}'
            result = f"error: {row['error'][:80]}"
        rows.append(row)
        print(f'{name:<8} {mode:<5} {amp:<4} {cl:<7} {comp:<7} {fuse:<7} {result}', flush=True)
        if cuda:
            torch.cuda.empty_cache()
    return rows


if __name__ == '__main__':
    main()
