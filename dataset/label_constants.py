"""Label sets, palettes and feature widths: the one place where class names, counts, colours and the
embedding width of each 2D feature extractor live.

ScanNet-20 and S3DIS-13 are listed in the order used by OpenScene's and 3DSS-VLG's data files,
so a label id in a ``.pth`` file indexes these tuples directly. ScanNet200 (``scannet200``, the benchmark of
Rozenberszki et al., ECCV 2022) is listed in its benchmark's order, label i = the i-th of its 200 category ids.

Each label set also names the classes its f-mIoU leaves out (``fmiou_exclude``, the "foreground" mIoU later
papers report: RegionPLC, PLA) and, for ScanNet200, its head / common / tail splits (``splits``);
``pipeline/metric.py`` computes both.
"""
import colorsys
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

# ScanNet200: (category id, class name, split) in the benchmark's label order. The id is the ``id`` column of ScanNet's
# scannetv2-labels.combined.tsv (one row per raw category; prep/scannet.py maps raw categories through it); the split
# is the benchmark's by annotation frequency: H head (66 classes), C common (68), T tail (66).
_SCANNET200 = (
    (1, 'wall', 'H'), (2, 'chair', 'H'), (3, 'floor', 'H'), (4, 'table', 'H'), (5, 'door', 'H'), (6, 'couch', 'H'),
    (7, 'cabinet', 'H'), (8, 'shelf', 'H'), (9, 'desk', 'H'), (10, 'office chair', 'H'), (11, 'bed', 'H'),
    (13, 'pillow', 'H'), (14, 'sink', 'H'), (15, 'picture', 'H'), (16, 'window', 'H'), (17, 'toilet', 'H'),
    (18, 'bookshelf', 'H'), (19, 'monitor', 'H'), (21, 'curtain', 'H'), (22, 'book', 'H'), (23, 'armchair', 'H'),
    (24, 'coffee table', 'H'), (26, 'box', 'H'), (27, 'refrigerator', 'H'), (28, 'lamp', 'H'),
    (29, 'kitchen cabinet', 'H'), (31, 'towel', 'H'), (32, 'clothes', 'H'), (33, 'tv', 'H'), (34, 'nightstand', 'H'),
    (35, 'counter', 'H'), (36, 'dresser', 'H'), (38, 'stool', 'H'), (39, 'cushion', 'C'), (40, 'plant', 'H'),
    (41, 'ceiling', 'H'), (42, 'bathtub', 'H'), (44, 'end table', 'C'), (45, 'dining table', 'C'),
    (46, 'keyboard', 'C'), (47, 'bag', 'C'), (48, 'backpack', 'H'), (49, 'toilet paper', 'C'), (50, 'printer', 'C'),
    (51, 'tv stand', 'H'), (52, 'whiteboard', 'H'), (54, 'blanket', 'C'), (55, 'shower curtain', 'H'),
    (56, 'trash can', 'H'), (57, 'closet', 'H'), (58, 'stairs', 'H'), (59, 'microwave', 'C'), (62, 'stove', 'H'),
    (63, 'shoe', 'C'), (64, 'computer tower', 'C'), (65, 'bottle', 'C'), (66, 'bin', 'C'), (67, 'ottoman', 'C'),
    (68, 'bench', 'C'), (69, 'board', 'H'), (70, 'washing machine', 'H'), (71, 'mirror', 'H'), (72, 'copier', 'H'),
    (73, 'basket', 'C'), (74, 'sofa chair', 'H'), (75, 'file cabinet', 'H'), (76, 'fan', 'C'), (77, 'laptop', 'C'),
    (78, 'shower', 'H'), (79, 'paper', 'T'), (80, 'person', 'C'), (82, 'paper towel dispenser', 'C'),
    (84, 'oven', 'C'), (86, 'blinds', 'H'), (87, 'rack', 'C'), (88, 'plate', 'T'), (89, 'blackboard', 'H'),
    (90, 'piano', 'C'), (93, 'suitcase', 'C'), (95, 'rail', 'C'), (96, 'radiator', 'H'), (97, 'recycling bin', 'H'),
    (98, 'container', 'C'), (99, 'wardrobe', 'H'), (100, 'soap dispenser', 'T'), (101, 'telephone', 'C'),
    (102, 'bucket', 'T'), (103, 'clock', 'T'), (104, 'stand', 'C'), (105, 'light', 'C'), (106, 'laundry basket', 'C'),
    (107, 'pipe', 'C'), (110, 'clothes dryer', 'H'), (112, 'guitar', 'T'), (115, 'toilet paper holder', 'T'),
    (116, 'seat', 'C'), (118, 'speaker', 'T'), (120, 'column', 'C'), (121, 'bicycle', 'C'), (122, 'ladder', 'C'),
    (125, 'bathroom stall', 'H'), (128, 'shower wall', 'H'), (130, 'cup', 'T'), (131, 'jacket', 'C'),
    (132, 'storage bin', 'C'), (134, 'coffee maker', 'C'), (136, 'dishwasher', 'C'), (138, 'paper towel roll', 'T'),
    (139, 'machine', 'C'), (140, 'mat', 'C'), (141, 'windowsill', 'C'), (145, 'bar', 'T'), (148, 'toaster', 'T'),
    (154, 'bulletin board', 'C'), (155, 'ironing board', 'T'), (156, 'fireplace', 'C'), (157, 'soap dish', 'T'),
    (159, 'kitchen counter', 'H'), (161, 'doorframe', 'H'), (163, 'toilet paper dispenser', 'T'),
    (165, 'mini fridge', 'C'), (166, 'fire extinguisher', 'T'), (168, 'ball', 'T'), (169, 'hat', 'T'),
    (170, 'shower curtain rod', 'T'), (177, 'water cooler', 'C'), (180, 'paper cutter', 'T'), (185, 'tray', 'T'),
    (188, 'shower door', 'C'), (191, 'pillar', 'C'), (193, 'ledge', 'C'), (195, 'toaster oven', 'T'),
    (202, 'mouse', 'T'), (208, 'toilet seat cover dispenser', 'T'), (213, 'furniture', 'C'), (214, 'cart', 'C'),
    (221, 'storage container', 'T'), (229, 'scale', 'T'), (230, 'tissue box', 'T'), (232, 'light switch', 'T'),
    (233, 'crate', 'T'), (242, 'power outlet', 'T'), (250, 'decoration', 'C'), (261, 'sign', 'T'),
    (264, 'projector', 'T'), (276, 'closet door', 'C'), (283, 'vacuum cleaner', 'C'), (286, 'candle', 'T'),
    (300, 'plunger', 'T'), (304, 'stuffed animal', 'T'), (312, 'headphones', 'T'), (323, 'dish rack', 'C'),
    (325, 'broom', 'T'), (331, 'guitar case', 'T'), (342, 'range hood', 'C'), (356, 'dustpan', 'T'),
    (370, 'hair dryer', 'T'), (392, 'water bottle', 'T'), (395, 'handicap bar', 'T'), (399, 'purse', 'T'),
    (408, 'vent', 'T'), (417, 'shower floor', 'T'), (488, 'water pitcher', 'T'), (540, 'mailbox', 'H'),
    (562, 'bowl', 'T'), (570, 'paper bag', 'T'), (572, 'alarm clock', 'T'), (581, 'music stand', 'T'),
    (609, 'projector screen', 'C'), (748, 'divider', 'C'), (776, 'laundry detergent', 'T'),
    (1156, 'bathroom counter', 'C'), (1163, 'object', 'H'), (1164, 'bathroom vanity', 'H'), (1165, 'closet wall', 'H'),
    (1166, 'laundry hamper', 'C'), (1167, 'bathroom stall door', 'C'), (1168, 'ceiling light', 'C'),
    (1169, 'trash bin', 'C'), (1170, 'dumbbell', 'T'), (1171, 'stair rail', 'H'), (1172, 'tube', 'T'),
    (1173, 'bathroom cabinet', 'C'), (1174, 'cd case', 'T'), (1175, 'closet rod', 'T'), (1176, 'coffee kettle', 'T'),
    (1178, 'structure', 'C'), (1179, 'shower head', 'T'), (1180, 'keyboard piano', 'T'),
    (1181, 'case of water bottles', 'T'), (1182, 'coat rack', 'T'), (1183, 'storage organizer', 'C'),
    (1184, 'folded chair', 'T'), (1185, 'fire alarm', 'T'), (1186, 'power strip', 'T'), (1187, 'calendar', 'T'),
    (1188, 'poster', 'T'), (1189, 'potted plant', 'C'), (1190, 'luggage', 'T'), (1191, 'mattress', 'C'),
)
SCANNET200_IDS = tuple(c[0] for c in _SCANNET200)
SCANNET200_LABELS = tuple(c[1] for c in _SCANNET200)
SCANNET200_SPLITS = tuple((split, tuple(c[1] for c in _SCANNET200 if c[2] == tag))
                          for split, tag in (('head', 'H'), ('common', 'C'), ('tail', 'T')))


