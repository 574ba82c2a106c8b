"""Finding, loading and labelling images from tiny folders built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from micronet.errors import MicronetError
from micronet.images import (IMAGE_EXTENSIONS, UnreadableImage, deterministic_sample, file_list_sha256,
                             find_images, load_rgb, scan_labelled)


def save_image(path: Path, colour: tuple[int, int, int] = (200, 30, 60), size_px: int = 8, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size_px, size_px), colour).convert(mode).save(path)  # format from the extension
    return path


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    save_image(tmp_path / "b.png")
    save_image(tmp_path / "A.JPG")
    save_image(tmp_path / "deep" / "er" / "c.webp")
    save_image(tmp_path / "deep" / "d.bmp")
    save_image(tmp_path / "e.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    (tmp_path / "._b.png").write_bytes(b"macOS resource fork")
    save_image(tmp_path / ".cache" / "hidden.png")
    (tmp_path / "empty_dir").mkdir()
    return tmp_path


def relative_names(paths: list[Path], root: Path) -> list[str]:
    return [path.relative_to(root).as_posix() for path in paths]


def test_extensions_are_the_documented_five() -> None:
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def test_find_images_recurses_sorts_and_filters_by_extension(mixed_folder: Path) -> None:
    found = find_images(mixed_folder)
    assert relative_names(found, mixed_folder) == [
        "A.JPG", "b.png", "corrupt.jpg", "deep/d.bmp", "deep/er/c.webp", "e.jpeg"]
    assert find_images(str(mixed_folder)) == found  # str and Path roots agree


@pytest.mark.parametrize("make_root, message", [
    (lambda tmp: tmp / "missing", "not found"),
    (lambda tmp: save_image(tmp / "file.png"), "not a folder"),
    (lambda tmp: tmp, "no images (.jpg .jpeg .png .webp .bmp) under"),
])
def test_find_images_errors_are_one_clear_line(tmp_path: Path, make_root, message: str) -> None:
    (tmp_path / "readme.txt").write_text("only text here")
    root = make_root(tmp_path)
    with pytest.raises(MicronetError, match=r"^[^\n]*$") as info:
        find_images(root)
    assert message in str(info.value)


def test_load_rgb_converts_grey_and_alpha_to_rgb(tmp_path: Path) -> None:
    grey = load_rgb(save_image(tmp_path / "grey.png", (90, 90, 90), mode="L"))
    rgba = load_rgb(save_image(tmp_path / "rgba.png", (10, 20, 30), mode="RGBA"))
    assert grey.mode == rgba.mode == "RGB"
    assert grey.getpixel((0, 0)) == (90, 90, 90)
    assert rgba.getpixel((3, 3)) == (10, 20, 30)


@pytest.mark.parametrize("content", [b"\xff\xd8\xff this is not a jpeg", b"", "truncated"])
def test_load_rgb_reports_why_a_file_is_unreadable(tmp_path: Path, content) -> None:
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        whole = save_image(tmp_path / "whole.jpg", size_px=64).read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(UnreadableImage) as info:
        load_rgb(path)
    assert isinstance(info.value, MicronetError)
    assert info.value.path == path and info.value.reason
    assert "\n" not in str(info.value)


def test_image_folder_layout_sorted_classes_and_empty_class_kept(tmp_path: Path) -> None:
    save_image(tmp_path / "zebra" / "z1.png")
    save_image(tmp_path / "apple" / "nested" / "a2.png")
    save_image(tmp_path / "apple" / "a1.png")
    (tmp_path / "mango").mkdir()
    save_image(tmp_path / "loose.png")
    data = scan_labelled(tmp_path)
    assert data.classes == ["apple", "mango", "zebra"]
    assert [(path.name, index) for path, index in data.samples] == [("a1.png", 0), ("a2.png", 0), ("z1.png", 2)]
    assert (tmp_path / "mango", "class folder has no images") in data.skipped
    assert (tmp_path / "loose.png", "not inside a class folder") in data.skipped


def test_image_folder_with_label_map_uses_its_order_and_skips_unknown_folders(tmp_path: Path) -> None:
    save_image(tmp_path / "cat" / "1.png")
    save_image(tmp_path / "dog" / "2.png")
    save_image(tmp_path / "other" / "3.png")
    data = scan_labelled(tmp_path, label_map={"dog": 0, "cat": 1, "bird": 2})
    assert data.classes == ["dog", "cat", "bird"]
    assert sorted((path.name, index) for path, index in data.samples) == [("1.png", 1), ("2.png", 0)]
    assert data.skipped == [(tmp_path / "other", "folder is not a class in the label map")]
    with pytest.raises(MicronetError, match="0..N-1"):
        scan_labelled(tmp_path, label_map={"dog": 0, "cat": 2})


def test_root_without_classes_or_images_is_an_error(tmp_path: Path) -> None:
    save_image(tmp_path / "flat.png")
    with pytest.raises(MicronetError, match="no class folders") as caught:
        scan_labelled(tmp_path)
    # The CLI's --data has no labels-file option: the message must not suggest one.
    assert "labels file" not in str(caught.value)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(MicronetError, match="no images .* in any class folder"):
        scan_labelled(tmp_path)


def test_flat_folder_with_csv_of_class_names(tmp_path: Path) -> None:
    for name in ("x.png", "y.png", "sub/z.png"):
        save_image(tmp_path / name)
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\n# comment\ny.png,dog\n\nx.png,cat\nsub/z.png,dog\nmissing.png,cat\n")
    data = scan_labelled(tmp_path, labels_file=labels)
    assert data.classes == ["cat", "dog"]
    assert relative_names([p for p, _ in data.samples], tmp_path) == ["sub/z.png", "x.png", "y.png"]
    assert [index for _, index in data.samples] == [1, 0, 1]
    assert data.skipped == [(tmp_path / "missing.png", "listed in the labels file but not found")]


def test_flat_folder_with_tsv_of_indices_and_label_map(tmp_path: Path) -> None:
    save_image(tmp_path / "x.png")
    save_image(tmp_path / "y.png")
    labels = tmp_path / "labels.tsv"
    labels.write_text("x.png\t3\ny.png\t0\n")
    assert scan_labelled(tmp_path, labels_file=labels).classes == ["0", "1", "2", "3"]
    data = scan_labelled(tmp_path, labels_file=labels, label_map={"a": 0, "b": 1, "c": 2, "d": 3})
    assert [(p.name, i) for p, i in data.samples] == [("x.png", 3), ("y.png", 0)]


@pytest.mark.parametrize("text, message", [
    ("x.png,cat\ny.png,1\n", "mixes class names and integer indices"),
    ("x.png\n", "expected 'filename,label'"),
    ("x.png,cat\nx.png,dog\n", "listed twice"),
    ("filename,label\n", "no 'filename,label' lines"),
])
def test_bad_labels_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    save_image(tmp_path / "x.png")
    save_image(tmp_path / "y.png")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(MicronetError, match=message):
        scan_labelled(tmp_path, labels_file=tmp_path / "labels.csv")


def test_deterministic_sample_is_reproducible_and_keeps_order() -> None:
    items = list(range(100))
    first = deterministic_sample(items, 10, seed=3)
    assert first == deterministic_sample(items, 10, seed=3)
    assert first == sorted(first) and len(set(first)) == 10
    assert first != deterministic_sample(items, 10, seed=4)
    assert deterministic_sample(items, 100, seed=3) == items
    assert deterministic_sample(items[:5], 50, seed=0) == items[:5]


def test_file_list_sha256_depends_on_names_and_sizes_not_order(tmp_path: Path) -> None:
    a, b = save_image(tmp_path / "a.png"), save_image(tmp_path / "sub" / "b.png")
    digest = file_list_sha256([a, b], tmp_path)
    assert digest == file_list_sha256([b, a], tmp_path) and len(digest) == 64
    assert digest != file_list_sha256([a], tmp_path)
    b.write_bytes(b.read_bytes() + b"\0")
    assert digest != file_list_sha256([a, b], tmp_path)
