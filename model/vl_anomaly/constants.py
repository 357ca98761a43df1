"""Class lists and colours shared by the whole package."""

#: The 19 Cityscapes train-ID classes, in train-ID order (the output channel order of every segmenter here).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

#: Official Cityscapes colours (RGB) for the 19 train IDs.
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

#: Train IDs of the classes a vehicle may drive on (road, sidewalk): the default drivable region.
DRIVABLE_CLASS_IDS: tuple[int, ...] = (0, 1)

CLASS_LISTS = {"cityscapes": CITYSCAPES_CLASSES}