def hsv_palette(n, hues=36, saturations=(0.45, 0.7, 1.0), values=(0.55, 0.78, 1.0)):
    """``n`` distinct RGB colours, deterministic: from a fixed HSV grid (``hues`` steps x saturations x values),
    the first colour, then each time the grid colour farthest (in RGB) from those already taken. For ScanNet200 the
    200 colours are at least 23 apart; none is black ('unlabeled') or a grey (the ignored points)."""
    grid = [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h / hues, s, v))
            for v in values for s in saturations for h in range(hues)]
    if n > len(grid):
        raise ValueError(f'hsv_palette: {n} colours asked, the grid has {len(grid)}')
    dist = lambda a, b: sum((x - y) ** 2 for x, y in zip(a, b))
    taken, nearest = [grid[0]], [dist(c, grid[0]) for c in grid]
    while len(taken) < n:
        j = max(range(len(grid)), key=nearest.__getitem__)  # the first of equals: deterministic
        taken.append(grid[j])
        nearest = [min(d, dist(c, grid[j])) for d, c in zip(nearest, grid)]
    return tuple(taken)


SCANNET200_PALETTE = hsv_palette(len(SCANNET200_LABELS))

# f-mIoU: the classes left out of the "foreground" mean (RegionPLC / PLA: ScanNet without wall, floor and
# otherfurniture). S3DIS: the room's structure, ceiling, floor and wall (our choice, by analogy). ScanNet200: wall
# and floor, the two of ScanNet's three that ScanNet200 has (our choice; its benchmark reports head / common / tail).
SCANNET_FMIOU_EXCLUDE = ('wall', 'floor', 'otherfurniture')
S3DIS_FMIOU_EXCLUDE = ('ceiling', 'floor', 'wall')
SCANNET200_FMIOU_EXCLUDE = ('wall', 'floor')

