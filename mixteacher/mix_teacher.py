"""MixTeacher (Liu et al., CVPR 2023, arXiv 2303.09061): a mixed-scale mean teacher with a three-scale student and
promising label mining, on SoftTeacher's pseudo-labelling (released ``ssod/models/soft_teacher_simple_msi.py``).

One training step (:meth:`MixTeacher.forward`):

0. during the burn-in (unsupervised weight 0) only step 2 runs: the unlabeled branch is skipped, as released;
1. the EMA teacher detects on the weak view of each unlabeled image with its *mixed*-scale features; detections with
   score >= 0.5 become pseudo boxes, each with its box-jitter regression uncertainty;
2. labeled images: the student's Faster R-CNN losses at the regular, down-scaled and mixed scales, averaged;
3. unlabeled images (strong view, pseudo boxes mapped with the recorded view matrices): per scale, the RPN loss on
   pseudo boxes with score >= 0.9, the R-CNN classification loss on boxes with score >= 0.9 (plus mined positives at
   the regular scale) with the teacher's background probability weighting the negatives, and the R-CNN regression
   loss on boxes with uncertainty < 0.02; averaged over the scales and weighted by the burn-in ramp.

``method="supervised"`` gives the supervised-only baseline with the same detector (labeled data, regular scale).

MixTeacher-FCOS (the student a :class:`~mixteacher.model.MixedScaleFCOS`, ``detector.architecture: fcos``) keeps
steps 0-2 (the teacher's mixed-scale detections are FCOS's, without box jitter) and replaces step 3 by the FCOS
losses of each scale against the pseudo boxes with score >= ``cls_score_thr``, plus the promoted low-confidence boxes
as classification-only targets at the regular scale (:meth:`MixTeacher._dense_unsupervised_loss`; README,
MixTeacher-FCOS).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from mixteacher.config import MixTeacherSettings
from mixteacher.losses import soft_teacher_weights
from mixteacher.mining import dense_score_promotion, match_low_confidence, promoted_by_score
from mixteacher.model import SCALES, MixedScaleDetector, MixedScaleFCOS, scale_factors
from mixteacher.teacher import PseudoLabels, box_jitter_uncertainty, ema_update, map_boxes, unsup_weight

__all__ = ["LOSS_KEYS", "MiningInputs", "MixTeacher", "MixTeacherSettings"]

LOSS_KEYS = ("rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box")


def _pseudo_label_stats(cls_set: list[PseudoLabels], reg_set: list[PseudoLabels], mined: int) -> dict[str, float]:
    """What the logs record per unlabeled image: classification pseudo boxes, regression boxes, mined boxes."""
    n = max(len(cls_set), 1)
    return {
        "pseudo_boxes": sum(len(p) for p in cls_set) / n,
        "reg_boxes": sum(len(p) for p in reg_set) / n,
        "mined": mined / n,
    }


@dataclass
class MiningInputs:
    """What promising label mining reads: the low-confidence pseudo boxes (``mine_score_thr < score <
    cls_score_thr``) in the student's strong view and the same boxes in the teacher's weak view, both views and their
    multi-scale features (``extract_features`` of the student on the strong view, of the teacher on the weak one)."""

    low: list[PseudoLabels]
    low_weak_boxes: list[torch.Tensor]
    strong: ImageList
    weak: ImageList
    student_feats: dict
    teacher_feats: dict

    @classmethod
    def select(
        cls,
        settings: MixTeacherSettings,
        pseudo: list[PseudoLabels],
        pseudo_weak: list[PseudoLabels],
        strong: ImageList,
        weak: ImageList,
        student_feats: dict,
        teacher_feats: dict,
    ) -> MiningInputs:
        """The low-confidence boxes of ``pseudo`` (strong view) and ``pseudo_weak`` (the same boxes, weak view)."""
        keep = [(p.scores > settings.mine_score_thr) & (p.scores < settings.cls_score_thr) for p in pseudo]
        return cls(
            [p.select(k) for p, k in zip(pseudo, keep)],
            [p.boxes[k] for p, k in zip(pseudo_weak, keep)],
            strong,
            weak,
            student_feats,
            teacher_feats,
        )

    def view(self, mining_features: str) -> tuple[dict, ImageList, list[torch.Tensor]]:
        """(features, images, low-confidence boxes) of the view the teacher's head mines on: the teacher's own weak
        view (``mining_features: teacher``, the paper figure) or the student's strong view (``student``, released)."""
        if mining_features == "teacher":
            return self.teacher_feats, self.weak, self.low_weak_boxes
        return self.student_feats, self.strong, [p.boxes for p in self.low]


