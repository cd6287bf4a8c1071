"""Collect the CIFAR-10 ablation (issue 7) from its run folders.

    python zoo/collect_cifar10.py [RUNS=runs/cifar10] [--ship] [--paired [--limit=N]]

Writes zoo/cifar10_results.json, zoo/cifar10.md (the table) and
zoo/cifar10_curves.png (test top-1 and training loss per epoch, all four runs).
With --ship, copies each run's weights.h5 to larq_esbnn/pretrained/<model>_cifar10.h5
and prints the registry lines (sha256) for larq_esbnn/weights.py.

With --paired, also predicts the test set with every run's weights (checking that
the top-1 equals metrics.json) and compares each variant with resnet20 image by
image: difference in top-1 with a 95 % paired-bootstrap interval and the counts of
images only one of the two gets right. This measures the test-set sampling noise
of a difference, not the spread between training seeds.
"""

import hashlib
import json
import pathlib
import shutil
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ["resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20"]


def read_log(run):
    rows = []
    for path in sorted(run.glob("log_step*.csv")):
        lines = path.read_text().strip().splitlines()
        header = lines[0].split(",")
        rows += [dict(zip(header, map(float, line.split(",")))) for line in lines[1:]]
    return rows


def per_image_correct(name, weights, data, limit=None):
    """Per-image top-1 correctness (bool array) of a run's weights on the test split."""
    import numpy as np

    from larq_esbnn import models
    from larq_esbnn.train import data as data_lib
    from larq_esbnn.train.trainer import predict_batches

    model = models.get(name, weights=str(weights))
    batches = predict_batches(model, data_lib.load(data, "test"), 32, 500, limit)
    return np.concatenate([np.argmax(logits, -1) == labels.numpy() for logits, labels in batches])


def paired_table(runs, results, data, limit=None, resamples=2000):
    import numpy as np
    from tqdm import tqdm

    from larq_esbnn.weights import TOP1_TOLERANCE

    correct = {}
    for name in tqdm(list(results), desc="predicting the test set", unit="model"):
        correct[name] = per_image_correct(name, runs / name / "weights.h5", data, limit)
        # metrics.json may come from another machine or thread count: allow the
        # registry's tolerance (a few sign flips near zero), not bit equality
        if limit is None and abs(correct[name].mean() - results[name]["top1"]) > TOP1_TOLERANCE:
            raise RuntimeError(f"{name}: top-1 {correct[name].mean()} differs from metrics.json "
                               f"{results[name]['top1']} by more than {TOP1_TOLERANCE}")
    base = correct["resnet20"]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(base), (resamples, len(base)))
    lines = ["| model | top-1 vs resnet20 | 95 % paired bootstrap | only this model right | only resnet20 right |",
             "|---|---|---|---|---|"]
    for name, c in correct.items():
        if name == "resnet20":
            continue
        diff = c.astype(float) - base
        low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
        lines.append(f"| `{name}` | {100 * diff.mean():+.2f} pt | [{100 * low:+.2f}, {100 * high:+.2f}] pt | "
                     f"{int((c & ~base).sum())} | {int((base & ~c).sum())} |")
        results[name]["vs_resnet20"] = {"diff": float(diff.mean()), "ci95": [float(low), float(high)]}
    return lines


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    runs = pathlib.Path(args[0]) if args else ROOT / "runs" / "cifar10"
    rel = runs.resolve().relative_to(ROOT) if runs.resolve().is_relative_to(ROOT) else runs
    results = {}
    val_label = "test top-1 (%)"
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for name in MODELS:
        metrics_path = runs / name / "metrics.json"
        if not metrics_path.exists():
            print(f"{name}: not finished ({metrics_path} missing)")
            continue
        metrics = json.loads(metrics_path.read_text())
        recipe = json.loads((runs / name / "recipe.json").read_text())
        rows = read_log(runs / name)
        results[name] = {
            "top1": metrics["top1"], "top5": metrics["top5"], "n": metrics["n"],
            "epochs": metrics["epochs"], "train_images": recipe["train_limit"] or 50000,
            "steps": [s["epochs"] for s in recipe["steps"]],
            "images_per_sec": metrics["images_per_sec"], "wall_time_sec": metrics["wall_time_sec"],
            "command": f"larq-esbnn train {name} --recipe training/resnet20_cifar10.toml --output {rel}/{name}",
        }
        if recipe.get("val_limit"):
            val_label = f"test top-1 (%), {recipe['val_limit']:,}-image subset"
        epochs = range(1, len(rows) + 1)
        ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], marker="o", label=name)
        ax_loss.plot(epochs, [r["loss"] for r in rows], marker="o", label=name)
    for ax, label in ((ax_acc, val_label), (ax_loss, "training loss")):
        ax.set_xlabel("epoch (steps 1 | 2)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("CIFAR-10 ResNet-20: ES / G ablation (same recipe and seed)")
    fig.tight_layout()
    fig.savefig(ROOT / "zoo" / "cifar10_curves.png", dpi=100)
    if "--paired" in sys.argv and "resnet20" in results:
        recipe = json.loads((runs / "resnet20" / "recipe.json").read_text())
        data = recipe["data"] if pathlib.Path(recipe["data"]).is_absolute() else str(ROOT / recipe["data"])
        limit = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--limit=")), None)
        paired = paired_table(runs, results, data, limit)
        if limit:  # a quick check of the script itself; nothing is written
            print("\n".join(paired))
            return
    else:
        paired = []
    (ROOT / "zoo" / "cifar10_results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| model | test top-1 | top-5 | epochs (step 1 + 2) | train images / epoch | images/s (median, shared CPU) | wall time | command |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| `{name}` | {100 * r['top1']:.2f} % | {100 * r['top5']:.2f} % | {' + '.join(map(str, r['steps']))} | "
            f"{r['train_images']:,} | "
            f"{r['images_per_sec']:.0f} | {r['wall_time_sec'] / 60:.1f} min | `{r['command']}` |"
        )
    if paired:
        lines += ["", "Paired comparison on the same 10,000 test images (test-set sampling only):", "", *paired]
    (ROOT / "zoo" / "cifar10.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if "--ship" in sys.argv:
        target = ROOT / "larq_esbnn" / "pretrained"
        target.mkdir(exist_ok=True)
        for name, r in results.items():
            dest = target / f"{name}_cifar10.h5"
            shutil.copyfile(runs / name / "weights.h5", dest)
            digest = hashlib.sha256(dest.read_bytes()).hexdigest()
            print(f'    _trained_here("{name}", "{digest}", "{100 * r["top1"]:.2f}"),')


if __name__ == "__main__":
    main()
