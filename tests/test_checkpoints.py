"""The authors' ImageNet checkpoints in one call (issue 16, part 1).

External registry entries raise with download instructions; ``weights=`` takes
a PyTorch checkpoint file, converts it once, caches it by sha256 (atomically)
and loads it from the cache afterwards. Checkpoints are self-made in the
released layout (names / shapes from ``shared/specs/torch_state_dicts``, the
container of the ReActNet release), with ``reactnet_18`` at 32 x 32.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip("torch")

from test_torch_import import random_state_dict, released_shapes  # noqa: E402

from larq_esbnn import cli, models, torch_import, weights  # noqa: E402
from larq_esbnn.torch_import import TernaryWeightsWarning, convert_checkpoint  # noqa: E402
from larq_esbnn.weights import ExternalWeightsError, WeightsError  # noqa: E402

SIZE = (32, 32, 3)  # the smallest input reactnet_18 accepts; weights do not depend on it
EXTERNAL = {"reactnet_a": "69.4", "reactnet_18": "65.5", "es_reactnet_a": "71.34", "bcdnet_a": "71.8",
            "bnext_t": "72.4", "es_bnext_t": "75.2"}


@pytest.fixture(scope="module")
def state():
    """A reactnet_18 state dict in the released names / shapes (seeded, no exact zeros)."""
    return random_state_dict(released_shapes("reactnet_18"), seed=11)


def save_release(sd, path, **extra):
    """Write ``sd`` as the ReActNet release does: a training dict, keys prefixed 'module.'."""
    torch.save({"epoch": 255, "best_top1_acc": 65.5, **extra,
                "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(d))
    return d


def files(directory):
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_external_entries_name_page_file_container_and_top1():
    for name, top1 in EXTERNAL.items():
        e = weights.lookup(name, "imagenet")
        assert e.kind == "external" and e.sha256 is None and not e.shipped
        assert e.page.startswith("https://github.com/") and e.filename and e.container
        assert weights.registered_top1(name, "imagenet") == pytest.approx(float(top1) / 100)
        assert "not measured here" in e.metric
        assert e.preprocessing is weights.IMAGENET
        assert name in torch_import.supported()  # the error's one call works for every entry
    # external entries are not files to verify, and the shipped ones still are
    assert weights.verify_registry() == len([e for e in weights.registered() if e.kind == "file"])


def test_imagenet_tag_raises_with_download_instructions(cache, capsys):
    for name in EXTERNAL:
        e = weights.lookup(name, "imagenet")
        with pytest.raises(ExternalWeightsError) as err:
            weights.resolve(name, "imagenet")
        msg = str(err.value)
        assert e.page in msg and e.filename in msg and e.metric in msg
        assert f"larq-esbnn predict {name} --weights /path/to/" in msg
        assert str(cache) in msg  # where the converted file will live
    with pytest.raises(ExternalWeightsError) as err:
        models.reactnet_18(input_shape=SIZE, weights="imagenet")
    msg = str(err.value)
    print("\n" + msg)
    assert 'larq_esbnn.models.reactnet_18(weights="/path/to/checkpoint.pth.tar")' in msg
    assert "https://github.com/liuzechun/ReActNet" in msg
    assert cli.main(["weights", "fetch", "bcdnet_a", "imagenet"]) == 2
    assert "drive.google.com" in capsys.readouterr().err
    assert cli.main(["weights", "reactnet_a"]) == 0
    out = capsys.readouterr().out
    assert "external" in out and "https://github.com/liuzechun/ReActNet" in out and "69.4 %" in out
    assert files(cache) == []


def test_checkpoint_file_converted_once_then_loaded_from_cache(state, cache, tmp_path, monkeypatch):
    ckpt = save_release(state, tmp_path / "checkpoint.pth.tar")
    sha = weights.sha256_file(ckpt)
    expected, _ = convert_checkpoint("reactnet_18", str(ckpt), input_shape=SIZE)  # the importer itself
    x = np.random.RandomState(0).normal(size=(2, *SIZE)).astype("float32")
    want = expected(x, training=False).numpy()

    tf.keras.backend.clear_session()
    model = models.reactnet_18(input_shape=SIZE, weights=str(ckpt))
    assert files(cache) == [f"reactnet_18-{sha}.h5", f"reactnet_18-{sha}.json"]
    for a, b in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model(x, training=False).numpy(), want, rtol=1e-6, atol=1e-6)
    info = json.loads((cache / f"reactnet_18-{sha}.json").read_text())
    assert info["sha256"] == sha and info["unused"] == [] and info["zero_total"] == 0

    # later calls read the cache: torch is not touched again
    def no_torch(*args, **kwargs):
        raise AssertionError("the checkpoint was read again instead of the cache")

    monkeypatch.setattr(torch, "load", no_torch)
    tf.keras.backend.clear_session()
    again = models.get("reactnet_18", input_shape=SIZE, weights=str(ckpt))
    np.testing.assert_allclose(again(x, training=False).numpy(), want, rtol=1e-6, atol=1e-6)
    # a headless model loads the same cached file (the head is skipped)
    tf.keras.backend.clear_session()
    headless = models.reactnet_18(input_shape=SIZE, include_top=False, weights=str(ckpt))
    np.testing.assert_array_equal(headless.get_layer("stem_conv").kernel.numpy(),
                                  state["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    assert len(files(cache)) == 2


def test_headless_model_first_caches_the_full_checkpoint(state, cache, tmp_path):
    ckpt = save_release(state, tmp_path / "r18.pt")
    sha = weights.sha256_file(ckpt)
    models.reactnet_18(input_shape=SIZE, include_top=False, weights=str(ckpt))
    assert files(cache) == [f"reactnet_18-{sha}.h5", f"reactnet_18-{sha}.json"]
    tf.keras.backend.clear_session()
    model = models.reactnet_18(input_shape=SIZE, weights=ckpt.as_uri())  # file:// URL, with head
    np.testing.assert_array_equal(model.get_layer("head_fc").kernel.numpy(), state["fc.weight"].numpy().T)


def test_zero_latent_weights_are_reported(state, cache, tmp_path):
    sd = dict(state)
    for name, index in (("layer1.0.binary_conv.weight", (3, 2, 1, 0)),
                        ("layer1.0.binary_conv.weight", (5, 0, 0, 2)),
                        ("layer4.1.binary_conv.weight", (0, 7, 2, 2))):
        sd[name] = sd[name].clone()
        sd[name][index] = 0.0
    ckpt = save_release(sd, tmp_path / "zeros.pth")
    with pytest.warns(TernaryWeightsWarning) as caught:
        models.reactnet_18(input_shape=SIZE, weights=str(ckpt))
    msg = next(str(w.message) for w in caught if issubclass(w.category, TernaryWeightsWarning))
    print("\n" + msg)
    assert "3 latent binary weights are exactly 0" in msg
    assert "layer1.0.binary_conv -> l0_conv (2)" in msg and "layer4.1.binary_conv -> l13_conv (1)" in msg
    info = json.loads((cache / f"reactnet_18-{weights.sha256_file(ckpt)}.json").read_text())
    assert info["zero_total"] == 3
    assert info["zero_weights"]["layer1.0.binary_conv"] == {
        "layer": "l0_conv", "count": 2, "first": [[3, 2, 1, 0], [5, 0, 0, 2]]}
    # the Python API returns the same report
    tf.keras.backend.clear_session()
    with pytest.warns(TernaryWeightsWarning):
        _, report = convert_checkpoint("reactnet_18", str(ckpt), input_shape=SIZE)
    assert report.zero_total == 3 and report.zero_weights["layer4.1.binary_conv"]["first"] == [(0, 7, 2, 2)]


def test_wrong_files_name_the_first_tensor_and_leave_no_cache(state, cache, tmp_path):
    missing = {k: v for k, v in state.items() if k != "layer2.0.move0.bias"}
    path = save_release(missing, tmp_path / "missing.pth.tar")
    with pytest.raises(WeightsError, match=r"missing\.pth\.tar is not a reactnet_18 checkpoint: checkpoint has no tensor 'layer2\.0\.move0\.bias'"):
        models.reactnet_18(input_shape=SIZE, weights=str(path))
    wrong = dict(state)
    wrong["layer3.1.bn1.weight"] = torch.ones(128)
    path = save_release(wrong, tmp_path / "wrong.pth.tar")
    with pytest.raises(WeightsError, match=r"tensor 'layer3\.1\.bn1\.weight' has shape \(128,\), expected \(256,\)"):
        models.reactnet_18(input_shape=SIZE, weights=str(path))
    # a checkpoint of another model: es_reactnet_18 has no released checkpoint format
    path = save_release(state, tmp_path / "r18.pth.tar")
    with pytest.raises(WeightsError, match="can be converted for reactnet_a, .*not for 'es_reactnet_18'"):
        models.es_reactnet_18(input_shape=SIZE, weights=str(path))
    # a file that is no checkpoint at all
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(WeightsError, match=r"junk\.pth is not a PyTorch checkpoint that can be read safely"):
        models.reactnet_18(input_shape=SIZE, weights=str(junk))
    # weights_only=True: a pickled object that is not tensors / containers is refused
    unsafe = save_release(state, tmp_path / "unsafe.pth.tar", args=ValueError("pickled object"))
    with pytest.raises(WeightsError, match=r"unsafe\.pth\.tar is not a PyTorch checkpoint .*Python objects"):
        models.reactnet_18(input_shape=SIZE, weights=str(unsafe))
    assert files(cache) == []


def test_failed_write_leaves_no_half_file(state, cache, tmp_path, monkeypatch):
    ckpt = save_release(state, tmp_path / "checkpoint.pth.tar")
    real_save = tf.keras.Model.save_weights

    def crash_after_writing(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)  # the temporary file is complete ...
        raise OSError("disk full")  # ... but the process fails before the rename

    monkeypatch.setattr(tf.keras.Model, "save_weights", crash_after_writing)
    with pytest.raises(OSError, match="disk full"):
        models.reactnet_18(input_shape=SIZE, weights=str(ckpt))
    assert files(cache) == []
    monkeypatch.setattr(tf.keras.Model, "save_weights", real_save)
    tf.keras.backend.clear_session()
    models.reactnet_18(input_shape=SIZE, weights=str(ckpt))
    assert len(files(cache)) == 2
