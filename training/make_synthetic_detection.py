"""Make a synthetic detection set from the CIFAR-10 test images (issue 31).

Each canvas is W x H with W, H drawn from 96..128 px, a smooth random background
(low-resolution noise, upsampled) and 1-4 CIFAR-10 test images pasted at random
positions, each resized to a side of 20-56 px (aspect ratio jittered by up to
25 %), overlapping earlier objects by IoU <= 0.1. The box is the pasted
rectangle, the class its CIFAR-10 class. The train canvases take their objects
from the first 800 test images of each class, the test canvases from the last 200,
so the held-out split also has unseen objects. Output (the format of
``larq_esbnn.detection.data``):

    OUT/classes.txt
    OUT/train/000000.jpg ... OUT/train/boxes.csv
    OUT/test/000000.jpg  ... OUT/test/boxes.csv

Run: ``python training/make_synthetic_detection.py --seed 0`` (default OUT:
``~/.cache/larq_esbnn/synthetic_detection``). The defaults write 4,503 files of
about 25 MB in all (about 6 KB a JPEG), which take about 36 MB on disk as ``du``
counts it (each file is rounded up to whole 4 KiB blocks).
"""

import argparse
import csv
import io
import pathlib
import shutil
import sys
import tarfile

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "test.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar_test(path):
    """``{class: [uint8 32x32x3 arrays in file order]}`` from the test archive."""
    images = {c: [] for c in CLASSES}
    with tarfile.open(path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")),
                         key=lambda m: m.name)
        for m in members:
            cls = m.name.split("/")[-2]
            if cls in images:
                data = tar.extractfile(m).read()
                images[cls].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    if not all(images.values()):
        raise SystemExit(f"{path}: expected test/<class>/*.jpg for the ten CIFAR-10 classes")
    return images


def _iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def background(rng, width, height):
    grid = rng.integers(0, 256, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
    image = Image.fromarray(grid).resize((width, height), Image.BILINEAR)
    noise = rng.normal(0, 8, (height, width, 3))
    return np.clip(np.asarray(image, np.float64) * rng.uniform(0.4, 1.0) + noise, 0, 255)


def canvas(rng, pool):
    width, height = (int(v) for v in rng.integers(96, 129, 2))
    image = background(rng, width, height)
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            side = rng.uniform(20, 56)
            ratio = rng.uniform(0.8, 1.25)
            w, h = int(round(side * np.sqrt(ratio))), int(round(side / np.sqrt(ratio)))
            if w > width or h > height:
                continue
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x, y, x + w, y + h)
            if all(_iou(box, b) <= 0.1 for b, _ in boxes):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        source = pool[CLASSES[cls]][int(rng.integers(len(pool[CLASSES[cls]])))]
        patch = np.asarray(Image.fromarray(source).resize((w, h), Image.BILINEAR), np.float64)
        image[y:y + h, x:x + w] = patch
        boxes.append((box, cls))
    return Image.fromarray(image.astype(np.uint8)), boxes


def write_split(out, name, count, pool, rng):
    folder = out / name
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        image, boxes = canvas(rng, pool)
        file = f"{i:06d}.jpg"
        image.save(folder / file, quality=92)
        rows += [(file, *box, CLASSES[cls]) for box, cls in boxes]
    with open(folder / "boxes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "x_min", "y_min", "x_max", "y_max", "label"])
        writer.writerows(rows)
    return len(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="~/.cache/larq_esbnn/synthetic_detection", help="output folder")
    parser.add_argument("--cifar", default=str(CIFAR), help="CIFAR-10 test.tar.gz (test/<class>/*.jpg)")
    parser.add_argument("--train", type=int, default=4000, help="train canvases")
    parser.add_argument("--test", type=int, default=500, help="test canvases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).expanduser()
    if out.exists():
        if not args.overwrite:
            raise SystemExit(f"{out} exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    cifar = read_cifar_test(args.cifar)
    train_pool = {c: v[:int(len(v) * 0.8)] for c, v in cifar.items()}
    test_pool = {c: v[int(len(v) * 0.8):] for c, v in cifar.items()}
    rng = np.random.default_rng(args.seed)
    tmp = out.with_name(out.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    n_train = write_split(tmp, "train", args.train, train_pool, rng)
    n_test = write_split(tmp, "test", args.test, test_pool, rng)
    tmp.rename(out)
    print(f"wrote {out}: {args.train} train canvases ({n_train} boxes), {args.test} test canvases ({n_test} boxes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
