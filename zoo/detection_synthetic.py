"""Write zoo/detection_synthetic.md and .json from two detect-train runs (issue 31).

Reloads each run (``run.json`` + ``weights.h5``), detects on the held-out split again
(the detections must come out the same as at the end of training), computes
mAP@0.5 and mAP@[.5:.95] with pycocotools, and a paired bootstrap over the test
images of the difference (ES - base): the same resampled images for both models.

Run: ``python zoo/detection_synthetic.py RUNS DATA`` where RUNS holds
``ssd_resnet20/`` and ``es_ssd_resnet20/`` and their ``.log`` files (``/usr/bin/time -v``).
"""

import argparse
import json
import pathlib
import re
import sys

import numpy as np
from tqdm import tqdm

from larq_esbnn.detection.data import load_split
from larq_esbnn.detection.train import coco_map, load_run, predict_split
from larq_esbnn.util import atomic_write_text, cpu_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ("ssd_resnet20", "es_ssd_resnet20")


def _subset(split, index):
    """``split`` with images ``index`` (repeats allowed), renumbered 0..n-1."""
    files, boxes, labels, sizes = ([items[i] for i in index] for items in (split.files, split.boxes, split.labels,
                                                                           split.sizes))
    return type(split)(split.root, files, boxes, labels, sizes, split.classes)


def _remap(results, index):
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    return [{**r, "image_id": new} for new, old in enumerate(index) for r in by_image.get(old, [])]


def _wall(log):
    found = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", log)
    if not found:
        return None
    parts = [float(p) for p in found.group(1).split(":")]
    return round(sum(p * 60**i for i, p in enumerate(reversed(parts))), 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs")
    parser.add_argument("data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = pathlib.Path(args.runs).expanduser()
    result = {"data": args.data, "split": args.split, "cpu": cpu_model(), "models": {}}
    detections, split = {}, None
    for name in MODELS:
        model, run = load_run(runs / name)
        split = split or load_split(args.data, args.split, run["classes"])
        detections[name] = predict_split(model, split, progress=False)
        metrics = coco_map(split, detections[name])
        log = (runs / f"{name}.log").read_text() if (runs / f"{name}.log").is_file() else ""
        result["models"][name] = {**{k: run[k] for k in ("steps", "batch_size", "input_size", "learning_rate",
                                                          "backbone_weights", "seed", "train_seconds",
                                                          "images_per_second", "final_loss")},
                                  "wall_seconds": _wall(log), "params": int(model.count_params()),
                                  "map50": metrics["map50"], "map": metrics["map"],
                                  "map_at_end_of_training": run.get("eval", {}).get("map")}
    rng = np.random.default_rng(args.seed)
    diffs = {"map50": [], "map": []}
    for _ in tqdm(range(args.bootstrap), desc="paired bootstrap", file=sys.stderr):
        index = rng.integers(0, len(split), len(split)).tolist()
        sub = _subset(split, index)
        got = {n: coco_map(sub, _remap(detections[n], index)) for n in MODELS}
        for key in diffs:
            diffs[key].append(got[MODELS[1]][key] - got[MODELS[0]][key])
    base, es = (result["models"][n] for n in MODELS)
    result["paired_difference"] = {
        key: {"es_minus_base": es[key] - base[key],
              "bootstrap_95": [float(np.percentile(diffs[key], 2.5)), float(np.percentile(diffs[key], 97.5))]
              if diffs[key] else None,
              "bootstrap_share_es_better": float(np.mean(np.asarray(diffs[key]) > 0)) if diffs[key] else None}
        for key in diffs
    }
    result["bootstrap_resamples"] = args.bootstrap
    result["images"], result["boxes"] = len(split), int(sum(len(b) for b in split.boxes))
    atomic_write_text(ROOT / "zoo" / "detection_synthetic.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
