"""Weights registry, verified cached downloads (real HTTP server on 127.0.0.1) and checked loading."""

import hashlib
import http.server
import json
import os
import tarfile
import threading

import h5py
import numpy as np
import pytest
import tensorflow as tf

from larq_esbnn import cli, models, weights
from larq_esbnn.weights import DownloadError, WeightsEntry, WeightsError


def _sha(data):
    return hashlib.sha256(data).hexdigest()


class _Server:
    """Serves ``routes[path] = (body, promised_length)`` over HTTP on 127.0.0.1."""

    def __init__(self):
        self.routes = {}
        self.hits = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404, "Not Found")
                    return
                body, length = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self):
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()
            self.running = False


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    """A resnet20 weights file (random, seeded) and the model's output on a fixed input."""
    tf.keras.backend.clear_session()
    tf.random.set_seed(1)
    model = models.resnet20()
    # non-default BN statistics so that a wrong assignment changes the output
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(np.random.RandomState(0).normal(0, 0.1, mean.shape))
            var.assign(np.random.RandomState(1).uniform(0.5, 2, var.shape))
    path = tmp_path_factory.mktemp("src") / "resnet20_test.h5"
    model.save_weights(str(path))
    x = np.random.RandomState(2).normal(size=(2, 32, 32, 3)).astype("float32")
    features = tf.keras.Model(model.input, model.get_layer("head_pool").input)
    return {
        "path": path,
        "bytes": path.read_bytes(),
        "x": x,
        "logits": model(x, training=False).numpy(),
        "features": features(x, training=False).numpy(),
    }


