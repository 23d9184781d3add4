"""The benchmark: CPU rows with the teacher's real detection; the CUDA path with bf16 autocast."""

import pytest
import torch

from mixteacher.bench import BenchConfig, run

STEPS = ("supervised", "mixteacher labeled only", "burn-in", "mixteacher")


@pytest.mark.gpu
def test_cuda_mixteacher_step_and_inference():
    result = run(BenchConfig(detector="tiny", iters=1, warmup=1, amp="bf16", threads=None), torch.device("cuda"))
    assert all(result[f"{name} s"] > 0 for name in STEPS)
    assert result["teacher inference mixed scale images/s"] > 0


def test_bench_cpu_rows():
    result = run(BenchConfig(detector="tiny", iters=1, warmup=0, threads=None), torch.device("cpu"))
    for name in STEPS:
        assert result[f"{name} s"] > 0 and result[f"{name} cpu s"] > 0
    assert result["pseudo_boxes per unlabeled image"] > 0  # real detections above 0.9 reach the losses
    assert result["ratio per image, mixteacher / supervised (cpu s)"] > 0
    assert result["teacher inference regular scale images/s"] > 0
    stages = [k for k in result if k.startswith("stage: ")]
    assert len(stages) == 4 and all(result[k] > 0 for k in stages)


def test_frozen_bn_calibration_keeps_a_random_r50_at_a_pretrained_scale():
    """Without it the bench's random R50 (frozen unit statistics, caffe 0-255 inputs) reaches activations ~1e4 and
    its teacher keeps no pseudo box; calibrated statistics bring every stage back to unit scale."""
    from mixteacher.bench import calibrate_frozen_bn
    from mixteacher.model import create_model

    torch.manual_seed(0)
    model = create_model("r50_fpn", 80, min_size=128, max_size=160)
    images = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def layer4_std() -> float:
        with torch.no_grad():
            return float(list(model.backbone.body(model.preprocess(images)[0].tensors).values())[-1].std())

    assert layer4_std() > 100
    calibrate_frozen_bn(model, images)
    assert 0.1 < layer4_std() < 10
