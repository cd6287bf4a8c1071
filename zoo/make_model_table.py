"""Print the README's model table: registry name, trainable parameters, BOPs, FLOPs,
OPs and memory at the default input size (counted by larq_esbnn.report), CIFAR-10
top-1 of the shipped ``cifar10`` weights (the figure registered in
larq_esbnn/weights.py, measured here), ImageNet top-1 as reported by the papers. Counts are cached in zoo/model_counts.json (--recount refreshes them).
Run: python zoo/make_model_table.py > zoo/models.md, or with --write, which also replaces
the table between the README's ``<!-- model table: start ... -->`` and
``<!-- model table: end -->`` markers (zoo/models.md is the docs site's copy).
"""

import json
import pathlib
import sys

from tqdm import tqdm

from larq_esbnn import models, report, weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
START, END = "<!-- model table: start", "<!-- model table: end -->"


def main():
    cifar = {e.model: weights.registered_top1(e.model, "cifar10") for e in weights.registered() if e.tag == "cifar10"}
    lines = [
        "| model | input | params | BOPs | FLOPs | OPs | memory | CIFAR-10 top-1 (here) | ImageNet top-1 (reported) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    counts_path = pathlib.Path(__file__).with_name("model_counts.json")
    counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    classifiers = [n for n in models.names() if models.entry(n).task == "classification"]
    for name in tqdm(classifiers, desc="counting"):  # detectors: docs/detection.md
        entry = models.entry(name)
        if name not in counts or "--recount" in sys.argv:
            full = report.summary(models.get(name), print_fn=None, larq_summary=False)
            counts[name] = {k: full[k] for k in ("params", "bops", "flops", "ops", "memory_bytes")}
            counts_path.write_text(json.dumps(counts, indent=2) + "\n")
        s = counts[name]
        top1 = f"{100 * cifar[name]:.2f} %" if name in cifar else "-"
        # ImageNet top-1 as its paper or release reports it (registered with the model)
        reported = f"{entry.reported_top1} ({entry.reported_by})" if entry.reported_top1 else "-"
        lines.append(
            f"| `{name}` | {entry.input_size} | {s['params'] / 1e6:.2f} M | {s['bops'] / 1e9:.3f}e9 | "
            f"{s['flops'] / 1e8:.3f}e8 | {s['ops'] / 1e8:.3f}e8 | {s['memory_bytes'] / 2**20:.2f} MiB | "
            f"{top1} | {reported} |"
        )
    table = "\n".join(lines)
    if "--write" in sys.argv:
        write(table)
    else:
        print(table)


def write(table):
    """Put ``table`` into zoo/models.md and between the README's markers."""
    (ROOT / "zoo" / "models.md").write_text(table + "\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index(START)
    start = text.index("\n", start) + 1
    end = text.index(END, start)
    readme.write_text(text[:start] + table + "\n" + text[end:])


if __name__ == "__main__":
    main()
