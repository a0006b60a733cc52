"""Label sets, palettes and feature widths: the one place where class names, counts, colours and the
embedding width of each 2D feature extractor live.

ScanNet-20 and S3DIS-13 are listed in the order used by OpenScene's and 3DSS-VLG's data files,
so a label id in a ``.pth`` file indexes these tuples directly.
"""
from dataclasses import dataclass

IGNORE_LABEL = 255  # OpenScene's files mark unannotated points with 255 (some releases use -100)

SCANNET_LABELS_20 = (
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
    'picture', 'counter', 'desk', 'curtain', 'refrigerator', 'shower curtain', 'toilet', 'sink',
    'bathtub', 'otherfurniture')

S3DIS_LABELS_13 = (
    'ceiling', 'floor', 'wall', 'beam', 'column', 'window', 'door', 'table', 'chair', 'sofa',
    'bookcase', 'board', 'clutter')

# ScanNet benchmark colours (by NYU40 id in ScanNet's tools), listed here in label order.
SCANNET_PALETTE_20 = (
    (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
    (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189),
    (196, 156, 148), (23, 190, 207), (247, 182, 210), (219, 219, 141), (255, 127, 14),
    (158, 218, 229), (44, 160, 44), (112, 128, 144), (227, 119, 194), (82, 84, 163))

S3DIS_PALETTE_13 = (
    (0, 255, 0), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 255), (100, 100, 255),
    (200, 200, 100), (170, 120, 200), (255, 0, 0), (200, 100, 100), (10, 200, 100),
    (200, 200, 200), (170, 110, 20))  # clutter: brown, not the usual (50, 50, 50), which black 'unlabeled' hides

UNLABELED_COLOR = (0, 0, 0)  # 'unlabeled' / 'no feature' / ignored points


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    labels: tuple          # class names, in label-id order
    palette: tuple         # RGB per class, same order
    text_labels: tuple     # names given to the text encoder

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def unlabeled_index(self) -> int:
        """Index of the extra 'unlabeled' class used for points without a 2D feature."""
        return len(self.labels)

    def palette_with_unlabeled(self):
        return list(self.palette) + [UNLABELED_COLOR]


def _scannet_text_labels():
    # As upstream: the last ScanNet class 'otherfurniture' is prompted as 'other'.
    names = list(SCANNET_LABELS_20)
    names[-1] = 'other'
    return tuple(names)


_DATASETS = {
    'scannet': DatasetInfo('scannet', SCANNET_LABELS_20, SCANNET_PALETTE_20, _scannet_text_labels()),
    's3dis': DatasetInfo('s3dis', S3DIS_LABELS_13, S3DIS_PALETTE_13, S3DIS_LABELS_13),
}


def dataset_info(name: str) -> DatasetInfo:
    """Label set of a dataset. Accepts 'scannet', 'scannet_3d', 's3dis', 'S3DIS_3d' (not 'scannet200')."""
    key = name.lower()
    for known, info in _DATASETS.items():
        if key in (known, known + '_3d'):
            return info
    raise ValueError(f"unknown label set '{name}': expected one of {sorted(_DATASETS)}")
