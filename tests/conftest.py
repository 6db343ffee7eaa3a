"""Shared fixtures: a tiny prepared COCO dataset, a tiny-model params object, an MLflow server.

``tiny_coco`` writes what ``python -m pipeline prepare`` writes (``train.json``, ``val.json``,
``images/<split>/*.png``, ``file_name`` relative to the JSON's folder): 8 train and 4 val
64 px images with 1-3 coloured rectangles of 2 classes; train image 0 also has a crowd box.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red_box", "blue_box"]
COLOURS = {1: (220, 40, 40), 2: (40, 60, 220)}

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need a CUDA device: CI has none, the lent GPU machine runs them
    (``benchmarks/gpu.sh``)."""
    import torch

    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)


def write_tiny_coco(out_dir: Path, num_train: int = 8, num_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write a tiny prepared COCO dataset into ``out_dir``; returns ``out_dir``."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(CLASSES)]
    ann_id = 1
    for split, count, first_id in (("train", num_train, 1), ("val", num_val, 1001)):
        images, annotations = [], []
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image_id = first_id + i
            pixels = np.full((size, size, 3), 200, np.uint8) + rng.integers(0, 30, (size, size, 3), dtype=np.uint8)
            for _ in range(int(rng.integers(1, 4))):
                label = int(rng.integers(1, len(CLASSES) + 1))
                w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                pixels[y:y + h, x:x + w] = COLOURS[label]
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": label,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
                ann_id += 1
            if split == "train" and i == 0:  # a crowd region: must never become a training target
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1,
                                    "bbox": [0, 0, size / 2, size / 2], "area": size * size / 4, "iscrowd": 1})
                ann_id += 1
            file_name = f"images/{split}/{image_id:06d}.png"
            Image.fromarray(pixels).save(out_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (out_dir / f"{split}.json").write_text(json.dumps(coco))
    return out_dir


MIXED_SIZES = [(96, 64), (64, 96), (80, 60), (60, 80), (100, 56), (72, 72)]  # (w, h): landscape, portrait, square


def write_mixed_coco(root: Path, num_images: int = 12, seed: int = 0, category_ids: tuple[int, ...] = (3, 7)) -> Path:
    """A raw COCO source like users bring: ``root/annotations.json`` + ``root/images/*.jpg``.

    Mixed portrait/landscape JPEGs (:data:`MIXED_SIZES`), 3-8 boxes per image including elongated
    (1:4 .. 4:1) ones, source category ids ``category_ids`` (named after :data:`CLASSES`), one crowd
    box. Returns the JSON path.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        w, h = MIXED_SIZES[i % len(MIXED_SIZES)]
        pixels = (np.full((h, w, 3), 190) + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
        for _ in range(int(rng.integers(3, 9))):
            k = int(rng.integers(len(category_ids)))
            ratio = float(np.exp(rng.uniform(np.log(1 / 4), np.log(4))))  # h / w
            side = float(rng.uniform(10, 28))
            bw, bh = min(w - 2, side / np.sqrt(ratio)), min(h - 2, side * np.sqrt(ratio))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            pixels[int(y):int(y + bh), int(x):int(x + bw)] = COLOURS[k + 1]
            annotations.append({"id": 1000 + len(annotations), "image_id": 500 + i, "category_id": category_ids[k],
                                "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                                "area": round(bw * bh, 2), "iscrowd": int(i == 0 and not annotations)})
        name = f"{i:04d}.jpg"
        Image.fromarray(pixels).save(root / "images" / name, quality=90)
        images.append({"id": 500 + i, "file_name": name, "width": w, "height": h})
    categories = [{"id": c, "name": CLASSES[k], "supercategory": "box"} for k, c in enumerate(category_ids)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _fresh_local_ray():
    """A new local Ray as the stages start one (:func:`pipeline.driver.cluster.ensure_ray`, the project's code
    shipped), shut down afterwards; any Ray already up in this process is shut down first."""
    import ray

    from pipeline.driver.cluster import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(None)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def local_ray():
    """A local Ray for the test (this machine's CPUs); a stage run inside it leaves it running."""
    yield from _fresh_local_ray()


@pytest.fixture(scope="module")
def module_local_ray():
    """One local Ray for a whole test module."""
    yield from _fresh_local_ray()


@pytest.fixture
def mixed_coco(tmp_path: Path):
    """Factory ``mixed_coco(name="raw", root=None, num_images=12, ...) -> annotations.json`` of
    :func:`write_mixed_coco` in ``root`` (default: ``tmp_path / name``)."""
    return lambda name="raw", root=None, **kw: write_mixed_coco(root or tmp_path / name, **kw)


def write_corrupt_jpeg(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A JPEG as bit rot leaves it: header and end marker intact, a stray marker in the middle of
    its scan data, so PIL raises ``OSError: broken data stream`` only when it decodes the pixels."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.dstack([x * 2, y * 3, x + y]).astype(np.uint8)).save(path, format="JPEG", quality=90)
    data = bytearray(path.read_bytes())
    sos = data.index(b"\xff\xda")
    start = sos + (len(data) - sos) // 3
    data[start:start + 2] = b"\xff\xc4"  # a DHT marker where entropy-coded data should be
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def corrupt_jpeg():
    """:func:`write_corrupt_jpeg` (``corrupt_jpeg(path, size=(64, 64)) -> path``)."""
    return write_corrupt_jpeg


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Path:
    """A prepared-data folder (``train.json``, ``val.json``, images) with 8 train / 4 val images."""
    return write_tiny_coco(tmp_path / "prepared")


TINY_OVERRIDES = [
    "data.resize.min_size=64", "data.resize.max_size=64",
    "model.backbone=resnet18", "model.fpn_channels=32", "model.fpn_levels=[3,4,5]",
    "model.rpn.batch_size_per_image=64", "model.roi.batch_size_per_image=32",
    "train.epochs=1", "train.batch_size=2", "train.warmup_iters=2", "train.log_every=1",
    "train.lr_steps=[100]", "ray.num_workers=1",
    "mlflow.experiment_name=tests", "mlflow.registered_model_name=null", "mlflow.log_model=false",
]


def tiny_params_file(tmp_path: Path, overrides: list[str] = (), name: str = "params.yaml") -> Path:
    """``params.yaml`` of the repo with a tiny model, 64 px images and 1 epoch, plus ``overrides``."""
    from pipeline.params import apply_overrides

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = apply_overrides(raw, [*TINY_OVERRIDES, *overrides])
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def tiny_params_yaml(tmp_path: Path):
    """Factory: ``tiny_params_yaml(overrides, name="params.yaml") -> Path`` of a tiny params file."""
    return lambda overrides=(), name="params.yaml": tiny_params_file(tmp_path, list(overrides), name=name)


@pytest.fixture
def tiny_params(tmp_path: Path):
    """Factory: ``tiny_params(*overrides) -> Params`` with a tiny model (resnet18, FPN 32 channels)."""
    from pipeline.params import load_params

    def make(*overrides: str):
        return load_params(tiny_params_file(tmp_path, list(overrides), name=f"params-{time.monotonic_ns()}.yaml"))

    return make


def _stop_process_group(proc: subprocess.Popen, log, timeout: float) -> None:
    """Stop a server started with ``start_new_session=True`` and its children: SIGTERM, SIGKILL after ``timeout``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture
def stop_server():
    """:func:`_stop_process_group` (test modules cannot import conftest reliably)."""
    return _stop_process_group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, Any, str]:
    """Start ``mlflow server`` on 127.0.0.1 (sqlite backend and artifacts in ``root``) and wait until it
    answers; returns ``(process, log file, uri)``; stop it with :func:`_stop_process_group`."""
    port = port or _free_port()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = (root / "server.log").open("a")
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True,  # its own process group: the uvicorn workers stop with it
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # slow when the 2 cores are busy
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, log, uri
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_process_group(proc, log, timeout=5)
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}") from None
            time.sleep(0.5)


@pytest.fixture(scope="session")
def sqlite_store(tmp_path_factory):
    """Factory ``sqlite_store(folder) -> "sqlite:///<folder>/mlflow.db"``: an empty MLflow store, copied from
    one migrated for the whole session (creating MLflow's tables takes seconds)."""
    template = tmp_path_factory.getbasetemp() / "mlflow-empty.db"

    def make(folder: Path) -> str:
        if not template.exists():
            from mlflow.tracking import MlflowClient

            MlflowClient(f"sqlite:///{template}").search_experiments()  # creates and migrates the tables
        shutil.copyfile(template, Path(folder) / "mlflow.db")
        return f"sqlite:///{Path(folder) / 'mlflow.db'}"

    return make


@pytest.fixture
def start_server():
    """:func:`start_mlflow_server` (test modules cannot import conftest reliably)."""
    return start_mlflow_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, local artifacts); yields its URI."""
    proc, log, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield uri
    finally:
        _stop_process_group(proc, log, timeout=15)


# Console lines that are not about the user's run: logging-style warnings/errors, Python warnings,
# tracebacks, and Ray's C++ error lines ("[... E 123 456] core_worker.cc:..."). The pipeline's own
# "warning: ..." / "error: ..." lines (lower case, about the data or the run) are not matched.
NOISE = re.compile(r"\bWARNING\b|\bERROR\b|\bError\b|[A-Z]\w*Error:|Traceback|Warning:|\] \S+\.cc:\d+:| [EW] \d+ \d+\]")
# Lines about the machine the tests run on, not about the run: Ray's raylet reports a nearly full
# disk every 10 s ("file_system_monitor.cc: /tmp/ray/... is over 95% full"); a user needs to see
# it, but whether it appears depends on the CI machine's disk, not on this project.
MACHINE = re.compile(r"file_system_monitor\.cc:\d+: \S+ is over \d+% full")


# Also about the machine: Ray Train's controller registers its workers with Ray Data's autoscaling
# coordinator actor, which the first request creates, with a 5 s timeout. On a loaded 2-core CI machine,
# starting that actor's process can take longer; Ray then logs this warning with its traceback
# ("... CPU being overloaded, it's safe to ignore this error") and training goes on unaffected. The
# pipeline now starts that actor before the run (pipeline.driver.cluster.ready_autoscaling_coordinator,
# tested in tests/pipeline/driver/test_cluster.py), which removes the cause CI met; the controller's later
# requests (every 20 s, same 5 s limit) can still time out on an overloaded machine. The block, from this
# line to the traceback's GetTimeoutError, under the same process prefix, is skipped.
OVERLOADED = re.compile(r"^(.*?)Failed to send resource request for train-\w+\. If this only happens transiently "
                        r"during network partition or CPU being overloaded")


def noise_lines(console: str) -> list[str]:
    """The lines of ``console`` (a stage's stdout + stderr) matching :data:`NOISE` but not :data:`MACHINE`
    (nor inside an :data:`OVERLOADED` block)."""
    out: list[str] = []
    block_prefix = None
    for line in console.splitlines():
        if block_prefix is not None:
            if line.startswith(block_prefix):
                if "GetTimeoutError: Get timed out" in line:
                    block_prefix = None
                continue
            block_prefix = None
        match = OVERLOADED.search(line)
        if match:
            block_prefix = match.group(1)
            continue
        if NOISE.search(line) and not MACHINE.search(line):
            out.append(line)
    return out


@pytest.fixture
def console_noise():
    """``console_noise(text) -> [noisy lines]``: see :data:`NOISE`."""
    return noise_lines



@pytest.fixture
def every_anchor_best_iou():
    """The brute-force reference for the fast best-anchor-IoU computations (anchor fit, anchor search)."""
    from pipeline.anchor_search.geometry import best_iou_every_anchor

    return best_iou_every_anchor


def _deep_merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture
def repo_clone(tmp_path: Path):
    """Factory: ``repo_clone(params_update, before_commit=None) -> Path``: a git repository in
    ``tmp_path/repo`` holding this checkout's tracked and untracked (not ignored) files, with
    ``params_update`` merged into its ``params.yaml``; ``before_commit(path)`` may add files first."""

    def make(params_update: dict, before_commit=None) -> Path:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split()
        dest = tmp_path / "repo"
        for name in files:
            if (REPO / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, dest / name)
        params = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(_deep_merge(params, params_update), sort_keys=False))
        if before_commit is not None:
            before_commit(dest)
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
            subprocess.run(cmd, cwd=dest, capture_output=True, text=True, check=True)
        return dest

    return make