@pytest.fixture
def server(good_file):
    s = _Server()
    data = good_file["bytes"]
    s.routes["/good/resnet20_test.h5"] = (data, len(data))
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    s.routes["/bad/resnet20_test.h5"] = (bytes(bad), len(bad))
    s.routes["/short/resnet20_test.h5"] = (data[: len(data) // 3], len(data))
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(d))
    return d


def _files(directory):
    return sorted(os.listdir(directory)) if directory.exists() else []


def _register(monkeypatch, **kw):
    e = WeightsEntry(**{"model": "resnet20", "tag": "test", "filename": "resnet20_test.h5", **kw})
    monkeypatch.setitem(weights._REGISTRY, (e.model, e.tag), e)
    return e


def test_tag_download_then_offline(server, cache, good_file, monkeypatch):
    sha = _sha(good_file["bytes"])
    _register(monkeypatch, sha256=sha, url=server.url + "/good/resnet20_test.h5")
    model = models.get("resnet20.test")
    np.testing.assert_allclose(model(good_file["x"], training=False), good_file["logits"], atol=1e-6)
    assert _files(cache) == ["resnet20_test.h5"]
    assert weights.sha256_file(cache / "resnet20_test.h5") == sha
    assert server.hits == ["/good/resnet20_test.h5"]

    server.stop()  # any network access would now fail
    tf.keras.backend.clear_session()
    model = models.resnet20(weights="test")
    np.testing.assert_allclose(model(good_file["x"], training=False), good_file["logits"], atol=1e-6)
    assert server.hits == ["/good/resnet20_test.h5"]


def test_cache_dir_argument_wins_over_env(server, cache, good_file, tmp_path):
    other = tmp_path / "other"
    sha = _sha(good_file["bytes"])
    path = weights.fetch(server.url + "/good/resnet20_test.h5", sha, cache_dir=other, progress=False)
    assert path == other / "resnet20_test.h5"
    assert _files(cache) == []


def test_stale_cached_file_is_replaced(server, cache, good_file):
    cache.mkdir()
    (cache / "resnet20_test.h5").write_bytes(b"stale")
    sha = _sha(good_file["bytes"])
    path = weights.fetch(server.url + "/good/resnet20_test.h5", sha, progress=False)
    assert weights.sha256_file(path) == sha
    assert _files(cache) == ["resnet20_test.h5"]


def test_hash_mismatch_leaves_cache_clean(server, cache, good_file):
    url = server.url + "/bad/resnet20_test.h5"
    expected = _sha(good_file["bytes"])
    actual = _sha(server.routes["/bad/resnet20_test.h5"][0])
    with pytest.raises(DownloadError) as err:
        weights.fetch(url, expected, progress=False)
    msg = str(err.value)
    assert url in msg and expected in msg and actual in msg
    assert _files(cache) == []


def test_truncated_transfer_leaves_cache_clean(server, cache, good_file):
    url = server.url + "/short/resnet20_test.h5"
    expected = _sha(good_file["bytes"])
    partial = _sha(server.routes["/short/resnet20_test.h5"][0])
    with pytest.raises(DownloadError) as err:
        weights.fetch(url, expected, progress=False)
    msg = str(err.value)
    assert "truncated" in msg and url in msg and expected in msg and partial in msg
    assert f"of {len(good_file['bytes'])} bytes" in msg
    assert _files(cache) == []
    # the same holds without a hash to check: completeness alone rejects it
    with pytest.raises(DownloadError, match="truncated"):
        weights.fetch(url, None, progress=False)
    assert _files(cache) == []


def test_http_404_leaves_cache_clean(server, cache, good_file, monkeypatch):
    url = server.url + "/missing/resnet20_test.h5"
    expected = _sha(good_file["bytes"])
    _register(monkeypatch, sha256=expected, url=url)
    with pytest.raises(DownloadError) as err:
        models.resnet20(weights="test")
    msg = str(err.value)
    assert url in msg and expected in msg and "404" in msg
    assert _files(cache) == []


def test_unverified_url_and_url_fragment(server, cache, good_file):
    x, logits = good_file["x"], good_file["logits"]
    model = models.resnet20()
    sha = _sha(good_file["bytes"])
    bad_url = server.url + "/bad/resnet20_test.h5"
    with pytest.raises(DownloadError, match="sha256 mismatch") as err:
        weights.load_weights(model, "resnet20", bad_url + "#sha256=" + sha)
    assert bad_url in str(err.value) and sha in str(err.value)
    assert _files(cache) == []
    url = server.url + "/good/resnet20_test.h5"
    path = weights.load_weights(model, "resnet20", url + "#sha256=" + sha)
    np.testing.assert_allclose(model(x, training=False), logits, atol=1e-6)
    assert path == cache / "resnet20_test.h5"
    # without a hash: downloaded (complete) under a name keyed by the URL, then reused
    path = weights.load_weights(model, "resnet20", url, progress=False)
    assert path.parent == cache and path.name.endswith("-resnet20_test.h5")
    assert weights.sha256_file(path) == sha
    hits = len(server.hits)
    assert weights.load_weights(model, "resnet20", url) == path
    assert len(server.hits) == hits


def test_load_by_path_and_file_url(good_file, tmp_path):
    x, logits = good_file["x"], good_file["logits"]
    model = models.resnet20(weights=str(good_file["path"]))
    np.testing.assert_allclose(model(x, training=False), logits, atol=1e-6)
    tf.keras.backend.clear_session()
    model = models.resnet20(weights=good_file["path"].as_uri())
    np.testing.assert_allclose(model(x, training=False), logits, atol=1e-6)
    with pytest.raises(WeightsError, match="sha256 mismatch") as err:
        weights.load_weights(model, "resnet20", good_file["path"].as_uri() + "#sha256=" + "0" * 64)
    assert "0" * 64 in str(err.value) and _sha(good_file["bytes"]) in str(err.value)
    with pytest.raises(WeightsError, match="not found"):
        weights.load_weights(model, "resnet20", str(tmp_path / "nothing.h5"))


def test_mismatched_architecture_names_layer_and_shapes(good_file):
    model = models.es_resnet20()
    with pytest.raises(WeightsError) as err:
        weights.load_weights(model, "es_resnet20", str(good_file["path"]))
    msg = str(err.value)
    # first layer whose shapes differ: the ES stream is twice as wide after the stem
    assert "'l0_move'" in msg and "(32,)" in msg and "(16,)" in msg
    # a head for another number of classes
    tf.keras.backend.clear_session()
    model = models.resnet20(num_classes=7)
    with pytest.raises(WeightsError, match=r"'head_fc'.*\(64, 7\).*\(64, 10\)"):
        weights.load_weights(model, "resnet20", str(good_file["path"]))


def test_include_top_false_skips_head(good_file, tmp_path):
    model = models.resnet20(include_top=False, weights=str(good_file["path"]))
    out = model(good_file["x"], training=False).numpy()
    np.testing.assert_allclose(out, good_file["features"], atol=1e-6)
    # a file without the head does not load into a model that has one
    notop = tmp_path / "notop.h5"
    model.save_weights(str(notop))
    tf.keras.backend.clear_session()
    with pytest.raises(WeightsError, match="include_top=False"):
        models.resnet20(weights=str(notop))


def test_extra_non_head_layers_are_refused(good_file, tmp_path):
    model = models.resnet20(include_top=False)
    wider = tmp_path / "wider.h5"
    wider.write_bytes(good_file["bytes"])
    with h5py.File(wider, "a") as f:  # add a layer the model lacks
        names = [n if isinstance(n, bytes) else n.encode() for n in f.attrs["layer_names"]]
        g = f.create_group("extra_conv")
        g.create_dataset("extra_conv/kernel:0", data=np.zeros((1, 1, 1, 1), "float32"))
        g.attrs["weight_names"] = [b"extra_conv/kernel:0"]
        f.attrs["layer_names"] = names + [b"extra_conv"]
    with pytest.raises(WeightsError, match="extra_conv"):
        weights.load_weights(model, "resnet20", str(wider))


def test_corrupt_files_raise_clearly(good_file, tmp_path):
    model = models.resnet20()
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsError, match="not a readable HDF5 weights file"):
        weights.load_weights(model, "resnet20", str(junk))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good_file["bytes"][: len(good_file["bytes"]) // 2])
    with pytest.raises(WeightsError, match=r"cut\.h5"):
        weights.load_weights(model, "resnet20", str(cut))
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError, match="no 'layer_names'"):
        weights.load_weights(model, "resnet20", str(plain))