UNLABELED_COLOR = (0, 0, 0)  # 'unlabeled' / 'no feature' / ignored points


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    labels: tuple          # class names, in label-id order
    palette: tuple         # RGB per class, same order
    text_labels: tuple     # names given to the text encoder
    fmiou_exclude: tuple = ()  # classes f-mIoU leaves out (pipeline/metric.py)
    splits: tuple = ()     # ((split name, class names), ...): the benchmark's splits, mIoU reported per split

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
    'scannet': DatasetInfo('scannet', SCANNET_LABELS_20, SCANNET_PALETTE_20, _scannet_text_labels(),
                           fmiou_exclude=SCANNET_FMIOU_EXCLUDE),
    's3dis': DatasetInfo('s3dis', S3DIS_LABELS_13, S3DIS_PALETTE_13, S3DIS_LABELS_13,
                         fmiou_exclude=S3DIS_FMIOU_EXCLUDE),
    # the class names as they are: no class is 'other', so none is prompted as such (pipeline/text_embeddings.py)
    'scannet200': DatasetInfo('scannet200', SCANNET200_LABELS, SCANNET200_PALETTE, SCANNET200_LABELS,
                              fmiou_exclude=SCANNET200_FMIOU_EXCLUDE, splits=SCANNET200_SPLITS),
}


def label_set_of(class_names):
    """The known label set whose classes are ``class_names`` (in order), or None (a query's own labels)."""
    names = tuple(class_names)
    return next((info for info in _DATASETS.values() if info.labels == names), None)


def dataset_info(name: str) -> DatasetInfo:
    """Label set of a dataset. Accepts 'scannet', 'scannet_3d', 's3dis', 'S3DIS_3d', 'scannet200'."""
    key = name.lower()
    for known, info in _DATASETS.items():
        if key in (known, known + '_3d'):
            return info
    raise ValueError(f"unknown label set '{name}': expected one of {sorted(_DATASETS)}")
