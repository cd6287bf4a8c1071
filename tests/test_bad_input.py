"""Issue 29: bad input, interrupted work and silent overwrites.

Every case is a call of the command line as a user would type it. A user error
ends with exit code 2, one line on stderr naming the bad value (no traceback),
and leaves the files it was given unchanged and no half-written output behind.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from test_train import make_folder

from larq_esbnn import cli, models
from larq_esbnn.errors import BadArgument, BadWeights
from larq_esbnn.train import data as data_lib


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LARQ_ESBNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LARQ_ESBNN_QUIET", "1")
    monkeypatch.setattr(data_lib, "_online", lambda *a, **k: False)  # tests never use the network


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"), train=4, test=2)


def run(capsys, *argv):
    """(exit code, stdout, stderr) of ``larq-esbnn ARGV``; argparse's own exits count too."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys, argv, *words, code=2):
    """Run ``argv``, expect exit ``code``, no traceback and every word of ``words`` in stderr."""
    got, out, err = run(capsys, *argv)
    assert got == code, f"exit {got}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out
    for word in words:
        assert word.lower() in err.lower(), f"{word!r} not in stderr: {err}"
    return out, err


def tree(path):
    """{relative path: bytes} of every file under ``path`` (to show nothing changed)."""
    path = pathlib.Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def text_jpg_folder(root, where="test"):
    make_folder(root, train=2, test=2)
    (root / where / "class1" / "x.jpg").write_text("not an image")
    return root


def tar_folder(src, dest):
    """``dest`` holding train.tar.gz / test.tar.gz of the image folder ``src``."""
    dest.mkdir()
    for split in ("train", "test"):
        with tarfile.open(dest / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(src / split, arcname=split)
    return dest


# ------------------------------------------------------------------ tracebacks instead of an error


def test_predict_a_folder_as_image(capsys, tmp_path):
    fails(capsys, ["predict", "resnet20", "--weights", "cifar10", tmp_path], "cannot read image", str(tmp_path))


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_text_file_named_jpg_in_data(capsys, tmp_path, command):
    data = text_jpg_folder(tmp_path / "data")
    out = tmp_path / "run"
    extra = ["--weights", "cifar10"] if command == "evaluate" else ["--epochs", "1", "--output", out]
    fails(capsys, [command, "resnet20", "--data", data, *extra], "x.jpg", "not an image")
    assert not out.exists()


def test_text_file_named_jpg_in_export_agreement_data(capsys, tmp_path):
    data = text_jpg_folder(tmp_path / "data")
    out = tmp_path / "m.tflite"
    fails(capsys, ["export", "resnet20", "--fast", "--agreement-data", data / "test", "-o", out], "x.jpg",
          "not an image")
    assert not out.exists() and list(tmp_path.glob("*.tflite*")) == []


@pytest.mark.parametrize("arg, words", [
    ("foo=1", ["no argument foo", "tau"]),
    ("num_classes=10", ["num_classes", "set by the command"]),
])
def test_evaluate_bad_model_arg(capsys, folder, arg, words):
    fails(capsys, ["evaluate", "resnet20", "--weights", "cifar10", "--data", folder, "--arg", arg], *words)


@pytest.mark.parametrize("argv", [
    ["evaluate", "resnet20", "--weights", "cifar10", "--batch-size", "-4"],
    ["evaluate", "resnet20", "--weights", "cifar10", "--batch-size", "0"],
    ["evaluate", "resnet20", "--weights", "cifar10", "--limit", "-5"],
    ["evaluate", "resnet20", "--weights", "cifar10", "--limit", "0"],
    ["train", "resnet20", "--epochs", "0"],
    ["train", "resnet20", "--batch-size", "0"],
    ["train", "resnet20", "--train-limit", "-5"],
    ["finetune", "resnet20", "--weights", "cifar10", "--batch-size", "0"],
    ["finetune", "resnet20", "--weights", "cifar10", "--epochs", "0"],
    ["finetune", "resnet20", "--weights", "cifar10", "--epochs", "-2"],
    ["finetune", "resnet20", "--weights", "cifar10", "--lr", "-1"],
    ["benchmark", "resnet20", "--warmup", "-1"],
], ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_numbers_out_of_range(capsys, tmp_path, folder, argv):
    out = tmp_path / "run"
    extra = ["--data", folder, "--output", out] if argv[0] in ("train", "finetune") else []
    extra += ["--data", folder] if argv[0] == "evaluate" else []
    fails(capsys, [*argv, *extra], argv[-2], "expected")
    assert not out.exists()


RECIPE_HEAD = 'model = "resnet20"\ndata = "{data}"\n'
STEP = "[[steps]]\nepochs = 1\nlr = 1e-3\n"


@pytest.mark.parametrize("text, words", [
    (RECIPE_HEAD + STEP + "speed = 3\n", ["unknown keys", "speed"]),
    (RECIPE_HEAD + "[[steps]]\nepochs = 1\nlr = 1e-3\nfoo = 1\n", ["step 1", "unknown keys", "foo"]),
    (RECIPE_HEAD + '[[steps]]\nepochs = 1\nlr = "fast"\n', ["lr", "number", "fast"]),
    (RECIPE_HEAD + 'batch_size = "16"\n' + STEP, ["batch_size", "integer", "16"]),
    ('data = "{data}"\n' + STEP, ["missing", "model"]),
    (RECIPE_HEAD + "steps = 3\n", ["steps", "list"]),
    (RECIPE_HEAD + "[[steps]]\nepochs = 1.5\nlr = 1e-3\n", ["epochs", "integer", "1.5"]),
    (RECIPE_HEAD + "label_smoothing = 5.0\n" + STEP, ["label_smoothing", "[0, 1)"]),
    (RECIPE_HEAD + STEP + "warmup_epochs = -3\n", ["warmup_epochs", ">= 0"]),
], ids=["key", "step key", "lr text", "batch text", "no model", "steps int", "epochs float",
        "label smoothing", "warmup"])
def test_bad_recipe(capsys, tmp_path, folder, text, words):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text.format(data=folder))
    out = tmp_path / "run"
    fails(capsys, ["train", "--recipe", recipe, "--output", out], str(recipe), *words)
    assert not out.exists()


def list_pth(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    return path


def test_pth_holding_a_list(capsys, tmp_path):
    path = list_pth(tmp_path)
    fails(capsys, ["import-torch", "reactnet_a", path, "-o", tmp_path / "o.h5"], "holds a list", "state dict")
    assert not (tmp_path / "o.h5").exists()
    fails(capsys, ["predict", "reactnet_a", "--weights", path, path], "holds a list")
    with pytest.raises(BadWeights, match="holds a list"):
        models.get("reactnet_a", weights=str(path), input_shape=(64, 64, 3))


@pytest.mark.parametrize("content, words", [
    (b"", ["is empty"]),
    (b"efficient net weights, honest\n", ["not a PyTorch checkpoint"]),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), ["not a PyTorch checkpoint"]),
], ids=["empty", "text", "random"])
def test_pth_that_is_not_a_checkpoint(capsys, tmp_path, content, words):
    pytest.importorskip("torch")
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    _, err = fails(capsys, ["import-torch", "reactnet_a", path, "-o", tmp_path / "o.h5"], str(path), *words)
    assert "weights_only=False" not in err and not err.rstrip().endswith(": 101")