class MixTeacher(nn.Module):
    """Student, EMA teacher and the MixTeacher losses.

    Args:
        student: the detector being trained.
        settings: method hyper-parameters.
        method: ``"mixteacher"`` or ``"supervised"`` (labeled losses only; no teacher forward).
    """

    def __init__(
        self, student: MixedScaleDetector, settings: MixTeacherSettings | None = None, method: str = "mixteacher"
    ):
        super().__init__()
        if method not in ("mixteacher", "supervised"):
            raise ValueError(f"method must be 'mixteacher' or 'supervised', got {method!r}")
        self.settings = settings or MixTeacherSettings()
        unknown = set(self.settings.train_scales) - set(SCALES)
        if unknown or not self.settings.train_scales:
            raise ValueError(f"train_scales must be a non-empty subset of {SCALES}, got {self.settings.train_scales}")
        if self.settings.teacher_scale not in SCALES:
            raise ValueError(f"teacher_scale must be one of {SCALES}, got {self.settings.teacher_scale!r}")
        if self.settings.mining_features not in ("student", "teacher"):
            raise ValueError(f"mining_features must be 'student' or 'teacher', got {self.settings.mining_features!r}")
        self.method = method
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    @property
    def dense(self) -> bool:
        """Whether the detector is MixTeacher-FCOS (dense head, no proposals) rather than Faster R-CNN."""
        return isinstance(self.student, MixedScaleFCOS)

    def train(self, mode: bool = True) -> MixTeacher:
        super().train(mode)
        self.teacher.eval()  # the teacher always runs its test-time RPN/R-CNN settings
        return self

    def update_teacher(self, step: int) -> float:
        """EMA step of the teacher (call after the optimizer step); returns the momentum used."""
        return ema_update(self.teacher, self.student, self.settings.ema_momentum, step)

    # ---------------------------------------------------------------------------------------------- labeled

    def supervised_loss(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """Faster R-CNN losses of labeled images, averaged over the student's training scales (``msi_train``, as
        released; otherwise, and for the supervised baseline, the regular scale only)."""
        student = self.student
        image_list, _ = student.preprocess(images)
        multi = self.method == "mixteacher" and self.settings.msi_train
        scales = self.settings.train_scales if multi else ["regular"]
        feats = student.extract_features(image_list, scales)
        boxes = [t["boxes"] for t in targets]
        labels = [t["labels"] for t in targets]
        total: dict[str, torch.Tensor] = {}
        with student.reuse_assignments():  # the regular and mixed scale share their anchor assignment
            for scale in scales:
                scaled, features = feats[scale]
                scaled_boxes = self._to_scale(boxes, image_list, scaled)
                for k, v in student.supervised_losses(scaled, features, scaled_boxes, labels).items():
                    total[k] = total.get(k, 0.0) + v / len(scales)
        return total

    # -------------------------------------------------------------------------------------------- teacher

    @torch.no_grad()
    def pseudo_label(
        self, weak_images: list[torch.Tensor]
    ) -> tuple[list[PseudoLabels], ImageList, dict[str, tuple[ImageList, OrderedDict]]]:
        """Teacher detections on the weak views (score >= ``initial_score_thr``) with their jitter uncertainty.

        Returns the pseudo labels (weak-view coordinates), the weak image list and the teacher's features.
        """
        s, teacher = self.settings, self.teacher
        image_list, _ = teacher.preprocess(weak_images)
        scales = [s.teacher_scale]
        if s.mining and s.mining_features == "teacher":
            scales = sorted({s.teacher_scale, "regular", "mixed"})
        feats = teacher.extract_features(image_list, scales)
        scaled, features = feats[s.teacher_scale]
        detections = teacher.detect(scaled, features, s.teacher_proposals)
        factors = scale_factors(image_list, scaled)
        kept = []
        for det in detections:
            wh = det["boxes"][:, 2:] - det["boxes"][:, :2]
            kept.append((det["scores"] >= s.initial_score_thr) & (wh > s.min_pseudo_size).all(dim=1))
        boxes = [det["boxes"][k] for det, k in zip(detections, kept)]
        labels = torch.cat([det["labels"][k] for det, k in zip(detections, kept)])
        owner = torch.cat([torch.full((len(b),), i, device=labels.device) for i, b in enumerate(boxes)])
        owner_t = owner.repeat(s.jitter_times)  # row order of the (times, N) jitter copies, flattened
        order = torch.cat([torch.where(owner_t == i)[0] for i in range(len(boxes))])

        def regress(flat: torch.Tensor) -> torch.Tensor:
            # one R-CNN pass for the jittered copies of every image; outputs put back in the input order
            decoded = teacher.roi_predict(
                features, [flat[owner_t == i] for i in range(len(boxes))], scaled.image_sizes
            )[1]
            out = torch.empty_like(decoded)
            out[order] = decoded
            return out

        if self.dense:  # no R-CNN head to refine jittered boxes: the uncertainty filter does not apply (README)
            uncertainty = torch.zeros(len(labels), device=labels.device)
        else:
            uncertainty = box_jitter_uncertainty(torch.cat(boxes), labels, regress, s.jitter_times, s.jitter_scale)
        pseudo = [
            PseudoLabels(b / factors[i], labels[owner == i], det["scores"][k], uncertainty[owner == i])
            for i, (b, det, k) in enumerate(zip(boxes, detections, kept))
        ]
        return pseudo, image_list, feats

    # ------------------------------------------------------------------------------------------ unlabeled

    @staticmethod
    def _to_scale(boxes: list[torch.Tensor], regular: ImageList, scaled: ImageList) -> list[torch.Tensor]:
        if scaled is regular:
            return boxes
        factors = scale_factors(regular, scaled)
        return [b * factors[i] for i, b in enumerate(boxes)]

    def _mine(
        self,
        proposals: list[torch.Tensor],
        cls_boxes: list[torch.Tensor],
        cls_labels: list[torch.Tensor],
        inputs: MiningInputs,
        to_weak: torch.Tensor,
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], int]:
        """Promising label mining on the regular-scale proposals; returns per-image (index, labels, boxes).

        Candidates are the proposals left negative by the confident pseudo boxes whose IoU with a low-confidence
        box of their image reaches ``mining_candidate_iou`` (0: every negative, as released; README, Fidelity
        notes). The teacher's R-CNN head then runs twice for the whole batch: on the regular-scale features of all
        candidates (their regressed boxes are matched to the low-confidence boxes), and on the mixed-scale
        features of the matched ones only (the score promotion of :func:`score_promotion`)."""
        s, teacher, low = self.settings, self.teacher, inputs.low
        device = proposals[0].device if proposals else to_weak.device
        empty = [
            (torch.zeros(0, dtype=torch.int64, device=device), lab[:0], p[:0]) for p, lab in zip(proposals, cls_labels)
        ]
        if sum(len(p) for p in low) == 0:
            return empty, 0
        use_teacher = s.mining_features == "teacher"
        source, images, view_boxes = inputs.view(s.mining_features)
        sizes = images.image_sizes
        cand_index, cand_boxes, low_boxes = [], [], []
        for i, props in enumerate(proposals):
            assigned, _ = self.student.assign(props, cls_boxes[i], cls_labels[i])
            boxes = props if not use_teacher else map_boxes(props, to_weak[i], inputs.weak.image_sizes[i])
            targets = view_boxes[i]
            keep = (assigned == 0) & (len(targets) > 0)
            if len(targets) and len(boxes) and s.mining_candidate_iou > 0:
                keep &= box_iou(boxes, targets).amax(dim=1) >= s.mining_candidate_iou
            cand_index.append(torch.where(keep)[0])
            cand_boxes.append(boxes[keep])
            low_boxes.append(targets)
        counts = [len(c) for c in cand_index]
        if sum(counts) == 0:
            return empty, 0
        owner = torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))
        low_owner = torch.cat([torch.full((len(b),), i, device=device) for i, b in enumerate(low_boxes)])
        low_labels = torch.cat([p.labels for p in low])
        with torch.no_grad():
            ref_probs, ref_decoded = teacher.roi_predict(source["regular"][1], cand_boxes, sizes)
            ref_cls = ref_probs[:, 1:].argmax(dim=1) + 1
            ref_boxes = ref_decoded[torch.arange(len(ref_cls), device=device), ref_cls]
            match = match_low_confidence(ref_boxes, torch.cat(low_boxes), s.mining_iou_thr, owner, low_owner)
            matched = match >= 0
            promoted = torch.zeros_like(matched)
            if matched.any():  # the mixed-scale head only on the candidates that matched a low-confidence box
                tgt_probs, _ = teacher.roi_predict(
                    source["mixed"][1], [c[matched[owner == i]] for i, c in enumerate(cand_boxes)], sizes
                )
                promoted[matched] = promoted_by_score(
                    ref_probs[matched], tgt_probs, low_labels[match[matched]], s.mining_diff_thr
                )
        low_strong = torch.cat([p.boxes for p in low])
        mined = []
        for i in range(len(proposals)):
            hit = match[promoted & (owner == i)]
            mined.append((cand_index[i][promoted[owner == i]], low_labels[hit], low_strong[hit]))
        return mined, int(promoted.sum())

    def unsupervised_loss(
        self, weak_images: list[torch.Tensor], strong_images: list[torch.Tensor], weak_to_strong: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """MixTeacher's unsupervised losses (averaged over the training scales) and pseudo-label statistics."""
        s, student = self.settings, self.student
        pseudo_weak, weak, teacher_feats = self.pseudo_label(weak_images)
        strong, _ = student.preprocess(strong_images)
        to_weak = torch.linalg.inv(weak_to_strong.double())
        pseudo = [
            PseudoLabels(
                map_boxes(p.boxes, weak_to_strong[i], strong.image_sizes[i]), p.labels, p.scores, p.uncertainty
            )
            for i, p in enumerate(pseudo_weak)
        ]
        # boxes that leave the strong view (geometric ops) are dropped in both views
        visible = [((p.boxes[:, 2:] - p.boxes[:, :2]) > 0).all(dim=1) for p in pseudo]
        pseudo = [p.select(v) for p, v in zip(pseudo, visible)]
        pseudo_weak = [p.select(v) for p, v in zip(pseudo_weak, visible)]
        if self.dense:
            return self._dense_unsupervised_loss(pseudo, pseudo_weak, strong, weak, teacher_feats)
        rpn_set = [p.select(p.scores >= s.rpn_score_thr) for p in pseudo]
        cls_set = [p.select(p.scores >= s.cls_score_thr) for p in pseudo]
        reg_set = [p.select(p.uncertainty < s.reg_uncertainty_thr) for p in pseudo]
        mining = s.mining and {"regular", "mixed"} <= set(s.train_scales)
        t_scaled, t_features = teacher_feats[s.teacher_scale]
        t_factors = scale_factors(weak, t_scaled)

        feats = student.extract_features(strong, s.train_scales)
        inputs = MiningInputs.select(s, pseudo, pseudo_weak, strong, weak, feats, teacher_feats)
        total: dict[str, torch.Tensor] = {}
        mined_count = 0
        with student.reuse_assignments():  # the regular and mixed scale share their anchor assignment
            for scale in s.train_scales:
                scaled, features = feats[scale]
                to_scale = scale_factors(strong, scaled)
                proposals, losses = student.rpn_forward(
                    scaled, features, [p.boxes * to_scale[i] for i, p in enumerate(rpn_set)]
                )
                cls_boxes = [p.boxes * to_scale[i] for i, p in enumerate(cls_set)]
                cls_labels = [p.labels for p in cls_set]
                mined = None
                if mining and scale == "regular":
                    mined, mined_count = self._mine(proposals, cls_boxes, cls_labels, inputs, to_weak)
                sampled = student.sample_rois(proposals, cls_boxes, cls_labels, mined, s.mined_as_proposals)
                # the teacher's background probability of each sampled RoI, mapped into the teacher's view
                with torch.no_grad():
                    teacher_boxes = [
                        map_boxes(b / to_scale[i], to_weak[i], weak.image_sizes[i]) * t_factors[i]
                        for i, b in enumerate(sampled.boxes)
                    ]
                    bg = self.teacher.roi_class_probs(t_features, teacher_boxes, t_scaled.image_sizes)[:, 0]
                losses["rcnn_cls"] = student.rcnn_loss(
                    features, scaled.image_sizes, sampled, soft_teacher_weights(sampled.labels, bg)
                )["rcnn_cls"]
                reg_sampled = student.sample_rois(
                    proposals, [p.boxes * to_scale[i] for i, p in enumerate(reg_set)], [p.labels for p in reg_set]
                )
                losses["rcnn_box"] = student.rcnn_loss(features, scaled.image_sizes, reg_sampled, box_only=True)[
                    "rcnn_box"
                ]
                for k, v in losses.items():
                    total[k] = total.get(k, 0.0) + v / len(s.train_scales)
        return total, _pseudo_label_stats(cls_set, reg_set, mined_count)

    def _mine_dense(self, inputs: MiningInputs) -> tuple[list[torch.Tensor], int]:
        """Promising label mining for FCOS (:func:`~mixteacher.mining.dense_score_promotion`): which low-confidence
        pseudo boxes of each image are promoted, by the teacher's FCOS head on the regular and the mixed pyramid of
        the teacher's weak view (``mining_features: teacher``, the paper figure) or of the student's strong view
        (``student``, the released Faster R-CNN code's choice)."""
        s, teacher = self.settings, self.teacher
        source, images, boxes = inputs.view(s.mining_features)
        with torch.no_grad():
            ref = teacher.head_outputs(images, source["regular"][1])
            tgt = teacher.head_outputs(images, source["mixed"][1])
            cfg = teacher.cfg
            promoted = dense_score_promotion(
                ref,
                tgt,
                boxes,
                [p.labels for p in inputs.low],
                s.mining_diff_thr,
                cfg.fcos_center_sampling_radius,
                tuple(cfg.fcos_regress_ranges),
            )
        return promoted, int(sum(int(p.sum()) for p in promoted))

    def _dense_unsupervised_loss(
        self,
        pseudo: list[PseudoLabels],
        pseudo_weak: list[PseudoLabels],
        strong: ImageList,
        weak: ImageList,
        teacher_feats: dict,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """MixTeacher-FCOS's unsupervised losses: per training scale, the FCOS losses of the strong view against the
        pseudo boxes with score >= ``cls_score_thr`` (classification, box and centerness), plus, at the regular
        scale, the promoted low-confidence boxes as classification-only targets; averaged over the scales
        (README, MixTeacher-FCOS)."""
        s, student = self.settings, self.student
        cls_set = [p.select(p.scores >= s.cls_score_thr) for p in pseudo]
        mining = s.mining and {"regular", "mixed"} <= set(s.train_scales)
        feats = student.extract_features(strong, s.train_scales)
        mined, mined_count = None, 0
        if mining:
            inputs = MiningInputs.select(s, pseudo, pseudo_weak, strong, weak, feats, teacher_feats)
            promoted, mined_count = self._mine_dense(inputs)
            mined = [p.select(k) for p, k in zip(inputs.low, promoted)]
        total: dict[str, torch.Tensor] = {}
        for scale in s.train_scales:
            scaled, features = feats[scale]
            to_scale = scale_factors(strong, scaled)
            boxes = [p.boxes * to_scale[i] for i, p in enumerate(cls_set)]
            extra = mined if scale == "regular" else None
            losses = student.supervised_losses(
                scaled,
                features,
                boxes,
                [p.labels for p in cls_set],
                None if extra is None else [p.boxes for p in extra],
                None if extra is None else [p.labels for p in extra],
            )
            for k, v in losses.items():
                total[k] = total.get(k, 0.0) + v / len(s.train_scales)
        return total, _pseudo_label_stats(cls_set, cls_set, mined_count)

    # ---------------------------------------------------------------------------------------------- step

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss of one batch at ``step`` and the logged values."""
        logs: dict[str, float] = {}
        loss = torch.zeros((), device=next(self.student.parameters()).device)
        if batch["labeled_images"]:
            sup = self.supervised_loss(batch["labeled_images"], batch["labeled_targets"])
            loss = loss + sum(sup.values())
            logs.update({f"sup_{k}": float(v.detach()) for k, v in sup.items()})
        weight = unsup_weight(step, self.settings.unsup_start, self.settings.unsup_warmup, self.settings.unsup_weight)
        # burn-in (weight 0): the unlabeled branch is skipped, as the released code does
        if self.method == "mixteacher" and batch["weak_images"] and weight > 0:
            unsup, stats = self.unsupervised_loss(batch["weak_images"], batch["strong_images"], batch["weak_to_strong"])
            loss = loss + weight * sum(unsup.values())
            logs.update({f"unsup_{k}": float(v.detach()) for k, v in unsup.items()})
            logs.update(stats)
            logs["unsup_weight"] = weight
        return loss, logs
