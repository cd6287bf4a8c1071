"""The statistics behind the published CIFAR-10 comparisons (zoo/collect_cifar10.py,
zoo/continue_cifar10.py, zoo/cifar10_campaign.py)."""

import hashlib
import json

import numpy as np

from zoo.collect_cifar10 import paired_row


def test_paired_row_counts_difference_and_interval():
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.6
    better = base.copy()
    flip = rng.choice(2000, 120, replace=False)
    better[flip[:100]] = True  # wins where the baseline was wrong (or already right)
    better[flip[100:]] = False
    picks = rng.integers(0, 2000, (500, 2000))
    row, diff, (low, high) = paired_row("a", "b", better, base, picks)
    wins, losses = int((better & ~base).sum()), int((base & ~better).sum())
    assert diff == (wins - losses) / 2000 and diff > 0
    assert low < diff < high and high - low < 0.05
    assert row.startswith("| `a` | `b` |") and row.endswith(f"| {wins} | {losses} |")
    # against itself: no difference and a zero-width interval
    _, same, interval = paired_row("a", "a", base, base, picks)
    assert same == 0 and interval == [0.0, 0.0]


def test_ship_replaces_the_file_and_exactly_one_registry_record(tmp_path):
    from larq_esbnn import weights as weights_lib
    from zoo.collect_cifar10 import ship

    pretrained = tmp_path / "larq_esbnn" / "pretrained"
    pretrained.mkdir(parents=True)
    original = json.loads(weights_lib.TRAINED_HERE.read_text())
    (pretrained / "trained_here.json").write_text(json.dumps(original))
    new_weights = tmp_path / "new.h5"
    new_weights.write_bytes(b"new resnet20 weights")
    ship(new_weights, "resnet20", 0.81234, "cifar10_campaign/binary.toml", root=tmp_path)
    assert (pretrained / "resnet20_cifar10.h5").read_bytes() == b"new resnet20 weights"
    records = json.loads((pretrained / "trained_here.json").read_text())
    changed = [(a, b) for a, b in zip(original, records) if a != b]
    assert len(records) == len(original) and len(changed) == 1
    assert changed[0][1] == {"model": "resnet20", "sha256": hashlib.sha256(b"new resnet20 weights").hexdigest(),
                             "top1": "81.23", "recipe": "cifar10_campaign/binary.toml"}


def test_only_binary_weight_steps_of_a_schedule_are_shippable():
    import dataclasses

    from larq_esbnn.train.recipe import Recipe
    from zoo.cifar10_campaign import CAMPAIGN, shippable

    steps = [dataclasses.asdict(s) for s in Recipe.load(CAMPAIGN / "binary.toml").steps]
    assert [s["binary_weights"] for s in steps] == [False, True]
    assert not shippable({"step": 1, "schedule": {"steps": steps}})
    assert shippable({"step": 2, "schedule": {"steps": steps}})
    teacher = [dataclasses.asdict(s) for s in Recipe.load(CAMPAIGN / "resnet20_fp.toml").steps]
    assert shippable({"step": 1, "schedule": {"steps": teacher}})