def test_unknown_tag_lists_available(monkeypatch):
    with pytest.raises(WeightsError, match="available tags: none registered"):
        weights.resolve("bcdnet_b", "imagenet")
    with pytest.raises(WeightsError, match="unknown weights tag 'imagenet' for model 'resnet20'; available tags: 'cifar10'"):
        weights.resolve("resnet20", "imagenet")
    _register(monkeypatch, sha256="a" * 64, url="http://127.0.0.1:9/x.h5")
    with pytest.raises(WeightsError, match=r"unknown weights tag 'imagenet'.*'test'"):
        weights.resolve("resnet20", "imagenet")
    with pytest.raises(WeightsError, match="weights must be"):
        weights.resolve("resnet20", 3)


def test_registry_lists_only_existing_files(tmp_path):
    assert weights.verify_registry() == len([e for e in weights.registered() if e.shipped])
    assert all(e.model in models.names() for e in weights.registered())
    missing = WeightsEntry("resnet20", "ghost", "no_such_file.h5", "b" * 64, source="t", metric="t")
    with pytest.raises(WeightsError, match="does not exist"):
        weights.verify_registry([missing])
    with pytest.raises(ValueError, match="sha256"):
        weights._build_registry([WeightsEntry("resnet20", "x", "x.h5", "nothex")])
    with pytest.raises(ValueError, match="twice"):
        weights._build_registry([missing, missing])


def test_fetch_rejects_bad_arguments(cache):
    with pytest.raises(ValueError, match="64 hex"):
        weights.fetch("http://127.0.0.1:9/x.h5", "abc")
    with pytest.raises(ValueError, match="http"):
        weights.fetch("ftp://127.0.0.1/x.h5", None)
    assert _files(cache) == []


def test_cli_list_and_fetch(server, cache, good_file, monkeypatch, capsys):
    assert cli.main(["weights", "bcdnet_b"]) == 0
    assert "no pretrained weights are registered" in capsys.readouterr().out
    assert cli.main(["weights"]) == 0
    assert "es_g_resnet20_cifar10.h5" in capsys.readouterr().out
    sha = _sha(good_file["bytes"])
    _register(monkeypatch, sha256=sha, url=server.url + "/good/resnet20_test.h5",
              source="unit test", metric="none")
    assert cli.main(["weights", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "test" in out and sha[:12] in out
    assert cli.main(["weights", "fetch", "resnet20", "test"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "resnet20_test.h5")
    assert cli.main(["weights", "fetch", "resnet20", "nope"]) == 2
    assert "'test'" in capsys.readouterr().err
    assert cli.main(["weights", "no_such_model"]) == 2


@pytest.fixture(scope="module")
def cifar10_test_folder(tmp_path_factory):
    from conftest import CIFAR10

    if not (CIFAR10 / "test.tar.gz").exists():
        pytest.skip(f"CIFAR-10 archives not found at {CIFAR10}")
    folder = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR10 / "test.tar.gz") as archive:
        archive.extractall(folder / "data", filter="data")
    return folder


SHIPPED_CIFAR10 = sorted(e.model for e in weights.registered() if e.tag == "cifar10")


@pytest.mark.parametrize("model", SHIPPED_CIFAR10)
def test_shipped_cifar10_weights_reproduce_their_registered_top1(model, cifar10_test_folder, monkeypatch, capsys):
    """Every shipped CIFAR-10 file evaluates to the figure in the registry (and the
    README) on all 10,000 test images, within ``weights.TOP1_TOLERANCE`` (0.1
    points = 10 images): another machine's float kernels can flip a sign near zero
    and with it a few predictions (up to 5 images seen)."""
    monkeypatch.setenv("LARQ_ESBNN_CACHE", str(cifar10_test_folder / "cache"))
    registered = weights.registered_top1(model, "cifar10")
    assert cli.main(["evaluate", model, "--weights", "cifar10", "--data", str(cifar10_test_folder / "data"),
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 10000
    assert weights.within_top1_tolerance(result["top1"], registered, result["n"]), (result, registered)
