"""The Calibrated Teacher loop (README, Method; released ``Cali_read`` / ``Cali_read_full_100.forward_train``).

Every image is sparsely annotated. Per iteration:

1. the EMA teacher (momentum 0.999) detects on the weak view; detections with raw score >= 0.4 are kept;
2. those overlapping a sparse annotation enter the calibration buffer (label: same-class IoU > 0.75);
3. from ``merge_start`` on, the detections are mapped to the strong view and merged into the sparse GT by the merge
   rules (:func:`calibrated_teacher.pseudo_labels.merge_pseudo_boxes`), with the calibrated threshold 0.7 once a
   calibrator has been fitted (the raw threshold before, or always in the ``calibrate: false`` ablation);
4. the student learns on the strong view with the merged boxes as hard targets (one loss, no unsupervised weight),
   with the Focal IoU Weight on negative anchors from ``fiou_start`` on when ``fiou`` is set;
5. after the step the teacher is updated; every ``refit_interval`` iterations the calibrator is refitted on the last
   ``calibration_window`` iterations' buffer of every rank.

``method: supervised`` trains the student on the sparse annotations only (the teacher is still updated, unused).
The teacher is skipped before ``merge_start - calibration_window`` (``merge_start`` in the ``calibrate: false``
ablation). Its inference draws no random numbers and only feeds the calibration buffer, so the student's updates are
those of an always-on teacher up to ``merge_start``. What can differ is the calibrator: the refits after iterations
before ``merge_start - 1`` see an empty or partial window where an always-on teacher's might have succeeded, and a
refit that fails (or, with the robust fit, is refused) keeps the previous calibrator. The two runs are identical
when their calibrators entering ``merge_start`` agree, e.g. when the refit after iteration ``merge_start - 1`` (the
first with a full window; scheduled when ``merge_start`` is a multiple of ``refit_interval``, as in every config)
succeeds. When it fails, this run merges with the raw threshold (or an older partial-window fit) where an always-on
teacher could use an earlier fit, and the runs diverge.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchvision.ops import box_iou

from calibrated_teacher.calibration import CalibrationBuffer, ScoreCalibrator, calibration_set
from calibrated_teacher.config import CalibratedTeacherSettings
from calibrated_teacher.losses import FIoUParams
from calibrated_teacher.model import SparseRetinaNet, keep_input_size
from calibrated_teacher.pseudo_labels import MergeRules, merge_pseudo_boxes
from calibrated_teacher.views import transform_boxes
from shared.distributed import all_gather_objects

__all__ = ["CalibratedTeacher", "PseudoBoxLog"]


class PseudoBoxLog:
    """Every merge candidate (passes every rule but the calibrated threshold) of a run: iteration, raw score,
    calibrated score (NaN before the first fit) and whether it matches a dropped annotation (same class, IoU >= 0.5);
    kept flags. For the analysis of kept pseudo boxes only (README, Evidence)."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []

    def add(self, step: int, raw: torch.Tensor, calibrated: torch.Tensor, correct: torch.Tensor, kept: torch.Tensor):
        n = len(raw)
        self.rows.append(
            torch.stack(
                [torch.full((n,), float(step)), raw.float(), calibrated.float(), correct.float(), kept.float()], 1
            )
        )

    def table(self) -> torch.Tensor:
        """(N, 5) float: step, raw, calibrated, correct, kept."""
        return torch.cat(self.rows) if self.rows else torch.zeros(0, 5)

    def gathered_table(self) -> torch.Tensor:
        """Every rank's :meth:`table`, concatenated in rank order (call on every rank); this rank's table in one
        process."""
        parts = all_gather_objects(self.table())
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``table``: :meth:`table` with 0 for the NaN calibrated scores (checkpoints refuse non-finite values);
        ``scored``: which candidates a fitted calibrator scored."""
        table = self.table().clone()
        scored = ~torch.isnan(table[:, 2])
        table[~scored, 2] = 0.0
        return {"table": table, "scored": scored}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        table, scored = state["table"].float().cpu().clone(), state["scored"].bool().cpu()
        if table.ndim != 2 or table.shape[1] != 5 or scored.shape != (len(table),):
            raise ValueError(
                f"pseudo-box log state must be an (N, 5) table and N flags, got {tuple(table.shape)} and "
                f"{tuple(scored.shape)}"
            )
        table[~scored, 2] = float("nan")
        self.rows = [table] if len(table) else []


def _matches(
    boxes: torch.Tensor, labels: torch.Tensor, ref_boxes: torch.Tensor, ref_labels: torch.Tensor
) -> torch.Tensor:
    """(N,) bool on ``boxes``' device: a same-class reference box with IoU >= 0.5. The references (the dropped
    annotations) may arrive on another device: the training loop leaves them on the CPU, but DistributedDataParallel
    moves every tensor of the forward inputs to the GPU."""
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    ref_boxes, ref_labels = ref_boxes.to(boxes.device), ref_labels.to(labels.device)
    return ((box_iou(boxes, ref_boxes) >= 0.5) & (labels[:, None] == ref_labels[None])).any(1)


class CalibratedTeacher(nn.Module):
    """Student, EMA teacher, calibrator and calibration buffer; ``forward(batch, step)`` returns (loss, logs)."""

    def __init__(self, student: nn.Module, settings: CalibratedTeacherSettings, method: str = "calibrated_teacher"):
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.settings, self.method = settings, method
        self.rules = MergeRules(
            ori_thr=settings.ori_thr,
            strict_thr=settings.strict_thr,
            min_size=settings.mining_min_size,
            same_class_iou=settings.same_class_iou,
            any_class_iou=settings.any_class_iou,
            iof_thr=settings.iof_thr,
        )
        self.fiou_params = FIoUParams(
            settings.fiou_bias, settings.fiou_k, settings.fiou_alpha, settings.fiou_gamma, settings.fiou_detach
        )
        if settings.fiou and not isinstance(student, SparseRetinaNet):
            raise ValueError("fiou is implemented for the RetinaNet head only (detector.arch: retinanet)")
        self.calibrator = ScoreCalibrator(settings.calibrator, settings.calibrator_fit, settings.calib_min_pairs)
        self.buffer = CalibrationBuffer(settings.calibration_window)
        self.pseudo_log = PseudoBoxLog()

    def train(self, mode: bool = True) -> CalibratedTeacher:
        super().train(mode)
        self.teacher.eval()  # the teacher only ever infers
        return self

    # ------------------------------------------------------------------------------------------- teacher side
    def teacher_active(self, step: int) -> bool:
        s = self.settings
        if self.method == "supervised":
            return False
        start = s.merge_start - s.calibration_window if s.calibrate else s.merge_start
        return step >= max(0, start)

    @torch.no_grad()
    def teacher_detections(self, weak_images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Teacher detections on the weak views (score >= ``ori_thr``), in weak-view coordinates."""
        with keep_input_size(self.teacher):
            outputs = self.teacher(weak_images)
        return [{k: v[o["scores"] >= self.settings.ori_thr] for k, v in o.items()} for o in outputs]

    def _pseudo_targets(self, batch: dict[str, Any], step: int) -> tuple[list[dict[str, torch.Tensor]], dict]:
        targets = [dict(t) for t in batch["strong_target"]]
        logs = {"pseudo_per_image": 0.0, "pseudo_correct": 0.0}
        if not self.teacher_active(step):
            return targets, logs
        s = self.settings
        detections = self.teacher_detections(batch["weak"])
        merge = step >= s.merge_start
        for i, det in enumerate(detections):
            weak_gt = batch["weak_target"][i]
            in_set, correct = calibration_set(
                det["boxes"], det["labels"], weak_gt["boxes"], weak_gt["labels"],
                s.calib_overlap_iou, s.any_class_iou, s.iof_thr, s.calib_tp_iou,
            )  # fmt: skip
            self.buffer.add(step, det["scores"][in_set], correct[in_set])
            if not merge:
                continue
            h, w = batch["strong"][i].shape[-2:]
            boxes = transform_boxes(det["boxes"], batch["weak_to_strong"][i], clip_to=(h, w))
            calibrated = self.calibrator(det["scores"]) if s.calibrate and self.calibrator.fitted else None
            merged, labels, kept, candidate = merge_pseudo_boxes(
                targets[i]["boxes"], targets[i]["labels"], boxes, det["labels"], det["scores"], calibrated, self.rules
            )
            targets[i]["boxes"], targets[i]["labels"] = merged, labels
            dropped = batch["dropped"][i]
            hit = _matches(boxes[candidate].cpu(), det["labels"][candidate].cpu(), dropped["boxes"], dropped["labels"])
            cal = (
                calibrated[candidate]
                if calibrated is not None
                else torch.full_like(det["scores"][candidate], float("nan"))
            )
            self.pseudo_log.add(step, det["scores"][candidate].cpu(), cal.cpu(), hit, kept[candidate].cpu())
            logs["pseudo_per_image"] += float(kept.sum()) / len(detections)
            logs["pseudo_correct"] += float(hit[kept[candidate].cpu()].sum()) / len(detections)
        return targets, logs

    # ------------------------------------------------------------------------------------------- student side
    def forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        targets, logs = self._pseudo_targets(batch, step)
        s = self.settings
        if isinstance(self.student, SparseRetinaNet):
            self.student.fiou = self.fiou_params if s.fiou and step >= s.fiou_start else None
        losses = self.student(batch["strong"], targets)
        loss = sum(losses.values())
        logs.update({k: float(v.detach()) for k, v in losses.items()})
        return loss, logs

    # ---------------------------------------------------------------------------------------- after the step
    @torch.no_grad()
    def update_teacher(self, step: int) -> None:
        """EMA of the student's parameters (momentum min(m, 1 - 1/(step + 2)), mmcv MeanTeacher with warm-up 0);
        buffers (frozen BN statistics) are copied."""
        m = min(self.settings.ema_momentum, 1.0 - 1.0 / (step + 2))
        for t, p in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(m).add_(p.detach(), alpha=1 - m)
        for t, b in zip(self.teacher.buffers(), self.student.buffers()):
            t.copy_(b)

    def maybe_refit(self, step: int) -> bool:
        """After iteration ``step``: refit the calibrator every ``refit_interval`` iterations on the gathered window
        (every rank gets the same fit); True when a fit happened."""
        s = self.settings
        if self.method == "supervised" or not s.calibrate or (step + 1) % s.refit_interval:
            return False
        scores, correct = self.buffer.window_data(step)
        return self.calibrator.fit(scores, correct)

    def method_state(self) -> dict[str, Any]:
        """This rank's method state: the calibrator (the same on every rank), the calibration buffer and the
        pseudo-box log (both per rank)."""
        return {
            "calibrator": self.calibrator.state_dict(),
            "buffer": self.buffer.state_dict(),
            "pseudo_log": self.pseudo_log.state_dict(),
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`method_state`; a state without ``pseudo_log`` (a checkpoint written before it was
        saved) leaves the log empty."""
        self.calibrator.load_state_dict(state["calibrator"])
        self.buffer.load_state_dict(state["buffer"])
        if state.get("pseudo_log") is not None:
            self.pseudo_log.load_state_dict(state["pseudo_log"])
