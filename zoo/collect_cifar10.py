"""Collect the CIFAR-10 ablation (zoo/cifar10.md) from its run folders.

    python zoo/collect_cifar10.py [RUNS=runs/cifar10] [--ship] [--paired [--limit=N]]
        [--throughput benchmarks/results_train.md]

RUNS holds one folder per run: the four variants (``resnet20``, ``es_resnet20``,
``g_resnet20``, ``es_g_resnet20``), second seeds (``<model>_seed1``) and the
real-valued teacher ``resnet20_fp`` (when its run folder is absent, its row is
measured from the shipped ``resnet20_fp.cifar10`` weights on all 10,000 test
images, without curve or timing). Writes zoo/cifar10_results.json, the tables
into zoo/cifar10.md between its ``<!-- generated -->`` markers (the text around
them is kept) and zoo/cifar10_curves.png (test top-1 and training loss per epoch). With --ship, copies the seed-0 weights of each model to
larq_esbnn/pretrained/<model>_cifar10.h5 and records them (sha256, top-1) in
larq_esbnn/pretrained/trained_here.json (later rounds of continued training ship with
zoo/continue_cifar10.py; --ship here would put their earlier weights back). ``--throughput`` reads the fused-path images/s of
each variant from the training benchmark and adds the equal-wall-time axis:
each variant's test top-1 after the epochs that fit the baseline's training time.

With --paired, also predicts the test set with every run's weights (checking that
the top-1 equals metrics.json) and compares each variant with resnet20 image by
image: difference in top-1 with a 95 % paired-bootstrap interval and the counts of
images only one of the two gets right. This measures the test-set sampling noise
of a difference, not the spread between training seeds.
"""

import json
import pathlib
import shutil
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ["resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20"]
TEACHER = "resnet20_fp"
# A "<model>_continue" run trains the seed-0 weights of <model> (shipped) for more
# epochs (training/resnet20_cifar10_continue.toml, recipe key init_weights); when it
# exists, --ship ships it for <model> instead of the seed-0 run.
CONTINUED = "_continue"
RUNS = [TEACHER, *MODELS, "resnet20_seed1", "es_resnet20_seed1", *(m + CONTINUED for m in MODELS)]
TRAIN_IMAGES = 50000


def model_of(run):
    """``es_resnet20_seed1`` -> (``es_resnet20``, 1); ``resnet20`` -> (``resnet20``, 0);
    ``es_resnet20_continue`` -> (``es_resnet20``, 0)."""
    base, _, seed = run.removesuffix(CONTINUED).partition("_seed")
    return base, int(seed or 0)


def idle_throughput(path):
    """Fused-path images/s per model from benchmarks/results_train.md."""
    out = {}
    for line in pathlib.Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 5 and cells[1] in ("fused", "stock larq, model.fit") and cells[4].isdigit():
            out[cells[0]] = float(cells[4])
    return out


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


def correct_cached(runs, model, weights, data, limit=None, sha256=None):
    """:func:`per_image_correct`, cached in ``runs/per_image`` by the weights file's
    sha256 (not with ``limit``). ``weights``: a file or the tag ``cifar10``. With
    ``sha256`` given, the cache is used even when the file now holds other weights
    (after ``--ship``); without a cache entry the file must still match it."""
    import numpy as np

    from larq_esbnn import weights as weights_lib

    path = weights_lib.resolve(model, weights)[0] if weights == "cifar10" else weights
    digest = sha256 or weights_lib.sha256_file(path)
    cache = runs / "per_image" / f"{model}_{digest[:16]}.npy"
    if limit is None and cache.exists():
        return np.load(cache)
    if sha256 and (not pathlib.Path(path).exists() or weights_lib.sha256_file(path) != sha256):
        raise RuntimeError(f"{path} no longer holds the weights with sha256 {sha256[:16]}... and they are "
                           f"not cached in {cache.parent}; run --paired before --ship")
    correct = per_image_correct(model, weights, data, limit)
    if limit is None:
        cache.parent.mkdir(exist_ok=True)
        np.save(cache, correct)
    return correct


def ship(weights_file, model, top1, recipe=None, comment="", root=ROOT):
    """Copy a run's weights to larq_esbnn/pretrained/<model>_cifar10.h5 and write their
    record (sha256, top-1, recipe) into larq_esbnn/pretrained/trained_here.json, which
    the weights registry reads: ``<model>.cifar10`` names them from then on."""
    from larq_esbnn import util

    dest = pathlib.Path(root) / "larq_esbnn" / "pretrained" / f"{model}_cifar10.h5"
    with util.atomic_path(dest) as tmp:
        shutil.copyfile(weights_file, tmp)
    record = {"model": model, "sha256": util.sha256_file(dest), "top1": f"{100 * top1:.2f}",
              "recipe": recipe or "resnet20_cifar10.toml"}
    table = dest.parent / "trained_here.json"
    records = json.loads(table.read_text())
    at = next((i for i, r in enumerate(records) if r["model"] == model), len(records))
    records[at:at + 1] = [record]
    util.atomic_write_text(table, json.dumps(records, indent=2) + "\n")
    print(f"shipped {model}.cifar10: top-1 {record['top1']} %, sha256 {record['sha256'][:16]}... ({comment})")


