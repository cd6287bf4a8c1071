"""Collect a round of continued training of the shipped CIFAR-10 weights.

    python -m zoo.continue_cifar10 RUNS [--round=_continue2] [--paired] [--ship]

(from the repository root, so that ``zoo`` imports as a package).

A round trains each shipped ``MODEL.cifar10`` for more epochs with one recipe
(``training/resnet20_cifar10_continue.toml``, ``init_weights = "cifar10"``), in
the run folder ``RUNS/<model><round>``. The earlier runs of the ablation are
collected by ``zoo/collect_cifar10.py`` (their epochs before this round are read
from ``zoo/cifar10_results.json``); their folders need not exist here.

Writes the round's table into zoo/cifar10.md between markers naming this script
and its curves to zoo/cifar10<round>_curves.png. ``--paired`` predicts the test
set with the weights before and after the round and compares image by image
(each model with its own earlier weights, and each variant with the
``resnet20`` weights trained for as many epochs, before or after the round). ``--ship`` copies each run's weights to
``larq_esbnn/pretrained/<model>_cifar10.h5`` and records them in ``trained_here.json`` beside it; run
``--paired`` before (or with) ``--ship``, while the tag still names the earlier
weights.
"""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from zoo.collect_cifar10 import (  # noqa: E402
    CONTINUED,
    MODELS,
    PAIRED_HEADER,
    ROOT,
    correct_cached,
    paired_row,
    read_log,
    ship,
    write_generated,
)

RECIPE = "training/resnet20_cifar10_continue.toml"


def earlier(model, recorded):
    """(run name, result) of the weights ``model.cifar10`` named before this round."""
    run = model + CONTINUED if model + CONTINUED in recorded else model
    return run, recorded[run]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args:
        sys.exit(__doc__)
    runs = pathlib.Path(args[0])
    round_ = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--round=")), "_continue2")
    recorded = json.loads((ROOT / "zoo" / "cifar10_results.json").read_text())
    results = {}
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for model in MODELS:
        run = model + round_
        folder = runs / run
        if not (folder / "metrics.json").exists():
            print(f"{run}: not finished ({folder / 'metrics.json'} missing)")
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        init = json.loads((folder / "init_weights.json").read_text())
        before_run, before = earlier(model, recorded)
        results[run] = {
            "model": model, "top1": metrics["top1"], "top5": metrics["top5"], "n": metrics["n"],
            "epochs_before": before["epochs"], "epochs": before["epochs"] + metrics["epochs"],
            "from_run": before_run, "from_top1": before["top1"], "from_file": init["file"],
            "from_sha256": init["sha256"], "images_per_sec": metrics["images_per_sec"],
            "wall_time_sec": metrics["wall_time_sec"],
            "command": f"larq-esbnn train {model} --recipe {RECIPE} --output RUNS/{run}",
        }
        rows = read_log(folder)
        epochs = range(before["epochs"] + 1, before["epochs"] + len(rows) + 1)
        ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], marker="o", label=run)
        ax_loss.plot(epochs, [r["loss"] for r in rows], marker="o", label=run)
    if not results:
        sys.exit("no finished run")
    for ax, label in ((ax_acc, "test top-1 (%), per-epoch subset"), (ax_loss, "training loss")):
        ax.set_xlabel("epoch (counting every earlier epoch of the weights)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"CIFAR-10 ResNet-20 variants: continued training ({round_.strip('_')})")
    fig.tight_layout()
    fig.savefig(ROOT / "zoo" / f"cifar10{round_}_curves.png", dpi=100)

    lines = ["| run | from (top-1 on 10,000) | epochs before + this round | test top-1 (10,000) | top-5 | change | "
             "images/s in the run (shared CPU) | wall time | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run, r in results.items():
        lines.append(
            f"| `{run}` | `{r['from_run']}` ({100 * r['from_top1']:.2f} %) | {r['epochs_before']} + "
            f"{r['epochs'] - r['epochs_before']} | {100 * r['top1']:.2f} % | {100 * r['top5']:.2f} % | "
            f"{100 * (r['top1'] - r['from_top1']):+.2f} pt | {r['images_per_sec']:.0f} | "
            f"{r['wall_time_sec'] / 60:.1f} min | `{r['command']}` |"
        )
    if "--paired" in sys.argv:
        import numpy as np

        from larq_esbnn.weights import within_top1_tolerance

        recipe = json.loads((runs / next(iter(results)) / "recipe.json").read_text())
        data = recipe["data"] if pathlib.Path(recipe["data"]).is_absolute() else str(ROOT / recipe["data"])
        paired = list(PAIRED_HEADER)
        after, before = {}, {}
        for run, r in results.items():
            after[run] = correct_cached(runs, r["model"], runs / run / "weights.h5", data)
            if not within_top1_tolerance(after[run].mean(), r["top1"], len(after[run])):
                raise RuntimeError(f"{run}: top-1 {after[run].mean()} differs from metrics.json {r['top1']}")
            before[run] = correct_cached(runs, r["model"], r["from_file"], data, sha256=r["from_sha256"])
        n = len(next(iter(after.values())))
        picks = np.random.default_rng(0).integers(0, n, (2000, n))
        for run, r in results.items():
            row, diff, ci95 = paired_row(run, r["from_run"], after[run], before[run], picks)
            paired.append(row)
            r[f"vs_{r['from_run']}"] = {"diff": diff, "ci95": ci95}
        # each variant against the baseline weights trained for as many epochs
        base = results.get("resnet20" + round_)
        baselines = {} if base is None else {
            base["epochs_before"]: (base["from_run"], before["resnet20" + round_]),
            base["epochs"]: ("resnet20" + round_, after["resnet20" + round_]),
        }
        for run, r in results.items():
            if r["model"] != "resnet20" and r["epochs"] in baselines:
                name, correct = baselines[r["epochs"]]
                row, diff, ci95 = paired_row(run, name, after[run], correct, picks)
                paired.append(row)
                r[f"vs_{name}"] = {"diff": diff, "ci95": ci95}
        lines += ["", "Paired comparison on the same 10,000 test images (test-set sampling only): each run "
                  "against the weights it started from, and each variant against the resnet20 weights "
                  "trained for as many epochs:",
                  "", *paired]
    (ROOT / "zoo" / f"cifar10{round_}_results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_generated(ROOT / "zoo" / "cifar10.md", lines, script=f"zoo/continue_cifar10.py, round {round_}")
    print("\n".join(lines))
    if "--ship" in sys.argv:
        for run, r in results.items():
            ship(runs / run / "weights.h5", r["model"], r["top1"], "resnet20_cifar10_continue.toml", run)


if __name__ == "__main__":
    main()
