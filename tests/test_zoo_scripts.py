"""The statistics behind the published CIFAR-10 comparisons (zoo/collect_cifar10.py,
zoo/continue_cifar10.py)."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "zoo"))
from collect_cifar10 import paired_row  # noqa: E402


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


def test_campaign_ship_rewrites_exactly_one_registry_record(tmp_path):
    from larq_esbnn import weights as weights_lib
    from zoo.cifar10_campaign import update_registry

    registry = tmp_path / "weights.py"
    original = pathlib.Path(weights_lib.__file__).read_text()
    registry.write_text(original)
    update_registry("resnet20", "ab" * 32, 0.81234, "cifar10_campaign/binary.toml", path=registry)
    changed = [(a, b) for a, b in zip(original.splitlines(), registry.read_text().splitlines()) if a != b]
    assert len(changed) == 1 and '_trained_here("resnet20", ' in changed[0][0]
    assert changed[0][1].strip() == f'_trained_here("resnet20", "{"ab" * 32}", "81.23", "cifar10_campaign/binary.toml"),'
    # (one changed line: the es_resnet20 record, whose name contains "resnet20", is kept)
    with pytest.raises(RuntimeError, match="expected one _trained_here record of no_such_model"):
        update_registry("no_such_model", "ab" * 32, 0.5, "x.toml", path=registry)
