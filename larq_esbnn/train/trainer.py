"""Resumable training on tf.distribute: the two-step recipe, distillation, fine-tuning.

Output folder layout (``DIR``)::

    recipe.json        the resolved recipe
    state/             atomic checkpoints (model + optimizer) and latest.json
    step1_weights.h5   end of each step (step 2 starts from step 1's)
    weights.h5         final weights, loadable with ``weights=DIR/weights.h5``
    log.csv, tensorboard/, curves.png, metrics.json
"""

import contextlib
import csv
import dataclasses
import datetime
import functools
import inspect
import json
import math
import os
import pathlib
import shutil
import signal
import threading
import time

import numpy as np
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from larq_esbnn import models
from larq_esbnn import weights as weights_lib
from larq_esbnn.errors import BadArgument
from larq_esbnn.layers import TemperatureBinaryConv2D, no_fused_training
from larq_esbnn.models.common import walk_layers
from larq_esbnn.train import data as data_lib
from larq_esbnn.train.recipe import Recipe, Step
from larq_esbnn.util import atomic_path, atomic_write_text, cpu_model

NO_DECAY = ["bias", "gamma", "beta", "slope", "moving_"]
# Batch of every inference pass (evaluate, the per-epoch test pass), whatever the
# training batch. The ES / G models spend most of their inference time in
# element-wise ops on the tau*g-wide stream (BN, RPReLU, bias, tile, split), which
# stream through memory: at batch 256 one 32x32 activation of es_g_resnet20 is 67 MB,
# at 32 it stays in cache. CIFAR-10 test set, 1 thread, `larq-esbnn evaluate`
# wall time at batch 32 / 256: resnet20 36 / 44 s, es_resnet20 52 / 79 s,
# es_g_resnet20 94 / 173 s (`larq-esbnn evaluate M --weights cifar10 --batch-size B`).
INFERENCE_BATCH = 32


class TrainingDiverged(RuntimeError):
    pass


def choose_strategy(name="auto"):
    """``auto``: MultiWorkerMirroredStrategy from TF_CONFIG, MirroredStrategy with
    several GPUs, else the default strategy. ``mirrored`` uses every logical device."""
    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            return tf.distribute.MultiWorkerMirroredStrategy()
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        return tf.distribute.MirroredStrategy(devices)
    if name == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"strategy must be auto, mirrored or default, got {name!r}")


