"""The CIFAR-10 campaign: planned long schedules that run across sessions.

Each model trains with one recipe of ``training/cifar10_campaign/`` decided up front
(``resnet20_fp.toml`` for the teacher, ``binary.toml`` for the four binary variants).
A session runs the lanes in the background from a frozen worktree, then, from the
repository root::

    python -m zoo.cifar10_campaign snapshot MODEL [--runs RUNS]
        # RUNS/MODEL's last checkpoint -> training/cifar10_campaign/snapshots/MODEL
        # (weights.h5, position.json, history.csv), to be committed
    python -m zoo.cifar10_campaign ship MODEL [--runs RUNS]
        # the snapshot on all 10,000 test images, paired with the shipped `cifar10`
        # weights; replaces them (file, registry sha256 and top-1) only if better
    python -m zoo.cifar10_campaign report
        # zoo/cifar10_campaign.md (generated block) and zoo/cifar10_campaign_curves.png

``larq-esbnn train --recipe training/cifar10_campaign/R.toml --output RUNS/MODEL --resume``
continues from RUNS/MODEL when it holds a checkpoint, else from the committed snapshot.
RUNS defaults to ``$LARQ_ESBNN_CACHE/runs/campaign``. Milestones (every ship attempt
with its full-test-set result) are kept in ``zoo/cifar10_campaign.json``.
"""

import argparse
import csv
import datetime
import json
import pathlib
import sys

import numpy as np

from larq_esbnn.util import atomic_write_text, cpu_model
from zoo.collect_cifar10 import PAIRED_HEADER, correct_cached, paired_row, write_generated
from zoo.collect_cifar10 import ship as ship_weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "training" / "cifar10_campaign"
SNAPSHOTS = CAMPAIGN / "snapshots"
MILESTONES = ROOT / "zoo" / "cifar10_campaign.json"
REPORT = ROOT / "zoo" / "cifar10_campaign.md"
CURVES = ROOT / "zoo" / "cifar10_campaign_curves.png"
DATA = ROOT.parent / "shared" / "datasets" / "cifar10"
MODELS = ["resnet20_fp", "resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20"]
SCRIPT = "zoo/cifar10_campaign.py"


def recipe_of(model):
    return "resnet20_fp.toml" if model == "resnet20_fp" else "binary.toml"


def default_runs():
    from larq_esbnn.train import data as data_lib

    return data_lib.cache_dir() / "runs" / "campaign"


def history(model):
    path = SNAPSHOTS / model / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def snapshot(model, runs):
    from larq_esbnn.train.trainer import write_snapshot

    note = f"{datetime.date.today().isoformat()}, {cpu_model()}"
    position = write_snapshot(runs / model, SNAPSHOTS / model, note=note)
    print(f"{model}: snapshot after {position['epochs_done']} of {position['epochs_total']} epochs "
          f"(step {position['step']}, epoch {position['epoch'] + 1}) -> {SNAPSHOTS / model}")
    return position


def shippable(position):
    """Whether a snapshot's weights mean what the registered model computes with them:
    not during a step with real-valued weights (``binary_weights = false``), whose
    kernels the registered binary model would binarize."""
    return position["schedule"]["steps"][position["step"] - 1].get("binary_weights", True)


def ship(model, runs):
    """Ship the snapshot of ``model`` as ``MODEL.cifar10`` if it is better on all
    10,000 test images than the weights shipped now (paired comparison recorded
    either way). Returns the milestone record."""
    from larq_esbnn import weights as weights_lib

    folder = SNAPSHOTS / model
    position = json.loads((folder / "position.json").read_text())
    if not shippable(position):
        print(f"{model}: not shipped: the snapshot is in step {position['step']}, which trains real-valued "
              f"weights; the registered model binarizes them, so it is evaluated from the first "
              f"binary-weight step on")
        return None
    new = correct_cached(runs, model, folder / "weights.h5", str(DATA))
    old_file = weights_lib.resolve(model, "cifar10")[0]
    old = correct_cached(runs, model, old_file, str(DATA))
    picks = np.random.default_rng(0).integers(0, len(new), (2000, len(new)))
    row, diff, ci95 = paired_row(f"{model} @ {position['epochs_done']} epochs", f"{model}.cifar10 shipped",
                                 new, old, picks)
    better = new.mean() > old.mean()
    record = {"model": model, "epochs_done": position["epochs_done"], "epochs_total": position["epochs_total"],
              "top1": float(new.mean()), "n": int(len(new)), "shipped_before": float(old.mean()),
              "diff": diff, "ci95": ci95, "sha256": position["sha256"], "shipped": bool(better),
              "date": datetime.date.today().isoformat(), "cpu": cpu_model(), "paired_row": row}
    if better:
        ship_weights(folder / "weights.h5", model, float(new.mean()), f"cifar10_campaign/{recipe_of(model)}",
                     f"campaign, {position['epochs_done']} of {position['epochs_total']} epochs")
    milestones = json.loads(MILESTONES.read_text()) if MILESTONES.exists() else []
    milestones.append(record)
    atomic_write_text(MILESTONES, json.dumps(milestones, indent=2) + "\n")
    verdict = "shipped" if better else "not shipped (not better than the shipped weights)"
    print(f"{model}: top-1 {100 * new.mean():.2f} % vs shipped {100 * old.mean():.2f} % "
          f"({100 * diff:+.2f} pt, 95 % [{100 * ci95[0]:+.2f}, {100 * ci95[1]:+.2f}]): {verdict}")
    return record