def test_export_a_model_without_pad_value(capsys, tmp_path):
    out = tmp_path / "x.tflite"
    code, _, err = run(capsys, "export", "resnet20_fp", "--fast", "--no-optimize", "-o", out)
    assert "Traceback" not in err and out.stat().st_size > 1000, err
    fails(capsys, ["export", "resnet20_fp", "--pad-value", "1", "-o", tmp_path / "y.tflite"], "--pad-value")


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_bad_archive(capsys, tmp_path, folder, kind):
    data = tar_folder(folder, tmp_path / "data")
    archive = data / "test.tar.gz"
    if kind == "text":
        archive.write_text("not an archive")
    else:
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    fails(capsys, ["evaluate", "resnet20", "--weights", "cifar10", "--data", data], str(archive), "tar.gz")
    extracted = tmp_path / "cache" / "extracted"
    assert not extracted.exists() or list(extracted.iterdir()) == []


def test_train_and_test_with_different_classes(capsys, tmp_path):
    data = make_folder(tmp_path / "data", train=2, test=2)
    (data / "test" / "class2").rename(data / "test" / "other")
    out = tmp_path / "run"
    fails(capsys, ["train", "resnet20", "--data", data, "--epochs", "1", "--output", out],
          "different classes", "class2", "other")
    assert not out.exists()


