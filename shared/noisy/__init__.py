"""The common noisy-label engine of dmlp, anm and crema.

* :mod:`shared.noisy.data`: CIFAR-10/100 (official pickles, also the synthetic ones), scikit-learn's digits written
  in the CIFAR pickle layout, Clothing1M (official key lists, clean val/test splits) with noisy-label files;
  label-file export/import (hard + soft).
* :mod:`shared.noisy.models`: PreAct ResNet-18 in DivideMix's exact key layout (CIFAR) and ResNet-50
  (Clothing1M), each with ``forward_feature_map`` (last map before pooling), ``pool``, ``forward_features``,
  ``forward_head`` and ``forward(x, return_features=False)``.
* :mod:`shared.noisy.simclr`: SimCLR pretraining (CIFAR recipe, batched augmentation) and external SSL checkpoints.
* :mod:`shared.noisy.features`: frozen feature extraction to an ``N x d`` tensor.
* :mod:`shared.noisy.supervised`: CE training on given labels (baselines, naive retraining), DDP + exact resume.
* :mod:`shared.noisy.dividemix`: the DivideMix engine with its CIFAR and Clothing1M defaults.
* :mod:`shared.noisy.metrics`: label accuracy of corrected labels, best/last test accuracy.
* :mod:`shared.noisy.loop`: the epoch loop (``fit``) of DivideMix and crema's trainer.

Extending the engine (shared/noisy/README.md, "Extending the engine"). ``DivideMix.train_epoch`` calls, per
labeled batch, ``train_step`` = ``prepare_batch`` (co-refinement + co-guessing under no_grad, returns a
:class:`~shared.noisy.dividemix.MixBatch`) -> ``augment_batch`` (append input groups; identity by default) ->
``mixmatch`` (the run's generator) -> forward -> ``compute_loss`` (L_x + lambda_u L_u + prior + ``extra_loss``)
-> ``optimizer_step``. ``view_transforms(role)`` chooses the views per item, ``guess_views`` / ``mix_views`` which
of them guess and which are mixed, ``co_divide`` / ``clean_probability`` / ``sample_losses`` the division. A
subclass that adds a masked copy of the labeled images and an auxiliary loss::

    class MaskedDivideMix(DivideMix):
        need_feature_maps = True  # batch.feature_maps_x / _u: the trained net's last maps (no grad)

        def augment_batch(self, k, batch):
            attention = batch.feature_maps_x.pow(2).sum(1, keepdim=True)  # B x 1 x h x w
            mask = F.interpolate(attention, size=batch.views_x[0].shape[-2:]) < attention.mean()
            masked = batch.views_x[0] * mask
            batch.labeled.append(masked)
            batch.labeled_targets.append(batch.targets_x)
            batch.extras["masked"] = masked
            return batch

        def extra_loss(self, k, batch, logits, mixed_target):
            net = self.nets[k]
            rec = net.forward_feature_map(batch.extras["masked"]).mean()  # stands for a decoder loss
            return 0.02 * rec, {"rec": rec.item()}

    engine = MaskedDivideMix(net1, net2, images, noisy, 10, augment, normalize, test_images, test_labels,
                             cifar_defaults(10, "sym", 0.5), device, logger, seed=0)
    engine.fit()
"""

from shared.noisy.data import (
    CifarSplit,
    CifarTrainTransform,
    Clothing1M,
    LabelFile,
    Normalize,
    ViewDataset,
    load_cifar,
    load_label_file,
    noisy_labels_for,
    save_label_file,
)
from shared.noisy.dividemix import DivideMix, DivideMixConfig, MixBatch, cifar_defaults, clothing1m_defaults
from shared.noisy.features import extract_features
from shared.noisy.metrics import AccuracyTracker, label_accuracy
from shared.noisy.models import PreActResNet18, build_backbone, preact_resnet18, resnet50_noisy
from shared.noisy.simclr import SimCLR, SimCLRAugment, load_ssl_checkpoint, nt_xent_loss
from shared.noisy.supervised import SupervisedConfig, evaluate_accuracy, train_supervised

__all__ = [
    "AccuracyTracker",
    "CifarSplit",
    "CifarTrainTransform",
    "Clothing1M",
    "DivideMix",
    "DivideMixConfig",
    "LabelFile",
    "MixBatch",
    "Normalize",
    "PreActResNet18",
    "SimCLR",
    "SimCLRAugment",
    "SupervisedConfig",
    "ViewDataset",
    "build_backbone",
    "cifar_defaults",
    "clothing1m_defaults",
    "evaluate_accuracy",
    "extract_features",
    "label_accuracy",
    "load_cifar",
    "load_label_file",
    "load_ssl_checkpoint",
    "noisy_labels_for",
    "nt_xent_loss",
    "preact_resnet18",
    "resnet50_noisy",
    "save_label_file",
    "train_supervised",
]