def _float(row, key):
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return float("nan")


def report():
    """The generated block of zoo/cifar10_campaign.md and the campaign's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["### Progress (per-epoch test top-1 on the fixed 2,000-image subset)", "",
             "| model | recipe | epochs done / planned | last test top-1 (2,000) | best | top-5 | "
             "images/s (median, last run) | wall time so far |",
             "|---|---|---|---|---|---|---|---|"]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for model in MODELS:
        rows = history(model)
        if not rows:
            continue
        position = json.loads((SNAPSHOTS / model / "position.json").read_text())
        x = [int(r["global_epoch"]) for r in rows]
        acc = [100 * _float(r, "val_accuracy") for r in rows]
        ax_acc.plot(x, acc, label=model)
        ax_loss.plot(x, [_float(r, "loss") for r in rows], label=model)
        last_run = rows[-1]["run"]
        speeds = [_float(r, "images_per_sec") for r in rows if r["run"] == last_run]
        wall = sum(_float(r, "epoch_time_sec") for r in rows)
        lines.append(f"| `{model}` | `{recipe_of(model)}` | {position['epochs_done']} / {position['epochs_total']} | "
                     f"{acc[-1]:.2f} % | {max(acc):.2f} % | {100 * _float(rows[-1], 'val_top5'):.2f} % | "
                     f"{np.median(speeds):.0f} ({rows[-1].get('note', '')}) | {wall / 3600:.1f} h |")
    milestones = json.loads(MILESTONES.read_text()) if MILESTONES.exists() else []
    if milestones:
        lines += ["", "### Milestones (all 10,000 test images, paired with the weights shipped then)", "",
                  "| date | model | epochs | test top-1 | shipped before | difference, 95 % paired bootstrap | "
                  "shipped | CPU |", "|---|---|---|---|---|---|---|---|"]
        for m in milestones:
            lines.append(f"| {m['date']} | `{m['model']}` | {m['epochs_done']} / {m['epochs_total']} | "
                         f"{100 * m['top1']:.2f} % | {100 * m['shipped_before']:.2f} % | {100 * m['diff']:+.2f} pt "
                         f"[{100 * m['ci95'][0]:+.2f}, {100 * m['ci95'][1]:+.2f}] | "
                         f"{'yes' if m['shipped'] else 'no'} | {m['cpu']} |")
        lines += ["", *PAIRED_HEADER, *(m["paired_row"] for m in milestones)]
    for ax, label in ((ax_acc, "test top-1 (%), 2,000 images"), (ax_loss, "training loss")):
        ax.set_xlabel("epoch of the planned schedule (all sessions)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("CIFAR-10 campaign")
    fig.tight_layout()
    tmp = CURVES.with_name(CURVES.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(CURVES)
    write_generated(REPORT, lines, SCRIPT)
    print(f"wrote {REPORT} and {CURVES}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m zoo.cifar10_campaign", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["snapshot", "ship", "report"])
    parser.add_argument("models", nargs="*", help=f"models of the campaign ({', '.join(MODELS)})")
    parser.add_argument("--runs", type=pathlib.Path, default=None, help="folder of the run folders")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; allowed: {MODELS}")
    if args.action != "report" and not args.models:
        parser.error(f"{args.action} needs at least one model")
    runs = args.runs or default_runs()
    for model in args.models:
        if args.action == "snapshot":
            snapshot(model, runs)
        elif args.action == "ship":
            ship(model, runs)
    if args.action == "report":
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