def test_ctrl_c_during_train(tmp_path):
    data = make_folder(tmp_path / "data", train=40, test=2)
    out = tmp_path / "run"
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "LARQ_ESBNN_QUIET": "1", "LARQ_ESBNN_CACHE": str(tmp_path / "c")}
    argv = ["train", "resnet20", "--data", str(data), "--epochs", "6", "--batch-size", "4", "--output", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "larq_esbnn.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latest = out / "state" / "latest.json"
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=600)[1]  # a guard against a hang; slow only on a loaded machine
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted: checkpoint" in err and f"--output {out} --resume" in err
    assert latest.exists() and not (out / "weights.h5").exists()
    # the log lists the saved epochs only, not the one the interrupt cut short
    state = json.loads(latest.read_text())
    rows = (out / f"log_step{state['step']}.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(state["epoch"] + 1))


def test_resume_drops_log_rows_of_unsaved_epochs(tmp_path):
    from larq_esbnn.train.trainer import drop_unsaved_log_rows

    log = tmp_path / "log_step1.csv"
    log.write_text("epoch,accuracy\n0,0.5\n1,0.6\n2,0.61\n")
    drop_unsaved_log_rows(log, 2)
    assert log.read_text() == "epoch,accuracy\n0,0.5\n1,0.6\n"
    drop_unsaved_log_rows(log, 5)
    assert log.read_text() == "epoch,accuracy\n0,0.5\n1,0.6\n"
    drop_unsaved_log_rows(tmp_path / "missing.csv", 0)
    assert not (tmp_path / "missing.csv").exists()


# ------------------------------------------------------------------ wrong results with exit 0


def test_models_json_without_match(capsys):
    fails(capsys, ["models", "zzz*", "--json"], "no registered model matches", "zzz*")
    fails(capsys, ["models", "zzz*"], "no registered model matches")


def test_evaluate_json_stdout_is_json_on_first_use(capsys, tmp_path):
    src = make_folder(tmp_path / "src", classes=10, train=1, test=1)
    data = tar_folder(src, tmp_path / "data")
    code, out, err = run(capsys, "evaluate", "resnet20", "--weights", "cifar10", "--data", data, "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 10 and "extracting" in err
    extracted = next((tmp_path / "cache" / "extracted").iterdir())
    assert (extracted / "test").is_dir() and not (extracted / "train").exists()  # evaluating needs no train


def test_train_resume_without_an_earlier_run_says_so(capsys, tmp_path, folder, monkeypatch):
    from larq_esbnn.train import trainer

    calls = []
    monkeypatch.setattr(trainer, "train", lambda recipe, out, resume, strategy, write_snapshots: calls.append(resume))
    code, _, err = run(capsys, "train", "resnet20", "--data", folder, "--output", tmp_path / "run", "--resume")
    assert code == 0 and calls == [True]
    assert "no earlier run" in err and "starting a fresh run" in err


@pytest.mark.parametrize("kwargs, words", [
    ({"bn_momentum": 5}, "bn_momentum"),
    ({"include_top": False, "num_classes": 3}, "num_classes"),
    ({"include_top": False, "classifier_activation": "softmax"}, "classifier_activation"),
    ({"colour": 1}, "no argument colour"),
])
def test_model_arguments_checked(kwargs, words):
    with pytest.raises(BadArgument, match=words):
        models.get("resnet20", **kwargs)


def test_one_class_folder(capsys, tmp_path):
    data = make_folder(tmp_path / "data", classes=1, train=2, test=2)
    out = tmp_path / "run"
    fails(capsys, ["train", "resnet20", "--data", data, "--epochs", "1", "--output", out], "1 class", "two")
    assert not out.exists()


def test_export_name_must_end_in_tflite(capsys, tmp_path):
    fails(capsys, ["export", "resnet20", "-o", tmp_path / "model.h5"], "model.h5", ".tflite")
    assert not (tmp_path / "model.h5").exists()


def test_export_pad_value_1_with_weights_warns(capsys, tmp_path):
    out = tmp_path / "m.tflite"
    code, _, err = run(capsys, "export", "resnet20", "--weights", "cifar10", "--pad-value", "1", "--fast", "-o", out)
    assert "warning" in err and "pad value 0" in err and "Traceback" not in err
    assert out.exists()


# ------------------------------------------------------------------ data lost or left behind


def test_resume_with_another_model_keeps_the_run(capsys, tmp_path, folder):
    run_dir = tmp_path / "run"
    (run_dir / "state").mkdir(parents=True)
    (run_dir / "recipe.json").write_text(json.dumps({"model": "resnet20"}))
    before = tree(run_dir)
    fails(capsys, ["train", "es_resnet20", "--data", folder, "--output", run_dir, "--resume"],
          "holds a run of resnet20", "es_resnet20")
    assert tree(run_dir) == before


def test_train_into_a_folder_of_user_files(capsys, tmp_path, folder):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "weights.h5").write_bytes(b"my weights")
    (out / "metrics.json").write_text("{}")
    before = tree(out)
    fails(capsys, ["train", "resnet20", "--data", folder, "--epochs", "1", "--output", out],
          "--overwrite", "weights.h5")
    assert tree(out) == before


@pytest.mark.parametrize("argv", [
    ["import-torch", "reactnet_a", "any.pth", "-o"],
    ["export", "resnet20", "-o"],
], ids=["import-torch", "export"])
def test_existing_output_file_is_kept(capsys, tmp_path, argv):
    target = tmp_path / ("out.h5" if argv[0] == "import-torch" else "out.tflite")
    target.write_bytes(b"keep me")
    fails(capsys, [*argv, target], "already exists", "--overwrite")
    assert target.read_bytes() == b"keep me"


# ------------------------------------------------------------------ a hang


def test_unprepared_tfds_name_offline_fails_fast(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    start = time.time()
    fails(capsys, ["evaluate", "resnet20", "--weights", "cifar10", "--data", "cifar10"],
          "not prepared", "TFDS_DATA_DIR", "folder")
    assert time.time() - start < 60
    assert not list((tmp_path / "tfds").rglob("*incomplete*"))


# ------------------------------------------------------------------ friction


def test_unknown_tfds_name_suggests_close_ones(capsys):
    _, err = fails(capsys, ["evaluate", "resnet20", "--weights", "cifar10", "--data", "cifar1O"], "cifar10")
    assert len(err) < 600


def test_data_that_is_a_file(capsys, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x")
    fails(capsys, ["evaluate", "resnet20", "--weights", "cifar10", "--data", path], "is a file")


def test_weights_that_are_a_folder(capsys, tmp_path, folder):
    fails(capsys, ["evaluate", "resnet20", "--weights", tmp_path, "--data", folder], "is a directory")


def test_class_count_differs_from_the_weights(capsys, folder):
    fails(capsys, ["evaluate", "resnet20", "--weights", "cifar10", "--data", folder], "3 classes")


def test_summary_with_a_pattern(capsys):
    _, err = fails(capsys, ["summary", "es_*"], "pattern", "es_resnet20")
    assert " resnet20," not in err


def test_one_bad_image_among_good_ones(capsys, tmp_path, folder):
    good = sorted((folder / "test" / "class0").iterdir())[:2]
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    out, _ = fails(capsys, ["predict", "resnet20", "--weights", "cifar10", good[0], bad, good[1]], str(bad))
    assert str(good[0]) in out and str(good[1]) in out


def test_unwritable_cache_names_the_variable(capsys, tmp_path, folder, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LARQ_ESBNN_CACHE", str(blocker / "cache"))
    data = tar_folder(folder, tmp_path / "data")
    fails(capsys, ["evaluate", "resnet20", "--weights", "cifar10", "--data", data], "LARQ_ESBNN_CACHE")


def test_unwritable_cache_only_skips_caching(capsys, tmp_path, folder, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LARQ_ESBNN_CACHE", str(blocker / "cache"))
    split = data_lib.load(str(folder), "test")
    assert len(split) == 6 and "LARQ_ESBNN_CACHE" in capsys.readouterr().err


def test_models_lists_without_building(capsys, monkeypatch):
    from larq_esbnn import report

    monkeypatch.setattr(report, "summary", lambda *a, **k: pytest.fail("models built a model"))
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == models.names() and "bops" not in rows[0]


def test_limit_decodes_only_the_subset(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", train=2, test=5)
    decoded = []
    real = data_lib._decode_all
    monkeypatch.setattr(data_lib, "_decode_all", lambda files: decoded.append(len(files)) or real(files))
    split = data_lib.load(str(data), "test", limit=4)
    full = data_lib.load(str(data), "test").subset(4)
    assert decoded[0] == 4 and np.array_equal(split.images, full.images)


def test_debug_shows_the_traceback(capsys):
    _, err = run(capsys, "--debug", "summary", "no_such_model")[1:]
    assert "Traceback" in err and "unknown model" in err



def test_help_does_not_start_tensorflow():
    script = ("import sys\nfrom larq_esbnn import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n"
              "    pass\nprint('tensorflow loaded:', 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "evaluate" in done.stdout and "tensorflow loaded: False" in done.stdout and done.stderr == ""


def test_commands_hide_tensorflow_start_up_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "larq_esbnn.cli", "models", "resnet20"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "resnet20" in done.stdout
    assert done.stderr == "", done.stderr


def test_snapshot_dir_that_cannot_be_created(capsys, tmp_path, folder):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = tmp_path / "run"
    fails(capsys, ["train", "resnet20", "--data", folder, "--output", out, "--snapshot-dir", blocker / "snap"],
          "--snapshot-dir", "cannot create")
    assert not out.exists()
