"""Dataset loaders: the shared copies, and every official layout on tiny fixtures built here."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vl_anomaly.datasets import DatasetError, list_datasets, load_dataset

H, W = 32, 48


def _image(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((H, W, 3), value, np.uint8)
    img[:, :, 0] = np.arange(W, dtype=np.uint8)[None]
    assert cv2.imwrite(str(path), img)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _label(path, values=(0, 1), shape=(H, W), channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    lab = np.full(shape, values[0], np.uint8)
    lab[5:10, 5:10] = values[1]
    if len(values) > 2:
        lab[-3:] = values[2]
    if channels == 3:
        lab = np.repeat(lab[..., None], 3, axis=2)
    assert cv2.imwrite(str(path), lab)


@pytest.mark.parametrize("name,count,values", [("road_anomaly", 60, {0, 1}), ("road_anomaly_21", 10, {0, 1, 255}),
                                               ("road_obstacle_21", 30, {0, 1, 255}), ("fs_static", 30, {0, 1, 255})])
def test_shared_copies(name, count, values):
    ds = load_dataset(name)
    assert len(ds) == count and ds.layout == "shared" and ds.count_note() == ""
    seen = set()
    for i in range(len(ds)):
        seen |= set(np.unique(ds.load_label(i)).tolist())
    assert seen == values
    fid, image, label = ds.load(0)
    assert image.shape[:2] == label.shape and image.dtype == np.uint8


def test_road_anomaly_official_layout(tmp_path):
    root = tmp_path / "RoadAnomaly"
    names = ["animals01.webp", "cones02.webp"]
    (root / "frames").mkdir(parents=True)
    (root / "frame_list.json").write_text(json.dumps(names))
    for n in names:
        _image(root / "frames" / n)
        _label(root / "frames" / f"{n[:-5]}.labels" / "labels_semantic.png", (0, 2), channels=3)
    ds = load_dataset(f"road_anomaly={root}")
    assert ds.layout == "official" and len(ds) == 2 and "60" in ds.count_note()
    fid, image, label = ds.load(1)
    assert fid == "cones02" and set(np.unique(label)) == {0, 1} and label[7, 7] == 1


@pytest.mark.parametrize("name,folder,ext", [("road_anomaly_21", "dataset_AnomalyTrack", "jpg"),
                                             ("road_obstacle_21", "dataset_ObstacleTrack", "webp")])
def test_smiyc_official_layout_uses_labelled_frames_only(tmp_path, name, folder, ext):
    base = tmp_path / folder
    for fid in ("validation0000", "validation0001", "test0000"):
        _image(base / "images" / f"{fid}.{ext}")
    for fid in ("validation0000", "validation0001"):
        _label(base / "labels_masks" / f"{fid}_labels_semantic.png", (0, 1, 255))
    ds = load_dataset(f"{name}={tmp_path}")
    assert [f.frame_id for f in ds.frames] == ["validation0000", "validation0001"]
    assert set(np.unique(ds.load(0)[2])) == {0, 1, 255}


def test_fs_static_official_adds_overlay_to_cityscapes_image(tmp_path):
    root = tmp_path / "fs"
    cs_id = "frankfurt_000000_000294"
    base = _image(root / "leftImg8bit" / "val" / "frankfurt" / f"{cs_id}_leftImg8bit.png", value=250)
    _label(root / "fs_val_v3" / f"0007_{cs_id}_labels.png", (0, 1, 255))
    overlay = np.zeros((H, W, 3), np.int64)
    overlay[5:10, 5:10] = [20, -300, 5]
    np.savez(root / "fs_val_v3" / "0007_rgb.npz", rgb=overlay)
    ds = load_dataset(f"fs_static={root}")
    fid, image, label = ds.load(0)
    assert fid == "0007" and ds.layout == "official"
    expected = np.clip(base.astype(int) + overlay, 0, 255).astype(np.uint8)
    assert np.array_equal(image, expected)


def test_fs_lost_found_official_layout(tmp_path):
    root = tmp_path / "fslaf"
    laf_id = "04_Maurener_Weg_8_000000_000030"
    _image(root / "leftImg8bit" / "test" / "04_Maurener_Weg_8" / f"{laf_id}_leftImg8bit.png")
    _label(root / "labels" / f"0000_{laf_id}_labels.png", (0, 1, 255))
    ds = load_dataset(f"fs_lost_found={root}")
    assert len(ds) == 1 and ds.frames[0].frame_id == "0000"
    assert set(np.unique(ds.load(0)[2])) == {0, 1, 255}


def test_lost_and_found_label_mapping(tmp_path):
    root = tmp_path / "laf"
    fid = "02_Hanns_Klemm_Str_44_000000_000100"
    _image(root / "leftImg8bit" / "test" / "02_Hanns_Klemm_Str_44" / f"{fid}_leftImg8bit.png")
    _label(root / "gtCoarse" / "test" / "02_Hanns_Klemm_Str_44" / f"{fid}_gtCoarse_labelIds.png", (1, 7, 0))
    _, _, label = load_dataset(f"lost_and_found={root}").load(0)
    assert label[0, 0] == 0 and label[7, 7] == 1 and label[-1, 0] == 255


def test_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cityscapes_val")
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset(f"road_anomaly_21={tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="images and"):
        load_dataset(f"road_obstacle_21={tmp_path / 'empty'}")
    with pytest.raises(DatasetError, match="no shared copy"):
        load_dataset("lost_and_found")
    shared = tmp_path / "shared_layout"
    _image(shared / "images" / "0.png")
    _image(shared / "images" / "1.png")
    _label(shared / "labels_masks" / "0.png", (0, 1))
    with pytest.raises(DatasetError, match="have no label"):
        load_dataset(f"road_anomaly_21={shared}")
    _label(shared / "labels_masks" / "1.png", (0, 7))
    ds = load_dataset(f"road_anomaly_21={shared}")
    with pytest.raises(DatasetError, match=r"unexpected values \[7\]"):
        ds.load(1)
    _label(shared / "labels_masks" / "1.png", (0, 1), shape=(H + 2, W))
    with pytest.raises(DatasetError, match="but its label is"):
        load_dataset(f"road_anomaly_21={shared}").load(1)


def test_registry_names():
    assert list_datasets() == ["road_anomaly", "road_anomaly_21", "road_obstacle_21", "fs_static", "fs_lost_found",
                               "lost_and_found"]
