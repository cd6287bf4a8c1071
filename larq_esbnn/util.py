"""Facts and file helpers shared by the whole package; imports nothing from it.

- ``IMAGENET_MEAN`` / ``IMAGENET_STD``: the input normalisation of every model
  here (RGB, 0-1 scale), that of the released PyTorch checkpoints;
- :func:`cache_dir`: where downloads, converted checkpoints and data caches go;
- :func:`atomic_path` / :func:`atomic_write_text`: write under a temporary name
  in the target's folder and ``os.replace`` it into place, so that a reader
  never sees half a file and a failure leaves none behind;
- :func:`sha256_file`;
- :func:`decode_image`: image bytes -> uint8 (height, width, 3) tensor;
- :func:`cpu_model`: the CPU model ``lscpu`` names, recorded with speed figures.
"""

import contextlib
import hashlib
import os
import pathlib
import re
import subprocess
import tempfile

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CACHE_ENV = "LARQ_ESBNN_CACHE"
_CHUNK = 1 << 16


def cache_dir(path=None):
    """The cache directory: ``path``, else ``$LARQ_ESBNN_CACHE``, else ``~/.cache/larq_esbnn``."""
    if path is None:
        path = os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "larq_esbnn"
    return pathlib.Path(path).expanduser()


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary file name beside ``path``; on a clean exit it replaces ``path``.

    ``suffix`` ends the temporary name (default ``.part`` + the suffix of ``path``,
    so writers that choose the format by the extension still see it). The result
    gets the permissions of a plainly created file (``0666`` minus the umask, not
    ``mkstemp``'s ``0600``). On an exception the temporary file is removed and
    ``path`` is left as it was: a failed write never leaves a partial output.
    """
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or f".part{path.suffix}")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        pathlib.Path(tmp).write_text(text)


def sha256_file(path):
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decode_image(data):
    """Encoded image bytes (JPEG, PNG, BMP, GIF: first frame) -> uint8 tensor (h, w, 3).

    Works eagerly and inside ``tf.data`` maps.
    """
    import tensorflow as tf

    return tf.io.decode_image(data, channels=3, expand_animations=False)


def cpu_model():
    """The CPU model as ``lscpu`` prints it ("unknown CPU" without ``lscpu``): speeds
    differ between machines, so every speed figure is recorded with it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    found = re.search(r"^Model name:\s*(.+)$", out, re.M)
    return found.group(1).strip() if found else "unknown CPU"
