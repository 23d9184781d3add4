"""Registry of the real datasets used by the packages of this repository.

Each :class:`DatasetInfo` says where a dataset comes from, what its archives are called, how to check them,
which directory tree the loaders expect under the dataset root, and, for data behind a registration wall, the exact
manual steps.

Provenance of every URL and checksum is written next to it (``RemoteFile.source``). Where no checksum is
published anywhere we could read, ``checksum`` is ``None`` and the source says "not published"; nothing here is
computed by us from a download. No source of these datasets publishes SHA-256 digests, so the registered checksums
are the published md5 values (each ``source`` names where it was read); md5 detects corruption and truncation but is
not collision-resistant. Plain-http URLs remain where the host serves nothing else that we could confirm: COCO's
``images.cocodataset.org`` presents the certificate of s3.amazonaws.com over https (a hostname mismatch), and the
ETH and DHBW hosts of Fishyscapes / Lost and Found could not be checked from here; every one of them has a checksum,
and ``download_file`` refuses a plain-http file without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "EYECANDIES_CLASSES",
    "MVTEC3D_CLASSES",
    "REGISTRY",
    "DatasetInfo",
    "RemoteFile",
    "get_dataset",
    "list_datasets",
]

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".zip")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset release.

    Attributes:
        filename: name of the file as published (and as stored under the dataset root).
        url: direct download URL, or ``None`` when the file sits behind a registration wall.
        checksum: ``"md5:<hex>"`` or ``"sha256:<hex>"``; ``None`` when no checksum is published.
        size: size in bytes when published, else ``None``.
        extract_to: folder (relative to the dataset root) into which an archive is unpacked.
        source: where ``url`` and ``checksum`` were read.
    """

    filename: str
    url: str | None
    checksum: str | None
    size: int | None = None
    extract_to: str = "."
    source: str = ""

    def __post_init__(self) -> None:
        if self.checksum is not None:
            algorithm, _, digest = self.checksum.partition(":")
            expected_length = {"md5": 32, "sha256": 64}.get(algorithm)
            if expected_length is None or len(digest) != expected_length:
                raise ValueError(
                    f"{self.filename}: checksum must be 'md5:<32 hex>' or 'sha256:<64 hex>', got {self.checksum!r}"
                )
            int(digest, 16)

    @property
    def is_archive(self) -> bool:
        """True when the file is a tar/zip archive that ``download`` unpacks."""
        return self.filename.lower().endswith(_ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything a user needs to obtain one real dataset and lay it out as the loaders expect.

    Attributes:
        name: the CLI key (``python -m shared.datasets info NAME``).
        title: human-readable name.
        homepage: official page.
        citation: the paper to cite.
        used_by: packages of this repository that read the dataset.
        size: approximate download size, as text (marked when not verified).
        license: licence / terms of use, as stated by the publisher.
        files: the published files; those with a URL can be fetched by ``download``.
        manual: exact steps for what cannot be downloaded automatically (empty when everything can).
        layout: the directory tree under the dataset root, with exact names.
        required_paths: paths relative to the root that must exist; ``verify`` and ``require_dataset`` check them.
        notes: conventions and pitfalls the loaders must know about.
        content_files: unpacked files with a published checksum (``filename`` relative to the root, ``url``
            None); ``verify`` and :func:`shared.datasets.check_content` (called by loaders) compare them.
        expected_counts: ``(folder, kind, n)`` structure checks of ``verify``: ``kind`` ``"dirs"`` counts the
            sub-folders of ``folder``, ``"files"`` the files below it (recursively).
    """

    name: str
    title: str
    homepage: str
    citation: str
    used_by: tuple[str, ...]
    size: str
    license: str
    files: tuple[RemoteFile, ...]
    layout: str
    required_paths: tuple[str, ...]
    manual: tuple[str, ...] = ()
    notes: str = ""
    content_files: tuple[RemoteFile, ...] = ()
    expected_counts: tuple[tuple[str, str, int], ...] = ()
    downloadable: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "downloadable", any(f.url is not None for f in self.files))
        if not self.required_paths:
            raise ValueError(f"{self.name}: required_paths must not be empty")
        if not self.downloadable and not self.manual:
            raise ValueError(f"{self.name}: a dataset without download URLs needs manual instructions")

    def file(self, filename: str) -> RemoteFile:
        """Return the registered file called ``filename`` (``KeyError`` listing the valid names otherwise)."""
        for remote in self.files:
            if remote.filename == filename:
                return remote
        valid = ", ".join(f.filename for f in self.files) or "(none)"
        raise KeyError(f"{self.name} has no file {filename!r}; valid files: {valid}")


_TORCHVISION_CIFAR = "pytorch/vision torchvision/datasets/cifar.py (torchvision 0.29.1: url, tgz_md5)"
_TORCHVISION_CIFAR_FILES = (
    "pytorch/vision torchvision/datasets/cifar.py (torchvision 0.29.1: train_list, test_list, "
    "meta md5 of the unpacked files; md5 is the only checksum published)"
)
_TORCHVISION_VOC = "pytorch/vision torchvision/datasets/voc.py (torchvision 0.29.1: DATASET_YEAR_DICT)"
_TORCHVISION_IMAGENET = "pytorch/vision torchvision/datasets/imagenet.py (torchvision 0.29.1: ARCHIVE_META)"
_PADDLE_COCO = (
    "URL: cocodataset.org download page and google-research/ssl_detection DATA.md; md5: "
    "PaddlePaddle/PaddleDetection ppdet/utils/download.py (third-party, not published by the COCO team)"
)
_COCO_UNLABELED = (
    "URL: MixTeacher/SoftTeacher tools/dataset/prepare_coco_data.sh; md5: twsl/pytorchcocotools "
    "(CocoFiles enum), same value in an independent download script (third-party, not published by "
    "the COCO team)"
)
_PYTORCH_OOD = "kkirchheim/pytorch-ood src/pytorch_ood/dataset/img/{}.py (url and md5)"

MVTEC3D_CLASSES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")
EYECANDIES_CLASSES = (
    "CandyCane",
    "ChocolateCookie",
    "ChocolatePraline",
    "Confetto",
    "GummyBear",
    "HazelnutTruffle",
    "LicoriceSandwich",
    "Lollipop",
    "Marshmallow",
    "PeppermintCandy",
)
_IHARMONY4_SUBSETS = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")


def _cifar_info(
    classes: int, archive_md5: str, folder: str, files_layout: str, content_md5: tuple[tuple[str, str], ...]
) -> DatasetInfo:
    """CIFAR-10 or CIFAR-100 (python version): one archive, its unpacked batches with their published md5."""
    archive = f"cifar-{classes}-python.tar.gz"
    return DatasetInfo(
        name=f"cifar{classes}",
        title=f"CIFAR-{classes} (python version)",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        citation="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, tech. report 2009",
        used_by=("dmlp", "anm", "crema"),
        size=f"{163 if classes == 10 else 161} MB ({archive})",
        license="No explicit licence on the homepage; cite the technical report",
        files=(
            RemoteFile(
                archive, f"https://www.cs.toronto.edu/~kriz/{archive}", f"md5:{archive_md5}", source=_TORCHVISION_CIFAR
            ),
        ),
        layout=f"<root>/\n  {folder}/\n{files_layout}",
        required_paths=tuple(f"{folder}/{name}" for name, _ in content_md5),
        notes=(
            "Read by shared.noisy.load_cifar: each batch is checked against its published md5 (once per process) "
            "and unpickled with a restricted unpickler that builds only numpy arrays, lists, dicts and strings."
        ),
        content_files=tuple(
            RemoteFile(f"{folder}/{name}", None, f"md5:{digest}", source=_TORCHVISION_CIFAR_FILES)
            for name, digest in content_md5
        ),
    )


def _registry() -> dict[str, DatasetInfo]:
    entries = [
        DatasetInfo(
            name="imagenet1k",
            title="ImageNet-1K (ILSVRC 2012 classification)",
            homepage="https://image-net.org/challenges/LSVRC/2012/",
            citation="Russakovsky et al., ImageNet Large Scale Visual Recognition Challenge, IJCV 2015",
            used_by=("emo", "pvg"),
            size="about 147 GB (train tar ~138 GB, val tar ~6.3 GB) [sizes not verified here]",
            license="ImageNet terms of access: non-commercial research and educational use only",
            files=(
                RemoteFile(
                    "ILSVRC2012_img_train.tar",
                    None,
                    "md5:1d675b47d978889d74fa0da5fadfb00e",
                    source=_TORCHVISION_IMAGENET,
                ),
                RemoteFile(
                    "ILSVRC2012_img_val.tar", None, "md5:29b22e2961454d5413ddabcf34fc5622", source=_TORCHVISION_IMAGENET
                ),
                RemoteFile(
                    "ILSVRC2012_devkit_t12.tar.gz",
                    None,
                    "md5:fa75699e90414af021442c21a62c3abf",
                    source=_TORCHVISION_IMAGENET,
                ),
            ),
            manual=(
                (
                    "Create an account at https://image-net.org/signup and log in; request access to ILSVRC 2012 "
                    "(non-commercial terms)."
                ),
                (
                    "From https://image-net.org/challenges/LSVRC/2012/2012-downloads.php download "
                    "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz into <root>."
                ),
                "Check the archives: python -m shared.datasets verify imagenet1k --root <root>",
                (
                    "Build the class folders with torchvision (checks the md5 again, extracts train and sorts val into "
                    "wnid folders using the devkit): python -c \"import torchvision.datasets as d; "
                    "d.ImageNet('<root>', split='train'); d.ImageNet('<root>', split='val')\""
                ),
                "Check the result: python -m shared.datasets verify imagenet1k --root <root>",
            ),
            layout=(
                "<root>/\n"
                "  train/\n"
                "    n01440764/  n01440764_10026.JPEG ...   (1000 wnid folders, 1,281,167 images)\n"
                "    ...\n"
                "  val/\n"
                "    n01440764/  ILSVRC2012_val_00000293.JPEG ...   (1000 wnid folders, 50,000 images)\n"
                "    ...\n"
                "  meta.bin   (written by torchvision.datasets.ImageNet)\n"
                "  ILSVRC2012_img_train.tar  ILSVRC2012_img_val.tar  ILSVRC2012_devkit_t12.tar.gz   (may be deleted)"
            ),
            required_paths=("train", "val"),
            notes="Read with torchvision.datasets.ImageFolder(<root>/train) / (<root>/val): classes sorted by wnid.",
            expected_counts=(
                ("train", "dirs", 1000),
                ("val", "dirs", 1000),
                ("train", "files", 1_281_167),
                ("val", "files", 50_000),
            ),
        ),
        DatasetInfo(
            name="coco2017",
            title="COCO 2017 detection (train2017, val2017, unlabeled2017)",
            homepage="https://cocodataset.org/#download",
            citation="Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014",
            used_by=("mixteacher", "calibrated_teacher"),
            size="about 39 GB (train2017 ~18 GB, val2017 ~0.8 GB, annotations ~0.25 GB, unlabeled2017 ~19 GB)",
            license="Annotations CC BY 4.0; images under the Flickr terms of use of each image",
            files=(
                RemoteFile(
                    "annotations_trainval2017.zip",
                    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                    "md5:f4bbac642086de4f52a3fdda2de5fa2c",
                    source=_PADDLE_COCO,
                ),
                RemoteFile(
                    "val2017.zip",
                    "http://images.cocodataset.org/zips/val2017.zip",
                    "md5:442b8da7639aecaf257c1dceb8ba8c80",
                    source=_PADDLE_COCO,
                ),
                RemoteFile(
                    "train2017.zip",
                    "http://images.cocodataset.org/zips/train2017.zip",
                    "md5:cced6f7f71b7629ddf16f17bbcfab6b2",
                    source=_PADDLE_COCO,
                ),
                RemoteFile(
                    "image_info_unlabeled2017.zip",
                    "http://images.cocodataset.org/annotations/image_info_unlabeled2017.zip",
                    "md5:ede38355d5c3e5251bb7f8b68e2c068f",
                    source=_COCO_UNLABELED,
                ),
                RemoteFile(
                    "unlabeled2017.zip",
                    "http://images.cocodataset.org/zips/unlabeled2017.zip",
                    "md5:7ebc562819fdb32847aab79530457326",
                    source=_COCO_UNLABELED,
                ),
            ),
            layout=(
                "<root>/\n"
                "  train2017/       000000000009.jpg ...   (118,287 images)\n"
                "  val2017/         000000000139.jpg ...   (5,000 images)\n"
                "  unlabeled2017/   000000000008.jpg ...   (about 123k images; only for the COCO-full setting)\n"
                "  annotations/\n"
                "    instances_train2017.json\n"
                "    instances_val2017.json\n"
                "    image_info_unlabeled2017.json\n"
                "    instances_train2017.{fold}@{percent}.json             (python -m shared.datasets.coco_partial)\n"
                "    instances_train2017.{fold}@{percent}-unlabeled.json"
            ),
            required_paths=(
                "train2017",
                "val2017",
                "annotations/instances_train2017.json",
                "annotations/instances_val2017.json",
            ),
            notes=(
                "Boxes are xywh in pixels; category ids are not contiguous (1..90 with gaps). Partial-label splits "
                "(STAC protocol, 1/2/5/10 % x folds 1-5) come from `python -m shared.datasets.coco_partial`. "
                "SoftTeacher/MixTeacher configs read the splits from annotations/semi_supervised/: pass "
                "--out <root>/annotations/semi_supervised to get that layout."
            ),
        ),
        DatasetInfo(
            name="ade20k",
            title="ADE20K scene parsing (SceneParsing / ADEChallengeData2016, 150 classes)",
            homepage="http://sceneparsing.csail.mit.edu/",
            citation=(
                "Zhou et al., Scene Parsing through ADE20K Dataset, CVPR 2017; Zhou et al., Semantic Understanding of "
                "Scenes through the ADE20K Dataset, IJCV 2019"
            ),
            used_by=("emo",),
            size="about 923 MB (ADEChallengeData2016.zip; 20,210 train / 2,000 val images)",
            license="MIT CSAIL terms: images from LabelMe / SUN / Places under their own terms; annotations BSD-3",
            files=(
                RemoteFile(
                    "ADEChallengeData2016.zip",
                    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                    None,
                    extract_to=".",
                    source=(
                        "URL: sceneparsing.csail.mit.edu download link, also mmsegmentation docs/en/user_guides/"
                        "2_dataset_prepare.md; no md5/sha256 is published"
                    ),
                ),
            ),
            layout=(
                "<root>/ADEChallengeData2016/   (as the zip unpacks; the loaders take <root>)\n"
                "  images/training/ADE_train_00000001.jpg ...        (20,210 RGB jpg)\n"
                "  images/validation/ADE_val_00000001.jpg ...        (2,000 RGB jpg)\n"
                "  annotations/training/ADE_train_00000001.png ...   (8-bit label png, same stem as the image;\n"
                "  annotations/validation/ADE_val_00000001.png ...    0 = other/unlabelled, 1..150 = objectInfo150)\n"
                "  objectInfo150.txt  sceneCategories.txt"
            ),
            required_paths=(
                "ADEChallengeData2016/images/training",
                "ADEChallengeData2016/images/validation",
                "ADEChallengeData2016/annotations/training",
                "ADEChallengeData2016/annotations/validation",
            ),
            expected_counts=(
                ("ADEChallengeData2016/images/training", "files", 20210),
                ("ADEChallengeData2016/images/validation", "files", 2000),
                ("ADEChallengeData2016/annotations/training", "files", 20210),
                ("ADEChallengeData2016/annotations/validation", "files", 2000),
            ),
            notes=(
                "Reduce-zero-label convention (mmseg reduce_zero_label=True, used by every ADE20K table of the "
                "mmseg era): label 0 ('other objects' / unlabelled) becomes the ignore index 255 and labels "
                "1..150 become the training classes 0..149; mIoU is over these 150 classes. Labels are read with "
                "PIL (a palette or L png); an image and its label share the stem."
            ),
        ),
        DatasetInfo(
            name="voc",
            title="PASCAL VOC 2007 + 2012",
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/",
            citation="Everingham et al., The PASCAL Visual Object Classes (VOC) Challenge, IJCV 2010",
            used_by=("mixteacher",),
            size="about 2.8 GB (VOC07 trainval ~0.44 GB, VOC07 test ~0.43 GB, VOC12 trainval ~1.9 GB)",
            license="Images from Flickr under their own terms; annotations for research use (VOC terms)",
            files=(
                RemoteFile(
                    "VOCtrainval_06-Nov-2007.tar",
                    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
                    "md5:c52e279531787c972589f7e41ab4ae64",
                    source=_TORCHVISION_VOC,
                ),
                RemoteFile(
                    "VOCtest_06-Nov-2007.tar",
                    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
                    "md5:b6e924de25625d8de591ea690078ad9f",
                    source=_TORCHVISION_VOC,
                ),
                RemoteFile(
                    "VOCtrainval_11-May-2012.tar",
                    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                    "md5:6cd6e144f989b92b3379bac3b3de84fd",
                    source=_TORCHVISION_VOC,
                ),
            ),
            layout=(
                "<root>/\n"
                "  VOCdevkit/\n"
                "    VOC2007/  Annotations/*.xml  ImageSets/Main/{trainval,test}.txt  JPEGImages/*.jpg  "
                "SegmentationClass/  SegmentationObject/\n"
                "    VOC2012/  Annotations/*.xml  ImageSets/Main/trainval.txt  JPEGImages/*.jpg  "
                "SegmentationClass/  SegmentationObject/\n"
                "  annotations_json/   voc07_trainval.json  voc12_trainval.json  voc07_test.json\n"
                "                      (COCO-format conversions read by MixTeacher; not part of the official release)"
            ),
            required_paths=(
                "VOCdevkit/VOC2007/Annotations",
                "VOCdevkit/VOC2007/JPEGImages",
                "VOCdevkit/VOC2007/ImageSets/Main/test.txt",
                "VOCdevkit/VOC2012/Annotations",
                "VOCdevkit/VOC2012/JPEGImages",
            ),
            notes=(
                "Standard sizes: VOC07 trainval 5,011, VOC12 trainval 11,540, VOC07 test 4,952 images. "
                "MixTeacher evaluates VOC with the COCO evaluator on COCO-format JSONs it does not ship."
            ),
        ),
        _cifar_info(
            10,
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10-batches-py",
            (
                "    data_batch_1 ... data_batch_5   (pickled dicts: b'data' uint8 (10000, 3072) RGB planes, "
                "b'labels', b'filenames', b'batch_label')\n"
                "    test_batch\n"
                "    batches.meta                    (b'label_names', b'num_cases_per_batch', b'num_vis')\n"
                "    readme.html"
            ),
            (
                ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
                ("test_batch", "40351d587109b95175f43aff81a1287e"),
                ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
            ),
        ),
        _cifar_info(
            100,
            "eb9058c3a382ffc7106e4002c42a8d85",
            "cifar-100-python",
            (
                "    train   (pickled dict: b'data' uint8 (50000, 3072), b'fine_labels', b'coarse_labels', "
                "b'filenames', b'batch_label')\n"
                "    test    (same keys, 10000 images)\n"
                "    meta    (b'fine_label_names', b'coarse_label_names')"
            ),
            (
                ("train", "16019d7e3df5f24257cddd939b257f8d"),
                ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
                ("meta", "7973b15100ade9c7d40fb424638fde48"),
            ),
        ),
        DatasetInfo(
            name="clothing1m",
            title="Clothing1M",
            homepage="https://github.com/Cysu/noisy_label",
            citation="Xiao et al., Learning from Massive Noisy Labeled Data for Image Classification, CVPR 2015",
            used_by=("dmlp", "anm", "crema"),
            size="about 1M images in 10 image tars plus annotation files [size not verified here]",
            license="Distributed by the authors on request, for research use",
            files=(),
            manual=(
                (
                    "Request the download link by e-mail from the authors, as the official README says: contact "
                    "xiaotong[at]ee[dot]cuhk.edu.hk (Cysu/noisy_label README, section 'Clothing1M Experiments')."
                ),
                (
                    "Untar the image archives and unzip the annotations directly into <root> so that <root>/images/0 "
                    "... <root>/images/9 and the *.txt files sit side by side (tree below)."
                ),
                "Check: python -m shared.datasets verify clothing1m --root <root>",
            ),
            layout=(
                "<root>/\n"
                "  category_names_chn.txt  category_names_eng.txt\n"
                "  noisy_label_kv.txt        ('images/0/00/xxx.jpg <label>' per line, 1M noisy labels)\n"
                "  clean_label_kv.txt\n"
                "  noisy_train_key_list.txt  clean_train_key_list.txt\n"
                "  clean_val_key_list.txt    clean_test_key_list.txt\n"
                "  images/0 ... images/9\n"
                "  README.md  venn.png"
            ),
            required_paths=(
                "noisy_label_kv.txt",
                "clean_label_kv.txt",
                "noisy_train_key_list.txt",
                "clean_train_key_list.txt",
                "clean_val_key_list.txt",
                "clean_test_key_list.txt",
                "images",
            ),
            notes=(
                "14 classes. Keys in the *.txt files start with 'images/'. DivideMix's loader strips that prefix "
                "(entry[0][7:]) and joins the rest to its --data_path, so it expects the 0..9 folders directly "
                "under its data path; our loaders keep the official tree."
            ),
        ),
        DatasetInfo(
            name="mvtec3d",
            title="MVTec 3D-AD",
            homepage="https://www.mvtec.com/company/research/datasets/mvtec-3d-ad",
            citation=(
                "Bergmann, Jin, Sattlegger, Steger, The MVTec 3D-AD Dataset for Unsupervised 3D Anomaly "
                "Detection and Localization, VISAPP 2022 (arXiv 2112.09045)"
            ),
            used_by=("lsfa",),
            size="one tar.xz archive of roughly 12 GB [size not verified here]",
            license="CC BY-NC-SA 4.0 (accepted on the MVTec download form); non-commercial use only",
            files=(
                RemoteFile(
                    "mvtec_3d_anomaly_detection.tar.xz",
                    None,
                    "md5:d8bb2800fbf3ac88e798da6ae10dc819",
                    source=(
                        "md5: openvinotoolkit/anomalib src/anomalib/data/datamodules/depth/mvtec_3d.py "
                        "(DOWNLOAD_INFO hashsum, 32 hex digits = md5)"
                    ),
                ),
            ),
            manual=(
                "Open https://www.mvtec.com/company/research/datasets/mvtec-3d-ad/downloads.",
                (
                    "Fill in the form and accept the licence (CC BY-NC-SA 4.0, non-commercial); MVTec then shows the "
                    "download link."
                ),
                "Download the whole dataset, mvtec_3d_anomaly_detection.tar.xz, into <root>.",
                (
                    "Verify and unpack it safely: python -m shared.datasets download mvtec3d --root <root> "
                    "(finds the archive you placed there, checks its md5 and extracts it into <root>)."
                ),
                "Check: python -m shared.datasets verify mvtec3d --root <root>",
                (
                    "LSFA/M3DM preprocessing (RANSAC background-plane removal) rewrites files in place: run it on a "
                    "copy of <root>, never on the only copy."
                ),
            ),
            layout=(
                "<root>/\n"
                "  bagel/ cable_gland/ carrot/ cookie/ dowel/ foam/ peach/ potato/ rope/ tire/\n"
                "  <class>/\n"
                "    train/good/rgb/000.png ...      train/good/xyz/000.tiff ...   (H x W x 3 float32 organised "
                "point cloud, (0,0,0) = no point)\n"
                "    validation/good/rgb/  validation/good/xyz/\n"
                "    test/good/{rgb,xyz,gt}/\n"
                "    test/<defect>/rgb/000.png  test/<defect>/xyz/000.tiff  test/<defect>/gt/000.png\n"
                "  (defects per class, e.g. combined, contamination, crack, cut, hole; loaders list them with "
                "sorted(os.listdir))"
            ),
            required_paths=tuple(
                p for c in MVTEC3D_CLASSES for p in (f"{c}/train/good/rgb", f"{c}/train/good/xyz", f"{c}/test")
            ),
            notes=(
                "The archive unpacks to the ten class folders at the top level (as anomalib's MVTec3D datamodule "
                "reads them). M3DM/LSFA do not use validation/. Evaluation runs at 224 x 224."
            ),
        ),
        DatasetInfo(
            name="eyecandies",
            title="Eyecandies",
            homepage="https://eyecan-ai.github.io/eyecandies/",
            citation=(
                "Bonfiglioli, Toschi, Silvestri, Fioraio, De Gregorio, The Eyecandies Dataset for "
                "Unsupervised Multimodal Anomaly Detection and Localization, ACCV 2022"
            ),
            used_by=("lsfa",),
            size="ten per-category archives on Google Drive [total size not verified here]",
            license="Not stated on the project page or README read here; ask the authors before redistribution",
            files=(),
            manual=(
                (
                    "Either install the authors' tool (pip install git+https://github.com/eyecan-ai/eyecandies.git) "
                    "and run: pipelime -m eyecandies ec-get +o <root>"
                ),
                (
                    "or download the ten category archives by hand from the Google Drive links on "
                    "https://eyecan-ai.github.io/eyecandies/download (Candy Cane, Chocolate Cookie, Chocolate Praline, "
                    "Confetto, Gummy Bear, Hazelnut Truffle, Licorice Sandwich, Lollipop, Marshmallow, Peppermint "
                    "Candy) and unpack each into <root>/<Category>/ (some users report the files are tar archives "
                    "despite a .zip name; use `tar -xf` if unzip fails)."
                ),
                "Check: python -m shared.datasets verify eyecandies --root <root>",
                (
                    "For LSFA/M3DM, convert to the MVTec-3D-like layout with the package's preprocessing "
                    "(depth -> organised point cloud, RGB = image_4)."
                ),
            ),
            layout=(
                "<root>/\n"
                "  CandyCane/ ChocolateCookie/ ChocolatePraline/ Confetto/ GummyBear/ HazelnutTruffle/\n"
                "  LicoriceSandwich/ Lollipop/ Marshmallow/ PeppermintCandy/\n"
                "  <Category>/\n"
                "    train/data/         1000 samples: 000_image_0.png ... 000_image_5.png, 000_depth.png (16 bit), "
                "000_info_depth.yaml, 000_normals.png, 000_pose.txt, ...\n"
                "    val/data/           100 samples\n"
                "    test_public/data/   50 samples (25 good, 25 bad) with 00_mask.png and per-type masks\n"
                "    test_private/data/  400 samples without annotations"
            ),
            required_paths=tuple(p for c in EYECANDIES_CLASSES for p in (f"{c}/train/data", f"{c}/test_public/data")),
            notes=(
                "Depth png is normalised to 0..65535; metres = png / 65535 * (max - min) + min with min/max from "
                "info_depth.yaml; focal length 711.11 px, principal point at the image centre."
            ),
        ),
        DatasetInfo(
            name="cityscapes",
            title="Cityscapes (fine annotations)",
            homepage="https://www.cityscapes-dataset.com/",
            citation="Cordts et al., The Cityscapes Dataset for Semantic Urban Scene Understanding, CVPR 2016",
            used_by=("energy_anomaly_seg",),
            size="about 11.3 GB (leftImg8bit_trainvaltest.zip ~11 GB, gtFine_trainvaltest.zip ~241 MB)",
            license="Cityscapes terms of use: non-commercial research purposes, registration required",
            files=(
                RemoteFile(
                    "gtFine_trainvaltest.zip",
                    None,
                    None,
                    source="package name from mcordts/cityscapesScripts csDownload; checksum not published",
                ),
                RemoteFile(
                    "leftImg8bit_trainvaltest.zip",
                    None,
                    None,
                    source="package name from mcordts/cityscapesScripts csDownload; checksum not published",
                ),
            ),
            manual=(
                "Register at https://www.cityscapes-dataset.com/register/ and wait for the account to be approved.",
                "pip install cityscapesscripts",
                (
                    "csDownload -d <root> gtFine_trainvaltest.zip leftImg8bit_trainvaltest.zip   "
                    "(asks for your Cityscapes user name and password; `csDownload -l` lists packages)"
                ),
                (
                    "Unpack both into <root>: python -m shared.datasets download cityscapes --root <root> "
                    "(finds the two zips there and extracts them safely), or `unzip -o <zip> -d <root>`."
                ),
                "Create the 19-class train-id labels: CITYSCAPES_DATASET=<root> csCreateTrainIdLabelImgs",
                "Check: python -m shared.datasets verify cityscapes --root <root>",
            ),
            layout=(
                "<root>/\n"
                "  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png   (2048 x 1024; 2975 / "
                "500 / 1525 images)\n"
                "  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png\n"
                "                                  ..._gtFine_instanceIds.png  ..._gtFine_color.png  "
                "..._gtFine_polygons.json\n"
                "                                  ..._gtFine_labelTrainIds.png   (made by csCreateTrainIdLabelImgs; "
                "19 classes, 255 = ignore)"
            ),
            required_paths=("leftImg8bit/train", "leftImg8bit/val", "gtFine/train", "gtFine/val"),
            notes="SLEEG's mmseg config expects this tree at data/cityscape/ (no final 's').",
        ),
        DatasetInfo(
            name="fishyscapes",
            title="Fishyscapes (Lost & Found and Static validation sets)",
            homepage="https://fishyscapes.com/dataset",
            citation=(
                "Blum et al., The Fishyscapes Benchmark: Measuring Blind Spots in Semantic Segmentation, "
                "IJCV 2021 (arXiv 1904.03215)"
            ),
            used_by=("energy_anomaly_seg",),
            size="FS L&F labels small; Lost and Found leftImg8bit.zip several GB [size not verified here]",
            license="Fishyscapes labels for benchmark use; Lost and Found images under their authors' terms",
            files=(
                RemoteFile(
                    "fishyscapes_lostandfound.zip",
                    "http://robotics.ethz.ch/~asl-datasets/Fishyscapes/fishyscapes_lostandfound.zip",
                    "md5:0d3bf7c0ec38bd50b84f3d8aaa4b2e26",
                    extract_to="fishyscapes_lostandfound",
                    source=_PYTORCH_OOD.format("fishyscapes"),
                ),
                RemoteFile(
                    "leftImg8bit.zip",
                    "http://wwwlehre.dhbw-stuttgart.de/~sgehrig/lostAndFoundDataset/leftImg8bit.zip",
                    "md5:08eaa79ce05126f6bd22a3ca563746d0",
                    extract_to="lostandfound",
                    source=_PYTORCH_OOD.format("fishyscapes"),
                ),
            ),
            manual=(
                (
                    "FS Lost & Found (100 validation images) downloads automatically: python -m shared.datasets "
                    "download fishyscapes --root <root>."
                ),
                (
                    "FS Static (30 validation images) is not downloaded automatically: get the validation data from "
                    "https://fishyscapes.com/dataset and place the *_rgb.jpg / *_labels.png pairs in <root>/fs_static/."
                ),
                (
                    "Alternative used by PEBAL/SLEEG users: the SynBoost preprocessed archive "
                    "http://robotics.ethz.ch/~asl-datasets/Dissimilarity/data_processed.tar (FS L&F, FS Static and "
                    "Road Anomaly under final_dataset/, with original/ and labels/ folders; no checksum published)."
                ),
                "Test-set numbers need a submission to fishyscapes.com; only the validation sets are public.",
            ),
            layout=(
                "<root>/\n"
                "  fishyscapes_lostandfound/   0000_04_Maurener_Weg_8_000000_000030_labels.png ...   (FS L&F labels: "
                "0 in-distribution, 1 anomaly, 255 void)\n"
                "  lostandfound/leftImg8bit/{train,test}/<sequence>/<sequence>_<frame>_leftImg8bit.png   (label "
                "'0000_<sequence>_..._labels.png' -> image '<sequence>/<sequence>_..._leftImg8bit.png')\n"
                "  fs_static/   <id>_rgb.jpg  <id>_labels.png   (manual, see above)"
            ),
            required_paths=("fishyscapes_lostandfound", "lostandfound/leftImg8bit"),
            notes=(
                "SLEEG's scripts read ./data/segmentme/fs_static/*_rgb.jpg + *_labels.png and the road-anomaly-"
                "benchmark layout dataset_FishyLAF/{leftImg8bit,ood}; its evaluator hard-codes ignore_id = 2, so "
                "map void (255) to the ignore value before computing metrics."
            ),
        ),
        DatasetInfo(
            name="road_anomaly",
            title="Road Anomaly (Lis et al.)",
            homepage="https://www.epfl.ch/labs/cvlab/data/road-anomaly/",
            citation="Lis, Nakka, Fua, Salzmann, Detecting the Unexpected via Image Resynthesis, ICCV 2019",
            used_by=("energy_anomaly_seg",),
            size="about 24 MB (RoadAnomaly_jpg.zip) [size not verified here]",
            license="Research use; images collected from the web and not owned by the authors",
            files=(
                RemoteFile(
                    "RoadAnomaly_jpg.zip",
                    "https://datasets-cvlab.epfl.ch/2019-road-anomaly/RoadAnomaly_jpg.zip",
                    "md5:87a0908e5c72827824693913cf2e4fb0",
                    source=_PYTORCH_OOD.format("roadanomaly"),
                ),
            ),
            layout=(
                "<root>/\n"
                "  RoadAnomaly_jpg/\n"
                "    frames/<name>.jpg                            (60 images, 1280 x 720)\n"
                "    frames/<name>.labels/labels_semantic.png     (anomaly pixels > 0)"
            ),
            required_paths=("RoadAnomaly_jpg/frames",),
            notes=(
                "The SegmentMeIfYouCan benchmark (RoadAnomaly21 / RoadObstacle21) is a separate entry: "
                "`python -m shared.datasets info smiyc`; its layout is dataset_AnomalyTrack/{images,labels_masks}."
            ),
        ),
        DatasetInfo(
            name="smiyc",
            title="SegmentMeIfYouCan (RoadAnomaly21, RoadObstacle21 public validation images)",
            homepage="https://segmentmeifyoucan.com/datasets",
            citation="Chan et al., SegmentMeIfYouCan: A Benchmark for Anomaly Segmentation, NeurIPS 2021 D&B",
            used_by=("energy_anomaly_seg",),
            size="two zip archives from Zenodo [size not verified here]",
            license="RoadObstacle21 CC BY 4.0; RoadAnomaly21 images CC BY, CC BY-SA or public domain",
            files=(
                RemoteFile(
                    "dataset_AnomalyTrack.zip",
                    "https://zenodo.org/record/5270237/files/dataset_AnomalyTrack.zip",
                    "md5:231bf79ed58924bcd33d9cbe22e61076",
                    source=_PYTORCH_OOD.format("smiyc"),
                ),
                RemoteFile(
                    "dataset_ObstacleTrack.zip",
                    "https://zenodo.org/record/5281633/files/dataset_ObstacleTrack.zip",
                    "md5:895fb36d18765482cc291f69e63d6da6",
                    source=_PYTORCH_OOD.format("smiyc"),
                ),
            ),
            layout=(
                "<root>/\n"
                "  dataset_AnomalyTrack/   images/<id>.jpg   labels_masks/<id>_labels_semantic.png   (10 labelled "
                "validation images)\n"
                "  dataset_ObstacleTrack/  images/<id>.webp  labels_masks/<id>_labels_semantic.png   (30 labelled "
                "validation images)"
            ),
            required_paths=(
                "dataset_AnomalyTrack/images",
                "dataset_AnomalyTrack/labels_masks",
                "dataset_ObstacleTrack/images",
                "dataset_ObstacleTrack/labels_masks",
            ),
            notes="Labels: 0 normal, 1 anomaly, 255 void. Test labels are hidden (submission to the benchmark).",
        ),
        DatasetInfo(
            name="iharmony4",
            title="iHarmony4 (HCOCO, HAdobe5k, HFlickr, Hday2night)",
            homepage="https://github.com/bcmi/Image-Harmonization-Dataset-iHarmony4",
            citation="Cong et al., DoveNet: Deep Image Harmonization via Domain Verification, CVPR 2020",
            used_by=("frih",),
            size="73,146 composites (65,742 train / 7,404 test) [archive sizes not verified here]",
            license="Research use; derived from COCO, MIT-Adobe FiveK, Flickr and day2night images",
            files=(),
            manual=(
                (
                    "Open https://github.com/bcmi/Image-Harmonization-Dataset-iHarmony4 and download the four "
                    "sub-datasets (HCOCO, HAdobe5k, HFlickr, Hday2night) from the Baidu Cloud links or the "
                    "'Alternative_address' links on bcmi.cloud given in its README."
                ),
                (
                    "Unpack each sub-dataset into <root>/<subset>/ so that it holds composite_images/, masks/, "
                    "real_images/ and the <subset>_train.txt / <subset>_test.txt split files."
                ),
                "Optionally resize HAdobe5k offline so that the longer side is at most 1024 px (saic-vul protocol).",
                "Check: python -m shared.datasets verify iharmony4 --root <root>",
            ),
            layout=(
                "<root>/\n"
                "  HCOCO/ HAdobe5k/ HFlickr/ Hday2night/\n"
                "  <subset>/\n"
                "    composite_images/<id>_<fgid>_<k>.jpg   (e.g. c108140_1698416_1.jpg)\n"
                "    masks/<id>_<fgid>.png                  (foreground mask of that composite)\n"
                "    real_images/<id>.jpg                   (the target)\n"
                "    <subset>_train.txt  <subset>_test.txt  (one composite file name per line)\n"
                "  IHD_train.txt  IHD_test.txt   (optional, DoveNet-style: 'HCOCO/composite_images/xxx.jpg' per line)"
            ),
            required_paths=tuple(
                p
                for s in _IHARMONY4_SUBSETS
                for p in (
                    f"{s}/composite_images",
                    f"{s}/masks",
                    f"{s}/real_images",
                    f"{s}/{s}_train.txt",
                    f"{s}/{s}_test.txt",
                )
            ),
            notes=(
                "Train/test sizes: HCOCO 38,545/4,283, HAdobe5k 19,437/2,160, HFlickr 7,449/828, Hday2night "
                "311/133. IDs never contain '_', so real = first token, mask = composite name without the last "
                "token."
            ),
        ),
    ]
    return {entry.name: entry for entry in entries}


REGISTRY: dict[str, DatasetInfo] = _registry()


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted."""
    return sorted(REGISTRY)


def get_dataset(name: str) -> DatasetInfo:
    """Return the registry entry for ``name``; ``KeyError`` listing the valid names when it is unknown."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}") from None
