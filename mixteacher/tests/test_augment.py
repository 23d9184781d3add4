"""Weak/strong views: matrices consistent with the pixels, and box transforms that round-trip."""

import pytest
import torch

from mixteacher.augment import (
    ViewConfig,
    box_transform,
    make_view,
    transform_boxes,
    transform_points,
    warp_affine,
)

WEAK = ViewConfig(short_range=(80, 140), max_size=200, hflip=0.5)
STRONG_AXIS_ALIGNED = ViewConfig(short_range=(60, 160), max_size=220, hflip=0.5, colour=True, erase=True)
STRONG = ViewConfig(short_range=(60, 160), max_size=220, hflip=0.5, colour=True, geometric=True, erase=True)


@pytest.mark.parametrize("seed", range(6))
def test_boxes_round_trip_between_weak_and_strong_views(seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 100, 130)
    _, m_weak = make_view(image, WEAK, g)
    _, m_strong = make_view(image, STRONG_AXIS_ALIGNED, g)
    boxes = torch.tensor(
        [[3.0, 4.0, 50.0, 60.0], [10.5, 20.25, 99.0, 80.0], [0.0, 0.0, 130.0, 100.0]], dtype=torch.float64
    )
    weak_boxes = transform_boxes(boxes, m_weak)
    to_strong = box_transform(m_weak, m_strong)
    strong_boxes = transform_boxes(weak_boxes, to_strong)
    torch.testing.assert_close(strong_boxes, transform_boxes(boxes, m_strong), atol=1e-4, rtol=0)
    back = transform_boxes(strong_boxes, torch.linalg.inv(to_strong))
    torch.testing.assert_close(back, weak_boxes, atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_points_round_trip_through_rotation_and_shear(seed):
    g = torch.Generator().manual_seed(seed)
    _, m_weak = make_view(torch.rand(3, 90, 120), WEAK, g)
    _, m_strong = make_view(torch.rand(3, 90, 120), STRONG, g)
    points = torch.rand(20, 2, dtype=torch.float64) * 100
    to_strong = box_transform(m_weak, m_strong)
    there = transform_points(points, to_strong)
    torch.testing.assert_close(transform_points(there, torch.linalg.inv(to_strong)), points, atol=1e-4, rtol=0)


def _bright_box(image: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.where(image[0] > 0.75)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float64)


@pytest.mark.parametrize("seed", range(4))
def test_view_matrix_matches_the_pixels(seed):
    """A white square drawn on grey lands where the recorded matrix sends its box (to a pixel)."""
    image = torch.full((3, 96, 128), 0.5)
    image[:, 30:50, 40:70] = 1.0
    box = torch.tensor([[40.0, 30.0, 70.0, 50.0]], dtype=torch.float64)
    cfg = ViewConfig(short_range=(64, 140), max_size=200, hflip=0.5)
    view, matrix = make_view(image, cfg, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(_bright_box(view), transform_boxes(box, matrix)[0], atol=1.5, rtol=0)


def test_warp_affine_translation_moves_content():
    image = torch.full((1, 40, 50), 0.5)
    image[:, 10:20, 10:20] = 1.0
    shift = torch.tensor([[1.0, 0.0, 7.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    out = warp_affine(image, shift)
    torch.testing.assert_close(out[:, 7:17, 17:27], torch.ones(1, 10, 10))


def test_clip_to_view():
    boxes = torch.tensor([[-5.0, 2.0, 40.0, 90.0]])
    out = transform_boxes(boxes, torch.eye(3, dtype=torch.float64), clip_to=(50, 30))
    torch.testing.assert_close(out, torch.tensor([[0.0, 2.0, 30.0, 50.0]]))
