"""Training, resuming, distribution, fine-tuning and evaluation (issue 6)."""

import csv
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

import larq_esbnn
from larq_esbnn import cli, models
from larq_esbnn.train import data as data_lib
from larq_esbnn.train import trainer
from larq_esbnn.train.recipe import Recipe, Step
from larq_esbnn.util import cpu_model

COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def make_folder(root, classes=3, train=16, test=6, size=32, seed=0):
    """A small learnable image folder: each class has its own base colour."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = np.clip(np.array(COLORS[c % 3]) + rng.normal(0, 40, (size, size, 3)), 0, 255)
                tf.io.write_file(str(folder / f"{i:03d}.png"), tf.io.encode_png(image.astype(np.uint8)))
    return root


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LARQ_ESBNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LARQ_ESBNN_QUIET", "1")


# session scope: trained at most once per pytest-xdist worker, even when the worker
# interleaves this module with others (a module-scoped fixture is then rebuilt)
@pytest.fixture(scope="session")
def trained(folder, tmp_path_factory):
    """A two-step run through the CLI contract (shared by several tests)."""
    out = tmp_path_factory.mktemp("run")
    os.environ["LARQ_ESBNN_QUIET"] = "1"
    code = cli.main(["train", "resnet20", "--data", str(folder), "--epochs", "2", "--batch-size", "8",
                     "--output", str(out)])
    assert code == 0
    return out


def test_train_cli_writes_loadable_weights_and_logs(trained, folder):
    weights = trained / "weights.h5"
    assert weights.exists() and (trained / "step1_weights.h5").exists()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["n"] == 18 and metrics["epochs"] == 2 and metrics["images_per_sec"] > 0
    assert (trained / "curves.png").stat().st_size > 1000
    header = (trained / "log_step2.csv").read_text().splitlines()[0]
    assert "images_per_sec" in header and "val_accuracy" in header
    assert list((trained / "tensorboard").rglob("events.out.tfevents*"))
    model = models.get("resnet20", num_classes=3, weights=str(weights))
    split = data_lib.load(str(folder), "test")
    assert trainer.evaluate(model, split, 32, 8) == {k: metrics[k] for k in ("top1", "top5", "n")}


def test_step2_starts_from_every_step1_tensor(trained):
    step1 = models.get("resnet20", num_classes=3, binary_weights=False)
    step1.load_weights(str(trained / "step1_weights.h5"))
    step2 = models.get("resnet20", num_classes=3)
    assert [w.shape for w in step1.weights] == [w.shape for w in step2.weights]


def test_evaluate_json(trained, folder, capsys):
    code = cli.main(["evaluate", "resnet20", "--weights", str(trained / "weights.h5"), "--data", str(folder), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"top1", "top5", "n"} and result["n"] == 18 and 0 <= result["top1"] <= 1


def test_finetune_replaces_head_and_freezes_backbone(trained, tmp_path):
    target = make_folder(tmp_path / "two", classes=2, train=8, test=4, seed=1)
    out = tmp_path / "ft"
    code = cli.main(["finetune", "resnet20", "--weights", str(trained / "weights.h5"), "--data", str(target),
                     "--epochs", "1", "--batch-size", "8", "--freeze-backbone", "--output", str(out)])
    assert code == 0
    tuned = models.get("resnet20", num_classes=2, weights=str(out / "weights.h5"))
    base = models.get("resnet20", num_classes=3, weights=str(trained / "weights.h5"))
    # predict reads the classes and preprocessing the run recorded beside its weights
    image = sorted((target / "test" / "class1").iterdir())[0]
    (preds,) = larq_esbnn.predict("resnet20", str(out / "weights.h5"), [image], top=2)
    assert sorted(p.name for p in preds) == ["class0", "class1"]
    assert tuned.get_layer("head_fc").kernel.shape == (64, 2)
    for name in ("stem_conv", "l5_conv", "l17_bn"):
        for a, b in zip(tuned.get_layer(name).get_weights(), base.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_val_limit_only_shortens_the_per_epoch_test_pass(folder, tmp_path, monkeypatch):
    calls = []
    original = data_lib.dataset

    def recording(split, size, batch_size, training, *args, **kwargs):
        if not training:
            calls.append(kwargs.get("limit"))
        return original(split, size, batch_size, training, *args, **kwargs)

    monkeypatch.setattr(trainer.data_lib, "dataset", recording)
    out = tmp_path / "run"
    code = cli.main(["train", "resnet20", "--data", str(folder), "--epochs", "1", "--batch-size", "8",
                     "--val-limit", "4", "--output", str(out)])
    assert code == 0
    assert calls == [4, None]  # per-epoch validation on 4 images, final evaluation on all
    assert json.loads((out / "metrics.json").read_text())["n"] == 18
    assert json.loads((out / "recipe.json").read_text())["val_limit"] == 4


def test_recipe_files_and_overrides():
    root = pathlib.Path(__file__).resolve().parents[1] / "training"
    recipe = Recipe.load(root / "resnet20_cifar10.toml")
    assert [s.binary_weights for s in recipe.steps] == [False, True]
    assert [s.epochs for s in recipe.with_epochs(5).steps] == [2, 3]
    assert [s.epochs for s in recipe.with_epochs(1).steps] == [0, 1]
    with pytest.raises(ValueError, match="unknown keys \\['optimiser'\\]"):
        Recipe.from_dict({"model": "resnet20", "data": "x", "optimiser": "sgd", "steps": [{"epochs": 1, "lr": 1}]})


def test_warmup_cosine_schedule():
    s = trainer.WarmupCosine(1.0, total=10, warmup=2)
    values = [float(s(i)) for i in range(11)]
    assert values[0] == 0 and values[1] == pytest.approx(0.5) and values[2] == pytest.approx(1.0)
    assert values[10] == pytest.approx(0.0, abs=1e-7) and all(a >= b for a, b in zip(values[2:], values[3:]))


def test_weight_decay_groups():
    opt = trainer.make_optimizer(Step(epochs=1, lr=1e-3, weight_decay=0.01), 10)
    model = models.resnet20(num_classes=3)
    decayed = {v.name for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert any("l0_conv/kernel" in n for n in decayed) and any("head_fc/kernel" in n for n in decayed)
    assert not any(k in n for n in decayed for k in ("gamma", "beta", "bias", "slope"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(folder, tmp_path):
    recipe = Recipe(model="resnet20", data=str(folder), batch_size=8, steps=[Step(epochs=2, lr=1e-3)])
    split_train = data_lib.load(str(folder), "train")
    split_test = data_lib.load(str(folder), "test")
    strategy = tf.distribute.get_strategy()
    student = models.resnet20(num_classes=3)
    one_epoch = Recipe(**{**recipe.__dict__, "steps": [Step(epochs=1, lr=1e-3)]})
    trainer.fit_step(student, one_epoch.steps[0], 1, split_train, split_test, tmp_path, one_epoch, strategy)
    latest = json.loads((tmp_path / "state" / "latest.json").read_text())
    kernel = student.get_layer("head_fc").kernel
    kernel.assign(tf.fill(kernel.shape, np.nan))
    with pytest.raises(trainer.TrainingDiverged, match="loss became nan at step 1, epoch 2.*last good checkpoint"):
        trainer.fit_step(student, recipe.steps[0], 1, split_train, split_test, tmp_path, recipe, strategy,
                         resume_epoch=1)
    assert json.loads((tmp_path / "state" / "latest.json").read_text()) == latest


def _train_cmd(folder, out, *extra):
    return [sys.executable, "-m", "larq_esbnn.cli", "train", "resnet20", "--data", str(folder), "--epochs", "4",
            "--batch-size", "8", "--deterministic", "--output", str(out), *extra]


def test_resume_after_kill_gives_identical_weights(tmp_path):
    folder = make_folder(tmp_path / "imgs", train=24, test=4)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "LARQ_ESBNN_QUIET": "1", "LARQ_ESBNN_CACHE": str(tmp_path / "c")}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(folder, full), env=env, check=True, capture_output=True, timeout=900)
    proc = subprocess.Popen(_train_cmd(folder, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "state" / "latest.json"
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.exists() and not (killed / "weights.h5").exists(), "the run was not interrupted mid-way"
    interrupted_at = json.loads(latest.read_text())
    subprocess.run(_train_cmd(folder, killed, "--resume"), env=env, check=True, capture_output=True, timeout=900)
    a = models.get("resnet20", num_classes=3, weights=str(full / "weights.h5"))
    b = models.get("resnet20", num_classes=3, weights=str(killed / "weights.h5"))
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy(), err_msg=f"{wa.name} after resume from {interrupted_at}")


def test_mirrored_strategy_on_two_cpu_devices(folder, tmp_path):
    script = textwrap.dedent(f"""
        import os
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from larq_esbnn.train import trainer
        from larq_esbnn.train.recipe import Recipe, Step
        strategy = trainer.choose_strategy("mirrored")
        print("replicas", strategy.num_replicas_in_sync)
        recipe = Recipe(model="resnet20", data={str(folder)!r}, batch_size=8, steps=[Step(epochs=1, lr=1e-3)])
        metrics = trainer.train(recipe, {str(tmp_path / 'm')!r}, strategy=strategy)
        print("n", metrics["n"])
    """)
    env = {**os.environ, "LARQ_ESBNN_QUIET": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout and "n 18" in result.stdout
    assert (tmp_path / "m" / "weights.h5").exists()


def test_tfds_path_with_mock_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data replaces the download; the offline fail-fast check (tested in
    # test_bad_input.py) must not stop this unprepared-looking data set first
    monkeypatch.setattr(data_lib, "_online", lambda *args, **kwargs: True)
    with tfds.testing.mock_data(num_examples=12):
        split = data_lib.load("cifar10", "train")
        assert split.num_classes == 10 and len(split) == 12
        x, y = next(iter(data_lib.dataset(split, 32, 4, True, seed=0, epoch=0)))
    assert x.shape == (4, 32, 32, 3) and y.shape == (4, 10)


def test_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data_lib.load("./no/such/folder", "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="has no class sub-folders"):
        data_lib.load(str(tmp_path), "train")


def test_existing_run_needs_resume(trained, folder):
    with pytest.raises(FileExistsError, match="pass --resume"):
        trainer.train(Recipe(model="resnet20", data=str(folder), steps=[Step(epochs=1, lr=1e-3)]), trained)


def test_init_weights_start_the_first_step(trained, folder, tmp_path, monkeypatch):
    """``init_weights`` loads the given weights into the first trained step (here
    a two-step recipe whose step 1 is skipped, so step 2 starts from the file)."""
    seen = []

    def record(student, step, index, *args):
        seen.append((index, [w.numpy() for w in student.weights]))

    monkeypatch.setattr(trainer, "fit_step", record)
    init = trained / "weights.h5"
    recipe = Recipe(model="resnet20", data=str(folder), batch_size=8, init_weights=str(init),
                    steps=[Step(epochs=0, lr=1e-3, binary_weights=False), Step(epochs=1, lr=1e-3)])
    trainer.train(recipe, tmp_path / "run")
    want = models.get("resnet20", num_classes=3, weights=str(init))
    assert [index for index, _ in seen] == [2]
    for got, w in zip(seen[0][1], want.weights):
        np.testing.assert_array_equal(got, w.numpy(), err_msg=w.name)
    # the run records which file the name stood for (a tag can later name other weights)
    record_file = json.loads((tmp_path / "run" / "init_weights.json").read_text())
    assert record_file["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    bad = Recipe(model="resnet20", data=str(folder), batch_size=8, init_weights="no_such_tag",
                 steps=[Step(epochs=1, lr=1e-3)])
    with pytest.raises(ValueError, match="no_such_tag"):
        trainer.train(bad, tmp_path / "bad")


def test_fused_adamw_is_adamw(tmp_path, float64):
    """FusedAdamW (one ResourceApplyAdam per variable) makes the updates of the stock
    AdamW, with a warm-up/cosine schedule and weight decay on kernels only, inside a
    traced step as in training (float64: equal to 1e-12); an AdamW checkpoint
    restores into it (runs started before it existed resume)."""
    def run(cls, restore=None):
        tf.keras.utils.set_random_seed(3)
        model = tf.keras.Sequential([tf.keras.Input((5, 5, 2)), tf.keras.layers.Conv2D(3, 3),
                                     tf.keras.layers.Flatten(), tf.keras.layers.Dense(4)])
        opt = cls(learning_rate=trainer.WarmupCosine(0.05, 6, 2), weight_decay=0.1)
        opt.exclude_from_weight_decay(var_names=trainer.NO_DECAY)
        x = tf.constant(np.random.RandomState(0).randn(6, 5, 5, 2))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x) ** 2)
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

        ckpt = tf.train.Checkpoint(model=model, optimizer=opt)
        if restore:
            opt.build(model.trainable_variables)
            ckpt.restore(restore).assert_consumed()
        for _ in range(3):
            step()
        return [v.numpy() for v in model.weights + opt.variables], ckpt.save(str(tmp_path / cls.__name__))

    stock, saved = run(tf.keras.optimizers.AdamW)
    fused, _ = run(trainer.FusedAdamW)
    for a, b in zip(stock, fused):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    stock_again, _ = run(tf.keras.optimizers.AdamW, restore=saved)
    fused_again, _ = run(trainer.FusedAdamW, restore=saved)
    assert not np.allclose(stock_again[0], stock[0])  # the restored run moved on from step 3
    for a, b in zip(stock_again, fused_again):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_distillation_loss_is_the_average_of_ce_and_soft_ce():
    student = models.bcdnet_a(input_shape=(32, 32, 3), num_classes=3)
    teacher = tf.keras.Sequential([tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(3)])
    x = np.random.RandomState(0).randn(4, 32, 32, 3).astype(np.float32)
    y = tf.one_hot([0, 1, 2, 0], 3)
    teacher(x)
    per_example, _ = trainer.BNNTrainer(student, teacher, label_smoothing=0.1)._loss_terms(x, y, False)
    cls = student.get_layer("head_fc").output
    dist = student.get_layer("head_fc_dist").output
    cls, dist = tf.keras.Model(student.inputs, [cls, dist])(x, training=False)
    ce = tf.keras.losses.categorical_crossentropy(y, cls, from_logits=True, label_smoothing=0.1)
    soft = -tf.reduce_sum(tf.nn.softmax(teacher(x)) * tf.nn.log_softmax(dist), -1)
    np.testing.assert_allclose(per_example.numpy(), (0.5 * ce + 0.5 * soft).numpy(), rtol=1e-5)


def test_warmup_cosine_offset_continues_the_schedule():
    plain = trainer.WarmupCosine(1.0, total=10, warmup=2)
    shifted = trainer.WarmupCosine(1.0, total=10, warmup=2, offset=4)
    for i in range(7):
        assert float(shifted(i)) == pytest.approx(float(plain(i + 4)))
    assert trainer.WarmupCosine.from_config(shifted.get_config()).offset == 4


def test_sgd_steps_use_nesterov_momentum_and_the_decay_groups():
    opt = trainer.make_optimizer(Step(epochs=1, lr=0.1, weight_decay=5e-4, optimizer="sgd", momentum=0.8), 10)
    assert isinstance(opt, tf.keras.optimizers.SGD) and opt.nesterov and opt.momentum == pytest.approx(0.8)
    model = models.resnet20_fp(num_classes=3)
    decayed = {v.name for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert decayed and not any(k in n for n in decayed for k in ("gamma", "beta", "bias"))
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'sgd', got 'adam'"):
        Recipe.from_dict({"model": "resnet20", "data": "x", "steps": [{"epochs": 1, "lr": 1, "optimizer": "adam"}]})


def test_real_valued_models_refuse_real_weight_steps():
    assert trainer.has_binary_weights("resnet20") and trainer.has_binary_weights("es_reactnet_a")
    assert not trainer.has_binary_weights("resnet20_fp")
    with pytest.raises(ValueError, match="resnet20_fp has no binary weights"):
        trainer._step_args("resnet20_fp", Step(epochs=1, lr=0.1, binary_weights=False))
    assert trainer._step_args("resnet20", Step(epochs=1, lr=0.1, binary_weights=False)) == {"binary_weights": False}


def test_resume_from_a_committed_snapshot_when_the_run_folder_is_gone(folder, tmp_path, capsys):
    """A run killed after step 2, epoch 1 of 2 is snapshotted; its folder is lost; a
    new run with ``resume=True`` continues from the snapshot's weights at the same
    place of the schedule (learning rate included) and the history spans both runs."""
    snap = tmp_path / "snap"
    recipe = Recipe(model="resnet20", data=str(folder), batch_size=8, val_limit=4, snapshot=str(snap),
                    steps=[Step(epochs=1, lr=1e-3, binary_weights=False), Step(epochs=2, lr=1e-3)])
    first = tmp_path / "first"
    trainer.train(recipe, first)
    latest = first / "state" / "latest.json"
    assert json.loads(latest.read_text())["prefix"] == "s2-e1"
    latest.write_text(json.dumps({"step": 2, "epoch": 0, "prefix": "s2-e0"}))  # as if killed after s2-e0
    position = trainer.write_snapshot(first, snap, note="test")
    assert (position["step"], position["epoch"], position["epochs_done"], position["epochs_total"]) == (2, 0, 2, 3)
    snapshot_weights = models.get("resnet20", num_classes=3, weights=str(snap / "weights.h5"))

    seen = []
    real_fit_step = trainer.fit_step

    def record(student, step, index, train, test, out, recipe, strategy, teacher, resume_epoch, prefix, lr_offset,
               on_checkpoint):
        seen.append((index, resume_epoch, prefix, lr_offset, [w.numpy().copy() for w in student.weights]))
        return real_fit_step(student, step, index, train, test, out, recipe, strategy, teacher, resume_epoch,
                             prefix, lr_offset, on_checkpoint)

    second = tmp_path / "second"
    trainer.fit_step = record
    try:  # the continued run refreshes the snapshot itself after its epoch
        trainer.train(recipe, second, resume=True, write_snapshots=True)
    finally:
        trainer.fit_step = real_fit_step
    assert "continuing from the committed snapshot" in capsys.readouterr().out
    steps_per_epoch = 48 // 8
    assert [s[:4] for s in seen] == [(2, 1, None, steps_per_epoch)]
    for got, want in zip(seen[0][4], snapshot_weights.weights):
        np.testing.assert_array_equal(got, want.numpy(), err_msg=want.name)
    assert json.loads((second / "state" / "latest.json").read_text())["lr_offset"] == steps_per_epoch
    position = json.loads((snap / "position.json").read_text())
    assert (position["step"], position["epoch"], position["epochs_done"]) == (2, 1, 3)
    assert position["sha256"] == hashlib.sha256((second / "state" / "s2-e1.weights.h5").read_bytes()).hexdigest()
    history = (snap / "history.csv").read_text().splitlines()
    assert [line.split(",")[:3] for line in history[1:]] == [["1", "0", "1"], ["2", "0", "2"], ["2", "1", "3"]]
    rows = list(csv.DictReader(history))
    assert [row["run"] for row in rows] == ["first", "first", "second"]
    # date, CPU and kernels of the run that wrote the snapshot
    assert rows[-1]["note"].endswith(f"{cpu_model()}, {trainer.kernels()}")

    other = Recipe(**{**recipe.__dict__, "steps": [Step(epochs=1, lr=1e-3, binary_weights=False),
                                                   Step(epochs=3, lr=1e-3)]})
    with pytest.raises(ValueError, match=r"another schedule \(differs in \['steps'\]\)"):
        trainer.train(other, tmp_path / "third", resume=True)
    (snap / "weights.h5").write_bytes(b"not the snapshot")
    with pytest.raises(ValueError, match="sha256"):
        trainer.train(recipe, tmp_path / "fourth", resume=True)
    assert not (tmp_path / "fourth").exists()  # checked before any work
    with pytest.raises(ValueError, match="needs a snapshot folder"):
        trainer.train(Recipe(**{**recipe.__dict__, "snapshot": ""}), tmp_path / "fifth", write_snapshots=True)
    assert not (tmp_path / "fifth").exists()


def test_schedule_record_pins_the_teachers_weights(tmp_path):
    from larq_esbnn import weights as weights_lib

    def record(teacher):
        return trainer.schedule_record(Recipe(model="resnet20", data="x", teacher=teacher,
                                              steps=[Step(epochs=1, lr=1e-3)]))

    shipped = weights_lib.resolve("resnet20_fp", "cifar10")[0]
    assert record("resnet20_fp.cifar10")["teacher_sha256"] == weights_lib.sha256_file(shipped)
    other = tmp_path / "teacher.h5"
    other.write_bytes(b"other teacher weights")
    assert record(f"resnet20_fp:{other}")["teacher_sha256"] == hashlib.sha256(b"other teacher weights").hexdigest()
    assert record("")["teacher_sha256"] is None


def test_every_shipped_recipe_loads_and_campaign_recipes_name_their_snapshots():
    root = pathlib.Path(__file__).resolve().parents[1] / "training"
    recipes = sorted(root.rglob("*.toml"))
    assert len(recipes) >= 10
    for path in recipes:
        Recipe.load(path)  # raises on unknown keys or bad values
    campaign = Recipe.load(root / "cifar10_campaign" / "binary.toml")
    campaign.model = "es_resnet20"  # as `train es_resnet20 --recipe ...` does
    assert campaign.snapshot_dir() == str(root / "cifar10_campaign" / "snapshots" / "es_resnet20")
    assert sum(s.epochs for s in campaign.steps) >= 100