PAIRED_HEADER = ["| run | vs | top-1 difference | 95 % paired bootstrap | only this run right | only the other right |",
                 "|---|---|---|---|---|---|"]


def paired_row(run, ref, c, base, picks):
    """One row of the paired comparison of per-image correctness ``c`` against
    ``base`` (bool arrays over the same images); ``picks`` are the bootstrap
    resamples (index arrays). Returns (row, mean difference, [low, high])."""
    import numpy as np

    diff = c.astype(float) - base
    low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
    row = (f"| `{run}` | `{ref}` | {100 * diff.mean():+.2f} pt | [{100 * low:+.2f}, {100 * high:+.2f}] pt | "
           f"{int((c & ~base).sum())} | {int((base & ~c).sum())} |")
    return row, float(diff.mean()), [float(low), float(high)]


def paired_table(runs, results, data, limit=None, resamples=2000):
    import numpy as np
    from tqdm import tqdm

    from larq_esbnn.weights import TOP1_TOLERANCE, within_top1_tolerance

    correct = {}
    for run in tqdm(list(results), desc="predicting the test set", unit="run"):
        model = model_of(run)[0]
        weights = "cifar10" if results[run].get("shipped_only") else runs / run / "weights.h5"
        correct[run] = correct_cached(runs, model, weights, data, limit)
        # metrics.json may come from another machine or thread count: allow the
        # registry's tolerance (a few sign flips near zero), not bit equality
        if limit is None and not within_top1_tolerance(correct[run].mean(), results[run]["top1"], len(correct[run])):
            raise RuntimeError(f"{run}: top-1 {correct[run].mean()} differs from metrics.json "
                               f"{results[run]['top1']} by more than {TOP1_TOLERANCE}")
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(correct["resnet20"]), (resamples, len(correct["resnet20"])))
    lines = list(PAIRED_HEADER)

    def compare(run, ref):
        row, diff, ci95 = paired_row(run, ref, correct[run], correct[ref], picks)
        lines.append(row)
        results[run][f"vs_{ref}"] = {"diff": diff, "ci95": ci95}

    for run in correct:
        if run not in ("resnet20", TEACHER):
            compare(run, "resnet20")
    # continued runs against the continued baseline: the same budget of 1 + 1 + 3 epochs
    matched = "resnet20" + CONTINUED
    for run in correct if matched in correct else []:
        if run.endswith(CONTINUED) and run != matched:
            compare(run, matched)
    return lines