@tf.keras.utils.register_keras_serializable(package="larq_esbnn")
class WarmupCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine to 0.

    ``offset`` shifts the schedule: the optimizer's step ``i`` gets the rate of step
    ``i + offset``. A run continued from a committed snapshot with a fresh optimizer
    (iterations 0, so Adam's bias correction starts afresh) uses it to continue the
    planned schedule where the snapshot left it."""

    def __init__(self, peak, total, warmup=0, offset=0):
        self.peak, self.total, self.warmup = float(peak), int(total), int(warmup)
        self.offset = int(offset)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + float(self.offset)
        warm = self.peak * step / max(self.warmup, 1)
        progress = (step - self.warmup) / max(self.total - self.warmup, 1)
        cosine = 0.5 * self.peak * (1 + tf.cos(math.pi * tf.clip_by_value(progress, 0.0, 1.0)))
        return tf.where(step < self.warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup, "offset": self.offset}


@tf.keras.utils.register_keras_serializable("larq_esbnn")
class FusedAdamW(tf.keras.optimizers.AdamW):
    """AdamW whose per-variable update is TensorFlow's fused ``ResourceApplyAdam`` kernel.

    The update is the one of ``tf.keras.optimizers.AdamW`` (same slots ``m`` and
    ``v``, same checkpoints, decoupled weight decay unchanged)::

        m += (g - m) (1 - b1);  v += (g^2 - v) (1 - b2)
        w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

    but it is one op per variable instead of about twenty, and the step scalars
    (lr, b1^t, b2^t) are built once per ``apply_gradients``, not once per variable.
    Tracing the training step is what a short run spends most of its time on: this
    halves it (CPU of the first step: resnet20 37 -> 18 s, binaryvit_cifar 100 -> 43 s;
    ``benchmarks/trace_time.py``, table in ``benchmarks/README.md``).
    Sparse gradients and ``amsgrad`` take the stock path.

    ``lr_multipliers`` (variable key -> factor, see :func:`scale_backbone_lr`) gives
    chosen variables a fraction of the learning rate: fine-tuning a pretrained
    backbone more gently than its new head. It is set before the first step and is
    not part of the optimizer's state.
    """

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        self.__dict__["_step_scalars"] = {}  # plain attribute: not tracked, not checkpointed
        return super().apply_gradients(grads_and_vars, *args, **kwargs)

    def _scalars(self, dtype):
        # keyed by graph too: a traced step never reuses another graph's tensors
        key = (id(tf.compat.v1.get_default_graph()), dtype)
        cache = self.__dict__.setdefault("_step_scalars", {})
        if key not in cache:
            step = tf.cast(self.iterations + 1, dtype)
            # as the stock AdamW: the powers from tf.cast (float32 constants) and the
            # moment rates and epsilon from the Python floats
            cache[key] = (
                tf.cast(self.learning_rate, dtype),
                tf.pow(tf.cast(self.beta_1, dtype), step),
                tf.pow(tf.cast(self.beta_2, dtype), step),
                tf.constant(self.beta_1, dtype),
                tf.constant(self.beta_2, dtype),
                tf.constant(self.epsilon, dtype),
            )
        return cache[key]

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        lr, b1_power, b2_power, b1, b2, eps = self._scalars(variable.dtype)
        key = self._var_key(variable)
        factor = self.__dict__.get("lr_multipliers", {}).get(key, 1.0)
        if factor != 1.0:
            lr = lr * tf.constant(factor, lr.dtype)
        index = self._index_dict[key]
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=b1_power, beta2_power=b2_power, lr=lr, beta1=b1, beta2=b2, epsilon=eps, grad=gradient,
        )


def head_logits(student):
    """The logits used for training: [classification, distillation] for two-head
    models, else the single output."""
    names = {layer.name for layer in student.layers}
    if "head_fc_dist" in names:
        return tf.keras.Model(
            student.inputs,
            [student.get_layer("head_fc").output, student.get_layer("head_fc_dist").output],
        )
    return None


class BNNTrainer(tf.keras.Model):
    """The loss of the two-step recipe: label-smoothed CE on the classification
    head, and with a teacher the distributional loss of ReActNet (Liu et al.,
    ECCV 2020, Sec. 3.3: soft CE to the teacher's softmax) on the distillation
    head, averaged (``distill_weight`` = 0.5). Single-head models use the same
    head for both terms.

    ``fused_training`` (default) traces the training step on the layers' fused
    path (:func:`larq_esbnn.layers.fused_training`: same forward values, fewer
    element-wise passes); ``fused_training=False`` uses the plain Keras ops."""

    def __init__(self, student, teacher=None, label_smoothing=0.1, distill_weight=0.5, fused_training=True):
        super().__init__()
        self.fused_training = fused_training
        self.student = student
        self.two_heads = head_logits(student)
        self.teacher = teacher
        self.label_smoothing = label_smoothing
        self.distill_weight = distill_weight if teacher is not None else 0.0
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.acc = tf.keras.metrics.CategoricalAccuracy(name="accuracy")
        self.top5 = tf.keras.metrics.TopKCategoricalAccuracy(5, name="top5")

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc, self.top5]

    def compile(self, *args, **kwargs):
        """Keras ``compile``, then the optimizer's slots for the student's trainable
        variables: created inside the first step instead, they make TensorFlow trace
        the step twice (a ``tf.function`` that creates variables on its first call is
        traced again without them; measured: ~5 s per extra trace for resnet20)."""
        super().compile(*args, **kwargs)
        if isinstance(self.optimizer, tf.keras.optimizers.Optimizer):  # not the legacy ones
            self.optimizer.build(self.student.trainable_variables)

    def call(self, x, training=False):
        return self.student(x, training=training)

    def _loss_terms(self, x, y, training):
        if self.two_heads is not None:
            cls, dist = self.two_heads(x, training=training)
            logits = (cls + dist) / 2
        else:
            cls = dist = logits = self.student(x, training=training)
        ce = tf.keras.losses.categorical_crossentropy(
            y, cls, from_logits=True, label_smoothing=self.label_smoothing
        )
        per_example = ce
        if self.teacher is not None:
            target = tf.nn.softmax(self.teacher(x, training=False))
            kd = -tf.reduce_sum(target * tf.nn.log_softmax(dist), axis=-1)
            per_example = (1 - self.distill_weight) * ce + self.distill_weight * kd
        return per_example, logits

    def loss_and_gradients(self, x, y):
        """Per-example loss, logits and the gradients of the mean loss with respect
        to the student's trainable variables, on the fused training path unless
        ``fused_training=False`` (then the plain Keras ops, for debugging)."""
        with contextlib.nullcontext() if self.fused_training else no_fused_training():
            with tf.GradientTape() as tape:
                per_example, logits = self._loss_terms(x, y, True)
                loss = tf.nn.compute_average_loss(per_example)
            grads = tape.gradient(loss, self.student.trainable_variables)
        return per_example, logits, grads

    def train_step(self, batch):
        x, y = batch
        per_example, logits, grads = self.loss_and_gradients(x, y)
        self.optimizer.apply_gradients(zip(grads, self.student.trainable_variables))
        return self._update(per_example, y, logits)

    def test_step(self, batch):
        x, y = batch
        logits = self.student(x, training=False)
        per_example = tf.keras.losses.categorical_crossentropy(y, logits, from_logits=True)
        return self._update(per_example, y, logits)

    def _update(self, per_example, y, logits):
        self.loss_tracker.update_state(per_example)
        self.acc.update_state(y, logits)
        self.top5.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}


class MultiTeacherTrainer(BNNTrainer):
    r"""The released BNext distillation: several teachers, no label loss.

    With student logits s and teacher logits \(t_k\) (k = 1..K; the release
    uses K = 2: an assistant, e.g. EfficientNet-B0, then the main teacher,
    EfficientNet-B2), per sample n:

    \[
    c_{n,k} = -\sum_j \mathrm{softmax}(t_k)_j \log \mathrm{softmax}(s)_j, \quad
    \alpha_{n,\cdot} = \mathrm{softmax}_k(c_{n,\cdot}) \ \text{(no gradient)}, \quad
    L = \frac{1}{N} \sum_n \frac{1}{K} \sum_k \bar c_k \, \alpha_{n,k}
    \]

    with \(\bar c_k\) the batch mean of \(c_{\cdot,k}\): the release's per-teacher
    loss is reduced over the batch before it is multiplied by the per-sample
    weights (``DistributionLoss(reduce=True)`` against ``CrossEntropyLoss(
    reduce=False)`` in its ``train``), so L = (1/K) sum_k c_k * mean_n alpha_{n,k}.
    The teacher the student disagrees with more gets more weight. Teachers run
    in inference mode; any Keras model mapping the student's input to logits
    over the same classes works.
    """

    def __init__(self, student, teachers, fused_training=True):
        if len(teachers) < 2:
            raise ValueError(f"MultiTeacherTrainer needs at least two teachers, got {len(teachers)}")
        super().__init__(student, None, label_smoothing=0.0, distill_weight=0.0, fused_training=fused_training)
        self.teachers = list(teachers)

    def _loss_terms(self, x, y, training):
        logits = self.student(x, training=training)
        log_p = tf.nn.log_softmax(logits)
        ces = [-tf.reduce_sum(tf.nn.softmax(t(x, training=False)) * log_p, axis=-1) for t in self.teachers]
        ce = tf.stack(ces, axis=-1)  # (N, K)
        alpha = tf.stop_gradient(tf.nn.softmax(ce, axis=-1))
        batch_ce = tf.reduce_mean(ce, axis=0)  # (K,)
        per_example = tf.reduce_mean(batch_ce * alpha, axis=-1)
        return per_example, logits


class WeightTemperatureSchedule(tf.keras.callbacks.Callback):
    """BNext's weight temperature: T = ``start`` * ``decay`` ** epoch for every
    :class:`larq_esbnn.layers.TemperatureBinaryConv2D`, set at the start of each
    epoch (``epoch`` counted over all recipe steps, so a resumed run continues
    the schedule). The release multiplies T by 0.9 after every epoch from 1.0,
    so its kernels are clip(W / T, -1, 1) until T < 1e-7 (epoch 153) and
    sign(W) afterwards. The value is logged as ``weight_temperature``.
    """

    def __init__(self, model, start=1.0, decay=0.9, epoch_offset=0):
        super().__init__()
        self.layers = [layer for layer in walk_layers(model) if isinstance(layer, TemperatureBinaryConv2D)]
        if not self.layers:
            raise ValueError(f"{model.name} has no TemperatureBinaryConv2D layers to anneal")
        self.start, self.decay, self.epoch_offset = float(start), float(decay), int(epoch_offset)
        self.value = None

    def temperature(self, epoch):
        return self.start * self.decay ** (self.epoch_offset + epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.value = self.temperature(epoch)
        for layer in self.layers:
            layer.temperature.assign(self.value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.value is not None:
            logs["weight_temperature"] = self.value


def has_weight_temperature(model):
    return any(isinstance(layer, TemperatureBinaryConv2D) for layer in walk_layers(model))


@contextlib.contextmanager
def _ctrl_c_as_flag(monitor):
    """While training, Ctrl-C (SIGINT) only sets ``monitor.interrupted``: the batch in
    flight ends and :func:`fit_step` raises KeyboardInterrupt at the next batch
    boundary, without saving the unfinished epoch. (A KeyboardInterrupt raised at an
    arbitrary point can land in a finaliser, where Python prints and drops it, and
    the run goes on.) A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if monitor.interrupted:
            raise KeyboardInterrupt
        monitor.interrupted = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Monitor(tf.keras.callbacks.Callback):
    """Adds images/s to the epoch logs and stops on a non-finite loss or Ctrl-C."""

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size
        self.bad_loss = None
        self.interrupted = False

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.train_time = time.perf_counter() - self.start
        if self.interrupted:
            self.model.stop_training = True
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_loss = (batch, float(loss))
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.steps:
            logs["images_per_sec"] = self.steps * self.batch_size / self.train_time
            logs["epoch_time_sec"] = time.perf_counter() - self.start


class StateStore:
    """Atomic checkpoints: each epoch writes a new ``state/s{step}-e{epoch}`` and only
    then replaces ``latest.json`` (write to a temp file + ``os.replace``); a run
    killed mid-write resumes from the previous complete checkpoint."""

    def __init__(self, folder, keep=2):
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    @property
    def latest(self):
        """{"step", "epoch", "prefix"} of the last complete checkpoint, or None. The
        prefix is stored relative to the folder, so a run folder can be moved."""
        path = self.folder / "latest.json"
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        state["prefix"] = str(self.folder / pathlib.Path(state["prefix"]).name)
        return state

    def save(self, student, optimizer, step, epoch, lr_offset=0):
        """Checkpoint (model + optimizer) and the student's weights as ``.weights.h5``
        (what a snapshot commits); ``lr_offset`` is the schedule offset of the
        optimizer (:class:`WarmupCosine`), kept so that a resume rebuilds it."""
        name = f"s{step}-e{epoch}"
        tf.train.Checkpoint(model=student, optimizer=optimizer).write(str(self.folder / name))
        save_weights_atomic(student, self.folder / f"{name}.weights.h5")
        atomic_write_text(self.folder / "latest.json", json.dumps(
            {"step": step, "epoch": epoch, "prefix": name, "lr_offset": int(lr_offset)}))
        done = sorted(self.folder.glob("s*-e*.index"), key=os.path.getmtime)
        for old in done[: -self.keep]:
            for f in self.folder.glob(old.name[: -len(".index")] + ".*"):
                f.unlink()

    def restore(self, student, optimizer, prefix):
        optimizer.build(student.trainable_variables)
        tf.train.Checkpoint(model=student, optimizer=optimizer).read(prefix).assert_existing_objects_matched()


def save_weights_atomic(model, path):
    with atomic_path(path, suffix=".part.h5") as tmp:
        model.save_weights(tmp)


def make_optimizer(step, steps_per_epoch, lr_offset=0):
    """The step's optimizer on a warm-up + cosine schedule over its epochs:
    ``FusedAdamW`` (``optimizer = "adamw"``) or SGD with Nesterov momentum (``"sgd"``);
    biases, BN and slopes are never decayed."""
    total = max(step.epochs * steps_per_epoch, 1)
    schedule = WarmupCosine(step.lr, total, int(step.warmup_epochs * steps_per_epoch), lr_offset)
    if step.optimizer == "sgd":
        opt = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=step.momentum, nesterov=True,
                                      weight_decay=step.weight_decay or None)
    else:
        opt = FusedAdamW(learning_rate=schedule, weight_decay=step.weight_decay)
    opt.exclude_from_weight_decay(var_names=NO_DECAY)
    return opt


def backbone_variables(student):
    """The trainable variables of every layer except the classifier head (``head_*``)."""
    return [v for layer in student.layers if not layer.name.startswith("head_") for v in layer.trainable_weights]


def scale_backbone_lr(optimizer, student, scale):
    """Give the backbone ``scale`` times the learning rate of the head (a :class:`FusedAdamW`)."""
    if scale == 1:
        return
    if not isinstance(optimizer, FusedAdamW):
        raise BadArgument(f"backbone_lr_scale {scale} needs the adamw optimizer, got {type(optimizer).__name__}")
    optimizer.__dict__["lr_multipliers"] = {optimizer._var_key(v): float(scale) for v in backbone_variables(student)}


def fit_step(student, step, step_index, train, test, out, recipe, strategy, teacher=None, resume_epoch=0, state=None,
             lr_offset=0, on_checkpoint=None):
    """Train ``student`` for one recipe step; checkpoint after every epoch. ``state``
    is a checkpoint prefix to restore (model + optimizer); ``lr_offset`` shifts the
    learning-rate schedule (a run continued from a snapshot, see :func:`train`);
    ``on_checkpoint()`` runs after each epoch's checkpoint is written."""
    size = student.input_shape[1]
    steps_per_epoch = len(train.subset(recipe.train_limit)) // recipe.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {recipe.batch_size} is larger than the training set ({len(train)} images)")
    with strategy.scope():
        if isinstance(teacher, (list, tuple)):
            trainer = MultiTeacherTrainer(student, teacher, fused_training=recipe.fused_training)
        else:
            trainer = BNNTrainer(student, teacher, recipe.label_smoothing, recipe.distill_weight,
                                 fused_training=recipe.fused_training)
        optimizer = make_optimizer(step, steps_per_epoch, lr_offset)
        if 0 < recipe.backbone_lr_scale < 1:  # 0: the backbone is frozen (not trainable) instead
            scale_backbone_lr(optimizer, student, recipe.backbone_lr_scale)
        trainer.compile(optimizer=optimizer)
    if state is not None:
        with strategy.scope():
            StateStore(out / "state").restore(student, optimizer, state)
    store = StateStore(out / "state")
    monitor = _Monitor(recipe.batch_size)
    log_path = out / f"log_step{step_index}.csv"
    drop_unsaved_log_rows(log_path, resume_epoch)
    callbacks = [
        monitor,
        tf.keras.callbacks.CSVLogger(str(log_path), append=True),
        tf.keras.callbacks.TensorBoard(str(out / "tensorboard" / f"step{step_index}"), write_graph=False, profile_batch=0),
    ]
    val_limit = recipe.val_limit or recipe.test_limit or None
    test_ds = data_lib.dataset(test, size, INFERENCE_BATCH, False, limit=val_limit)
    offset = sum(s.epochs for s in recipe.steps[: step_index - 1])
    schedule = None
    if recipe.weight_temperature_start > 0 and has_weight_temperature(student):
        schedule = WeightTemperatureSchedule(
            student, recipe.weight_temperature_start, recipe.weight_temperature_decay, offset
        )
        callbacks.insert(0, schedule)
    for epoch in range(resume_epoch, step.epochs):
        print(f"step {step_index}/{len(recipe.steps)}, epoch {epoch + 1}/{step.epochs}")
        train_ds = data_lib.dataset(
            train, size, recipe.batch_size, True, recipe.seed, offset + epoch, recipe.train_limit or None,
            min_crop_area=recipe.min_crop_area,
        )
        with _ctrl_c_as_flag(monitor):
            trainer.fit(
                train_ds, epochs=epoch + 1, initial_epoch=epoch, validation_data=test_ds,
                callbacks=callbacks, verbose=1 if os.environ.get("LARQ_ESBNN_QUIET") is None else 2,
            )
        if monitor.interrupted:
            drop_unsaved_log_rows(log_path, epoch)  # Keras logged the cut epoch as if complete
            raise KeyboardInterrupt  # the unfinished epoch is not saved
        if monitor.bad_loss is not None:
            batch, value = monitor.bad_loss
            latest = store.latest
            kept = f"; the last good checkpoint is {latest['prefix']} (resume with --resume)" if latest else ""
            raise TrainingDiverged(
                f"loss became {value} at step {step_index}, epoch {epoch + 1}, batch {batch + 1}; "
                f"stopped without saving this epoch{kept}. Lower the learning rate ({step.lr})."
            )
        store.save(student, optimizer, step_index, epoch, lr_offset)
        if on_checkpoint is not None:
            on_checkpoint()
    if schedule is not None and schedule.value is not None and schedule.value >= 1e-7:
        print(f"warning: the weight temperature ended at {schedule.value:.3g} >= 1e-7, so the binary "
              "convs still use real weights clip(W / T, -1, 1); train longer or lower "
              "weight_temperature_decay to end with sign(W)")
    return student


def drop_unsaved_log_rows(path, first_unsaved):
    """Keep only the rows of epochs (0-based) before ``first_unsaved`` in a step's CSV log.

    The log must describe the checkpoints, not the attempts: an epoch cut short by
    Ctrl-C still gets a row from Keras (stop_training ends the epoch early and its
    callbacks run), and a run killed between the log and the checkpoint leaves one;
    resuming reruns those epochs, which would otherwise appear twice.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    if not lines:
        return
    kept = [lines[0]] + [line for line in lines[1:] if line and int(line.split(",")[0]) < first_unsaved]
    if len(kept) != len(lines):
        atomic_write_text(path, "\n".join(kept) + "\n")


def _merge_logs(out):
    rows = []
    for path in sorted(out.glob("log_step*.csv")):
        step = int(path.stem.replace("log_step", ""))
        lines = path.read_text().strip().splitlines()
        header = lines[0].split(",")
        for line in lines[1:]:
            rows.append({"step": step, **dict(zip(header, map(float, line.split(","))))})
    return rows


def plot_curves(out):
    """curves.png: loss and top-1 per epoch (train and test) over all steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _merge_logs(out)
    if not rows:
        return None
    x = np.arange(1, len(rows) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ["loss", "accuracy"]):
        ax.plot(x, [r[key] for r in rows], label=f"train {key}")
        if f"val_{key}" in rows[0]:
            ax.plot(x, [r[f"val_{key}"] for r in rows], label=f"test {key}")
        for i in range(1, len(rows)):
            if rows[i]["step"] != rows[i - 1]["step"]:
                ax.axvline(i + 0.5, color="grey", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(out.name)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def keras_application_teacher(name, input_shape, weights="imagenet"):
    """``tf.keras.applications.<name>`` (e.g. EfficientNetB0 / B2) as a teacher for
    the zoo's inputs: the data pipeline feeds ImageNet mean/std normalised images,
    the applications expect RGB in [0, 255] (they rescale internally), so the
    normalisation is undone first. Outputs logits (``classifier_activation=None``);
    1000 ImageNet classes with ``weights="imagenet"`` (downloaded by Keras)."""
    app = getattr(tf.keras.applications, name, None)
    if app is None or not callable(app):
        raise ValueError(f"tf.keras.applications has no model {name!r} (e.g. EfficientNetB0, EfficientNetB2)")
    inp = tf.keras.Input(input_shape)
    raw = tf.keras.layers.Rescaling(data_lib.STD, offset=data_lib.MEAN, name="undo_normalize")(inp)
    # built at the application's own size (Keras requires it for ImageNet weights with the
    # top) and called on the student's size, as the release runs timm's EfficientNet-B2 at
    # 224: the convolutional trunk and the global pool do not depend on the size
    net = app(weights=weights, classifier_activation=None)
    return tf.keras.Model(inp, net(raw), name=f"teacher_{name}")


def load_teacher(spec, input_shape=None, num_classes=None):
    """A frozen teacher from ``spec``: a Keras model file, ``MODEL.TAG`` (registered
    weights, e.g. ``resnet20_fp.cifar10``), ``MODEL:WEIGHTS.h5`` or
    ``keras:NAME`` (``tf.keras.applications.NAME`` with ImageNet weights, see
    :func:`keras_application_teacher`)."""
    if not spec:
        return None
    if spec.startswith("keras:"):
        model = keras_application_teacher(spec[len("keras:"):], input_shape or (224, 224, 3))
        model.trainable = False
        return model
    if os.path.exists(spec):
        model = tf.keras.models.load_model(spec, compile=False)
    else:
        name, sep, path = spec.partition(":")
        if not sep:
            name, sep, path = spec.partition(".")
        if not sep or name not in models.names():
            raise FileNotFoundError(
                f"teacher {spec!r} is neither a Keras model file nor MODEL.TAG / MODEL:WEIGHTS.h5 "
                f"of a registered model"
            )
        kwargs = {"weights": path}
        if input_shape is not None:
            kwargs["input_shape"] = input_shape
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = models.get(name, **kwargs)
    model.trainable = False
    return model


def has_binary_weights(model_name):
    """Whether model ``model_name`` has binary weights (its factory takes ``binary_weights``)."""
    return "binary_weights" in inspect.signature(models.entry(model_name).factory).parameters


def _step_args(model_name, step):
    """``binary_weights`` of the step, for models that have binary weights (a
    real-valued teacher has none, and refuses ``binary_weights=False`` steps)."""
    if has_binary_weights(model_name):
        return {"binary_weights": step.binary_weights}
    if not step.binary_weights:
        raise ValueError(f"{model_name} has no binary weights; remove binary_weights = false from its recipe steps")
    return {}


SNAPSHOT_FILES = ("weights.h5", "position.json", "history.csv")


def teacher_sha256(spec):
    """sha256 of the weights file a ``teacher`` spec names (a file, ``MODEL.TAG`` or
    ``MODEL:FILE``), or None (no teacher, ``keras:`` teachers, unresolvable specs)."""
    if not spec or spec.startswith("keras:"):
        return None
    if os.path.isfile(spec):
        return weights_lib.sha256_file(spec)
    name, sep, path = spec.partition(":")
    if not sep:
        name, sep, path = spec.partition(".")
    try:
        return weights_lib.sha256_file(weights_lib.resolve(name, path, progress=False)[0])
    except (weights_lib.WeightsError, OSError, ValueError):
        return None


def schedule_record(recipe):
    """What a snapshot's position is measured against: the model, its arguments, the
    data and every setting that shapes the schedule, the teacher's weights included (a
    tag such as ``resnet20_fp.cifar10`` may later name better weights: a snapshot of
    another schedule or teacher must not be continued with this one)."""
    return {
        "model": recipe.model, "model_args": recipe.model_args, "image_size": recipe.image_size,
        "batch_size": recipe.batch_size, "seed": recipe.seed, "train_limit": recipe.train_limit,
        "teacher": recipe.teacher, "teacher_sha256": teacher_sha256(recipe.teacher),
        "distill_weight": recipe.distill_weight,
        "label_smoothing": recipe.label_smoothing, "init_weights": recipe.init_weights,
        "steps": [dataclasses.asdict(s) for s in recipe.steps],
    }


def read_snapshot(folder, recipe):
    """The committed snapshot in ``folder`` (``position.json`` + ``weights.h5``) as
    ``{"step", "epoch", "weights", "sha256", "folder", ...}``, checked against
    ``recipe``: same schedule record, weights file present with the recorded sha256.
    Returns None when the folder holds no snapshot; raises ValueError on a mismatch."""
    folder = pathlib.Path(folder)
    position_file = folder / "position.json"
    if not position_file.exists():
        return None
    position = json.loads(position_file.read_text())
    expected = json.loads(json.dumps(schedule_record(recipe)))  # tuples -> lists, as stored
    if position.get("schedule") != expected:
        diff = sorted(k for k in expected if position.get("schedule", {}).get(k) != expected[k])
        raise ValueError(f"the snapshot in {folder} was taken under another schedule (differs in {diff}); "
                         f"continue it with its own recipe or start a new run")
    weights_file = folder / "weights.h5"
    digest = weights_lib.sha256_file(weights_file) if weights_file.exists() else None
    if digest != position.get("sha256"):
        raise ValueError(f"{weights_file} is missing or its sha256 ({digest}) is not the recorded "
                         f"{position.get('sha256')}")
    return {**position, "weights": str(weights_file), "folder": str(folder)}


def _history_rows(path):
    if not pathlib.Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def kernels():
    """Which CPU kernels this process's TensorFlow runs: ``"oneDNN"`` (``import
    larq_esbnn`` turns them on unless ``TF_ENABLE_ONEDNN_OPTS`` was set) or
    ``"default kernels"``; recorded with the speeds, which differ by 1.6-2x."""
    return "oneDNN" if _pywrap_util_port.IsMklEnabled() else "default kernels"


def write_snapshot(run, folder, note=""):
    """Commit-ready snapshot of run folder ``run`` into ``folder``: the student's
    weights at its last checkpoint (``weights.h5``), ``position.json`` (step and
    epoch reached, the schedule record, sha256, ``note``, e.g. the CPU model) and
    ``history.csv``, the per-epoch log of every run that continued this schedule
    (rows already in the folder are kept; a re-run epoch keeps its newest row).
    Every file is written under a temporary name and renamed. Returns the position."""
    run, folder = pathlib.Path(run), pathlib.Path(folder)
    state = StateStore(run / "state").latest if (run / "state").is_dir() else None
    if state is None:
        raise FileNotFoundError(f"{run} has no checkpoint (state/latest.json) to snapshot")
    weights_file = pathlib.Path(state["prefix"] + ".weights.h5")
    if not weights_file.exists():
        raise FileNotFoundError(f"{weights_file} is missing (checkpoints before weights were saved with them)")
    recipe = Recipe.from_dict(json.loads((run / "recipe.json").read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    done = sum(s.epochs for s in recipe.steps[: state["step"] - 1]) + state["epoch"] + 1
    position = {
        "step": state["step"], "epoch": state["epoch"], "epochs_done": done,
        "epochs_total": sum(s.epochs for s in recipe.steps),
        "sha256": weights_lib.sha256_file(weights_file), "note": note,
        "schedule": json.loads(json.dumps(schedule_record(recipe))),
    }
    rows = {}
    for row in _history_rows(folder / "history.csv"):
        rows[(int(row["step"]), int(row["epoch"]))] = row
    for row in _merge_logs(run):
        step, epoch = int(row.pop("step")), int(row.pop("epoch"))
        if (step, epoch) > (state["step"], state["epoch"]):
            continue  # logged, but the checkpoint of that epoch was not written
        offset = sum(s.epochs for s in recipe.steps[: step - 1])
        rows[(step, epoch)] = {"step": step, "epoch": epoch, "global_epoch": offset + epoch + 1,
                               **row, "run": run.name, "note": note}
    fields = []
    for row in rows.values():
        fields += [k for k in row if k not in fields]
    with atomic_path(folder / "history.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows[key] for key in sorted(rows))
        with atomic_path(folder / "weights.h5", suffix=".part.h5") as tmp_weights:
            shutil.copyfile(weights_file, tmp_weights)
    atomic_write_text(folder / "position.json", json.dumps(position, indent=2) + "\n")
    return position


def _start_run(recipe, strategy):
    """What :func:`train` and :func:`finetune_recipe` do first, in this order: pick the
    distribution strategy (a name is resolved by :func:`choose_strategy`), seed every
    generator with ``recipe.seed``, load both splits of ``recipe.data`` and check that
    they agree, and choose the input size (the recipe's, else the model's default).
    Returns (strategy, train split, test split, size)."""
    strategy = choose_strategy(strategy) if isinstance(strategy, str) else strategy
    tf.keras.utils.set_random_seed(recipe.seed)
    train_split = data_lib.load(recipe.data, "train")
    test_split = data_lib.load(recipe.data, "test")
    data_lib.check_splits(train_split, test_split)
    return strategy, train_split, test_split, recipe.image_size or models.entry(recipe.model).input_size


def train(recipe: Recipe, output, resume=False, strategy="auto", write_snapshots=False):
    """Run every step of ``recipe`` into ``output``; returns the final metrics dict.

    ``write_snapshots``: after every epoch's checkpoint, also refresh the snapshot in
    the recipe's ``snapshot`` folder (:func:`write_snapshot`). Pointed at a folder of
    the repository, a run whose machine is lost loses at most one epoch: the next
    session continues from that snapshot."""
    out = pathlib.Path(output)
    if write_snapshots and not recipe.snapshot_dir():
        raise BadArgument("writing snapshots needs a snapshot folder (the recipe's `snapshot` or --snapshot-dir)")
    if recipe.backbone_lr_scale != 1:
        raise BadArgument(f"backbone_lr_scale = {recipe.backbone_lr_scale} is for fine-tuning recipes; run them with "
                          "`larq-esbnn finetune --recipe` (train starts every layer the same way)")
    state = StateStore(out / "state").latest if resume and (out / "state").is_dir() else None
    if not resume and (out / "state" / "latest.json").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    snapshot = None
    if resume and state is None and recipe.snapshot_dir():
        snapshot = read_snapshot(recipe.snapshot_dir(), recipe)  # validated before any work
    if resume and state is None and snapshot is None:
        print(f"--resume: {out} holds no checkpoint and the recipe no snapshot to continue; starting a new run")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", recipe.to_json())
    strategy, train_split, test_split, size = _start_run(recipe, strategy)
    model_args = {**recipe.model_args, "num_classes": train_split.num_classes, "input_shape": (size, size, 3)}
    if recipe.teachers:
        teacher = [load_teacher(t, model_args["input_shape"], train_split.num_classes) for t in recipe.teachers]
    else:
        teacher = load_teacher(recipe.teacher, model_args["input_shape"], train_split.num_classes)
    on_checkpoint = None
    if write_snapshots:
        note = f"{datetime.date.today().isoformat()}, {cpu_model()}, {kernels()}"
        on_checkpoint = functools.partial(write_snapshot, out, recipe.snapshot_dir(), note=note)
    previous = None
    for index, step in enumerate(recipe.steps, start=1):
        weights_path = out / f"step{index}_weights.h5"
        if step.epochs == 0:
            continue
        with strategy.scope():
            student = models.get(recipe.model, **model_args, **_step_args(recipe.model, step))
        if state and state["step"] > index and weights_path.exists():
            previous = weights_path
            continue
        if snapshot and snapshot["step"] > index:
            continue  # done before the snapshot; its weights carry every later tensor
        resume_epoch, prefix, lr_offset = 0, None, 0
        if state and state["step"] == index:
            resume_epoch, prefix = state["epoch"] + 1, state["prefix"]
            lr_offset = state.get("lr_offset", 0)
            print(f"resuming step {index} after epoch {resume_epoch} from {prefix}")
        elif snapshot and snapshot["step"] == index:
            resume_epoch = snapshot["epoch"] + 1
            steps_per_epoch = len(train_split.subset(recipe.train_limit)) // recipe.batch_size
            lr_offset = resume_epoch * steps_per_epoch
            student.load_weights(snapshot["weights"])
            atomic_write_text(out / "snapshot_start.json", json.dumps(snapshot, indent=2))
            print(f"no checkpoint in {out}: continuing from the committed snapshot {snapshot['folder']} "
                  f"(step {index}, after epoch {resume_epoch} of {step.epochs}, weights sha256 "
                  f"{snapshot['sha256'][:16]}...) with a fresh optimizer state: the learning-rate schedule "
                  f"continues at its position, the optimizer's moments start from zero")
        elif previous is not None:
            student.load_weights(str(previous))  # step 2 starts from every tensor of step 1
        elif recipe.init_weights:
            loaded = weights_lib.load_weights(student, recipe.model, recipe.init_weights)
            digest = weights_lib.sha256_file(loaded)
            # a tag such as "cifar10" can later name other weights: record which file it was
            (out / "init_weights.json").write_text(json.dumps(
                {"init_weights": recipe.init_weights, "file": str(loaded), "sha256": digest}, indent=2) + "\n")
            print(f"step {index} starts from {recipe.model} weights {recipe.init_weights!r} ({loaded}, sha256 {digest[:16]}...)")
        fit_step(student, step, index, train_split, test_split, out, recipe, strategy, teacher, resume_epoch, prefix,
                 lr_offset, on_checkpoint)
        save_weights_atomic(student, weights_path)
        previous = weights_path
    if previous is None:
        raise ValueError("the recipe has no step with epochs > 0")
    final = out / "weights.h5"
    with atomic_path(final, suffix=".part.h5") as tmp:
        shutil.copyfile(previous, tmp)
    metrics = evaluate(student, test_split, size, limit=recipe.test_limit or None)
    rows = _merge_logs(out)
    metrics.update(
        model=recipe.model,
        epochs=sum(s.epochs for s in recipe.steps),
        images_per_sec=float(np.median([r["images_per_sec"] for r in rows])) if rows else None,
        wall_time_sec=float(sum(r["epoch_time_sec"] for r in rows)),
    )
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    plot_curves(out)
    print(f"final weights: {final}\ntest top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} on {metrics['n']} images")
    return metrics


def predict_batches(model, split, size=None, batch_size=INFERENCE_BATCH, limit=None):
    """Yield ``(logits, labels)`` of ``model`` on ``split`` batch by batch, in order."""
    from tqdm import tqdm

    size = size or model.input_shape[1]
    ds = data_lib.dataset(split, size, batch_size, False, limit=limit)
    predict = tf.function(lambda x: model(x, training=False))
    total = math.ceil((limit or len(split)) / batch_size)
    for x, y in tqdm(ds, total=total, desc="evaluating", unit="batch"):
        yield predict(x), tf.argmax(y, -1)


def evaluate(model, split, size=None, batch_size=INFERENCE_BATCH, limit=None):
    """Top-1 / top-5 accuracy and image count of ``model`` on ``split``."""
    top1 = top5 = n = 0
    for logits, labels in predict_batches(model, split, size, batch_size, limit):
        top1 += int(tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == labels, tf.int32)))
        k = min(5, logits.shape[-1])
        top5 += int(tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.int32)))
        n += int(labels.shape[0])
    return {"top1": top1 / n, "top5": top5 / n, "n": n}


def finetune(model_name, weights, data, output, epochs=5, batch_size=64, lr=1e-3, freeze_backbone=False,
             image_size=0, resume=False, strategy="auto", model_args=None, train_limit=0, test_limit=0, seed=0,
             val_limit=0):
    """Replace the head of a pretrained model for ``data``'s classes and train it.

    The result is exactly ``models.get(model_name, num_classes=K, **model_args)``
    with the pretrained backbone, so ``DIR/weights.h5`` loads with ``weights=``.
    ``weights=None`` trains the same model from a random initialisation with the
    same schedule (the from-scratch baseline of a transfer comparison).
    ``val_limit``: per-epoch test metrics on that many test images (0: as ``test_limit``).
    One step (binary weights), AdamW, no warm-up, label smoothing 0.1; a recipe file
    sets the rest: :func:`finetune_recipe`.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise BadArgument(f"finetune needs epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, "
                          f"{batch_size} and {lr}")
    recipe = Recipe(model=model_name, data=str(data), model_args=model_args or {}, image_size=image_size,
                    batch_size=batch_size, seed=seed, label_smoothing=0.1,
                    steps=[Step(epochs=epochs, lr=lr, warmup_epochs=0)],
                    train_limit=train_limit, test_limit=test_limit, val_limit=val_limit,
                    backbone_lr_scale=0.0 if freeze_backbone else 1.0)
    return finetune_recipe(recipe, weights, output, resume=resume, strategy=strategy)


def finetune_recipe(recipe, weights, output, resume=False, strategy="auto"):
    """Fine-tune ``recipe.model`` from ``weights`` (a tag, an ``.h5`` file, a PyTorch
    checkpoint ``.pth``, a URL; None: from scratch) on ``recipe.data`` with a new head.

    The recipe has one step; ``backbone_lr_scale`` gives the pretrained layers that
    fraction of the head's learning rate (0 freezes them), ``min_crop_area`` sets the
    augmentation, no distillation. Beside ``weights.h5`` the run writes
    ``preprocessing.json`` (data set, input size, crop, mean / std, class names) and
    ``recipe.json`` (model arguments), which ``predict`` and ``evaluate`` read.
    """
    if len(recipe.steps) != 1 or recipe.steps[0].epochs < 1:
        raise BadArgument(f"a fine-tuning recipe has one [[steps]] table with epochs >= 1, got "
                          f"{[s.epochs for s in recipe.steps]} epochs in {len(recipe.steps)} steps")
    if recipe.teacher or recipe.teachers:
        raise BadArgument("fine-tuning runs without distillation; set teacher = \"\" (and no teachers) in the recipe")
    recipe.validate()
    out = pathlib.Path(output)
    state = StateStore(out / "state").latest if resume and (out / "state").is_dir() else None
    if not resume and (out / "state" / "latest.json").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or choose another --output")
    if weights is None and recipe.backbone_lr_scale != 1:
        if recipe.backbone_lr_scale == 0:
            raise BadArgument("a frozen backbone (backbone_lr_scale 0, --freeze-backbone) needs --weights; from "
                              "scratch every layer must train")
        print(f"from scratch: every layer is new, so backbone_lr_scale {recipe.backbone_lr_scale} is not applied")
        recipe = dataclasses.replace(recipe, backbone_lr_scale=1.0)
    strategy, train_split, test_split, size = _start_run(recipe, strategy)
    recipe = dataclasses.replace(recipe, image_size=size)
    step = recipe.steps[0]
    args = {**recipe.model_args, "input_shape": (size, size, 3), **_step_args(recipe.model, step)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps({
        **json.loads(recipe.to_json()), "weights": None if weights is None else str(weights),
        "freeze_backbone": recipe.backbone_lr_scale == 0}, indent=2))
    with strategy.scope():
        student = models.get(recipe.model, num_classes=train_split.num_classes, **args)
        if state is None and weights is not None:
            backbone = models.get(recipe.model, include_top=False, weights=weights, **args)
            models.transfer_weights(backbone, student)
            del backbone
        if recipe.backbone_lr_scale == 0:
            for layer in student.layers:
                layer.trainable = layer.name.startswith("head_")
    resume_epoch, prefix = (state["epoch"] + 1, state["prefix"]) if state else (0, None)
    fit_step(student, step, 1, train_split, test_split, out, recipe, strategy, None, resume_epoch, prefix)
    save_weights_atomic(student, out / "weights.h5")
    # what `predict --weights DIR/weights.h5` needs: the classes and how images were prepared
    atomic_write_text(out / weights_lib.PREPROCESSING_FILE, json.dumps(dataclasses.asdict(weights_lib.Preprocessing(
        f"fine-tuned on {train_split.title or recipe.data}", size, crop="resize" if size <= 64 else "center",
        classes=tuple(train_split.class_names))), indent=2))
    metrics = evaluate(student, test_split, size, limit=recipe.test_limit or None)
    atomic_write_text(out / "metrics.json", json.dumps({**metrics, "model": recipe.model, "epochs": step.epochs},
                                                       indent=2))
    plot_curves(out)
    print(f"fine-tuned weights: {out / 'weights.h5'}\ntest top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} "
          f"on {metrics['n']} images")
    return metrics