def equal_time_table(results, rows_by_run, speeds):
    """Each variant's test top-1 (per-epoch subset) after the epochs its idle
    fused-path speed fits into the baseline's total training time."""
    base_epochs = results["resnet20"]["epochs"]
    budget = base_epochs * TRAIN_IMAGES / speeds["resnet20"]
    lines = [f"Equal wall time: the baseline's {base_epochs} epochs take {budget / 60:.1f} min at its idle speed "
             f"({speeds['resnet20']:.0f} images/s, fused path, benchmarks/results_train.md).", "",
             "| model | idle images/s | epochs in that time | test top-1 at that epoch (per-epoch subset) |",
             "|---|---|---|---|"]
    for run in MODELS:
        if run not in results or run not in speeds:
            continue
        fit = min(int(budget * speeds[run] // TRAIN_IMAGES), len(rows_by_run[run]))
        acc = f"{100 * rows_by_run[run][fit - 1]['val_accuracy']:.2f} %" if fit else "- (less than one epoch)"
        lines.append(f"| `{run}` | {speeds[run]:.0f} | {fit} of {results[run]['epochs']} | {acc} |")
    return lines


def seed_table(results):
    lines = ["| model | seed 0 | seed 1 | spread (seed 1 - seed 0) |", "|---|---|---|---|"]
    for model in MODELS:
        a, b = results.get(model), results.get(f"{model}_seed1")
        if a and b:
            lines.append(f"| `{model}` | {100 * a['top1']:.2f} % | {100 * b['top1']:.2f} % | "
                         f"{100 * (b['top1'] - a['top1']):+.2f} pt |")
    return lines


def shipped_teacher():
    """The teacher's row from its shipped weights, evaluated here on the test set."""
    from larq_esbnn import models
    from larq_esbnn.train import data as data_lib
    from larq_esbnn.train.trainer import evaluate

    model = models.get(TEACHER, weights="cifar10")
    result = evaluate(model, data_lib.load(str(ROOT / "../shared/datasets/cifar10"), "test"))
    return {"model": TEACHER, "seed": 0, **result, "epochs": 15, "train_images": TRAIN_IMAGES, "steps": [15],
            "teacher": "", "images_per_sec": None, "wall_time_sec": None, "shipped_only": True,
            "command": f"larq-esbnn train {TEACHER} --recipe training/resnet20_fp_cifar10.toml --output RUNS/{TEACHER}"}


def write_generated(path, lines, script="zoo/collect_cifar10.py"):
    """Replace the text between the generated markers of ``path`` that name
    ``script`` (append them if absent)."""
    start, end = f"<!-- generated: start ({script}) -->", f"<!-- generated: end ({script}) -->"
    text = path.read_text() if path.exists() else ""
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    runs = pathlib.Path(args[0]) if args else ROOT / "runs" / "cifar10"
    results, rows_by_run = {}, {}
    val_label = "test top-1 (%)"
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for run in RUNS:
        metrics_path = runs / run / "metrics.json"
        if run == TEACHER and not metrics_path.exists():
            results[run] = shipped_teacher()
            continue
        if not metrics_path.exists():
            print(f"{run}: not finished ({metrics_path} missing)")
            continue
        metrics = json.loads(metrics_path.read_text())
        recipe = json.loads((runs / run / "recipe.json").read_text())
        rows = rows_by_run[run] = read_log(runs / run)
        model, seed = model_of(run)
        recipe_file = "resnet20_fp_cifar10.toml" if model == TEACHER else "resnet20_cifar10.toml"
        seed_arg = f" --seed {seed}" if seed else ""
        steps = [s["epochs"] for s in recipe["steps"]]
        before = []  # a continued run counts the epochs of the run it started from
        if run.endswith(CONTINUED):
            recipe_file, seed_arg = "resnet20_cifar10_continue.toml", ""
            before = results[model]["steps"] if model in results else []
            rows = rows_by_run[run] = [*rows_by_run.get(model, []), *rows]
        results[run] = {
            "model": model, "seed": recipe["seed"],
            "top1": metrics["top1"], "top5": metrics["top5"], "n": metrics["n"],
            "epochs": sum(before) + metrics["epochs"], "train_images": recipe["train_limit"] or TRAIN_IMAGES,
            "steps": [*before, *steps], "teacher": recipe["teacher"],
            "images_per_sec": metrics["images_per_sec"], "wall_time_sec": metrics["wall_time_sec"],
            "command": f"larq-esbnn train {model} --recipe training/{recipe_file}{seed_arg} --output RUNS/{run}",
        }
        if before:
            results[run]["continues"] = model
        if recipe.get("val_limit"):
            val_label = f"test top-1 (%), {recipe['val_limit']:,}-image subset"
        epochs = range(1, len(rows) + 1)
        style = "--" if seed else "-"
        ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], style, marker="o", label=run)
        ax_loss.plot(epochs, [r["loss"] for r in rows], style, marker="o", label=run)
    for ax, label in ((ax_acc, val_label), (ax_loss, "training loss")):
        ax.set_xlabel("epoch (step 1, then step 2, then continued)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("CIFAR-10 ResNet-20: teacher and ES / G ablation (same recipe; dashed: second seed)")
    fig.tight_layout()
    fig.savefig(ROOT / "zoo" / "cifar10_curves.png", dpi=100)
    paired = []
    if "--paired" in sys.argv and "resnet20" in results:
        recipe = json.loads((runs / "resnet20" / "recipe.json").read_text())
        data = recipe["data"] if pathlib.Path(recipe["data"]).is_absolute() else str(ROOT / recipe["data"])
        limit = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--limit=")), None)
        paired = paired_table(runs, results, data, limit)
        if limit:  # a quick check of the script itself; nothing is written
            print("\n".join(paired))
            return
    throughput = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--throughput=")), None)
    timed = equal_time_table(results, rows_by_run, idle_throughput(throughput)) if throughput else []
    (ROOT / "zoo" / "cifar10_results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| run | test top-1 | top-5 | epochs (step 1 + 2 [+ continued]) | train images / epoch | teacher | images/s in the run (shared CPU) | wall time | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run, r in results.items():
        speed = f"{r['images_per_sec']:.0f}" if r["images_per_sec"] else "- (shipped weights)"
        wall = f"{r['wall_time_sec'] / 60:.1f} min" if r["wall_time_sec"] else "-"
        lines.append(
            f"| `{run}` | {100 * r['top1']:.2f} % | {100 * r['top5']:.2f} % | {' + '.join(map(str, r['steps']))} | "
            f"{r['train_images']:,} | {r['teacher'] or '-'} | {speed} | {wall} | `{r['command']}` |"
        )
    seeds = seed_table(results)
    if len(seeds) > 2:
        lines += ["", "Seed spread (same recipe, `--seed 1`):", "", *seeds]
    if paired:
        lines += ["", "Paired comparison on the same 10,000 test images (test-set sampling only; "
                  "`vs`: the seed-0 baseline, and for continued runs also the continued baseline):", "", *paired]
    if timed:
        lines += ["", *timed]
    write_generated(ROOT / "zoo" / "cifar10.md", lines)
    print("\n".join(lines))
    if "--ship" in sys.argv:
        for run, r in results.items():
            if r["seed"] != 0 or r.get("shipped_only") or run + CONTINUED in results:
                continue  # a continued run ships as its model's weights instead
            recipe = "resnet20_cifar10_continue.toml" if run.endswith(CONTINUED) else None
            ship(runs / run / "weights.h5", r["model"], r["top1"], recipe, run)


if __name__ == "__main__":
    main()
