"""The app's HTTP answers without a browser (starlette's TestClient, in this process): the
model list, a photo segmented end to end, every refusal of a bad request, the line of jobs per
model, and a released model fetched from a (local) mirror or refused offline."""

from __future__ import annotations

import io
import threading
import time

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the app's packages: pip install -e '.[app]'")
try:
    from starlette.testclient import TestClient
except (ImportError, RuntimeError) as error:  # it needs httpx2 (or httpx): pip install -e '.[test]'
    pytest.skip(f"starlette's TestClient cannot start: {error}", allow_module_level=True)

from mit_semseg.app import jobs as jobs_module  # noqa: E402
from mit_semseg.app.catalog import released_choices, run_choice  # noqa: E402
from mit_semseg.app.photos import Limits, read_photo  # noqa: E402
from mit_semseg.app.server import create_app  # noqa: E402
from mit_semseg.data.palette import resolve_class_names  # noqa: E402
from mit_semseg.inference.predict import PredictOptions, predict_labels  # noqa: E402
from mit_semseg.models import zoo  # noqa: E402
from mit_semseg.viz import prediction_panel  # noqa: E402

CPU = torch.device("cpu")
RELEASE = "ade20k-mobilenetv2dilated-c1_deepsup"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Released models go to a fresh cache, and nothing is fetched from the internet."""
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(zoo.ENV_MIRROR, "http://127.0.0.1:9")  # the discard port: refused


def _client(runs, limits=None, releases=False):
    choices = [run_choice(run.folder, f"run-{i}", CPU) for i, run in enumerate(runs, 1)]
    if releases:
        choices += released_choices()
    return TestClient(create_app(choices, CPU, limits))


def _post(client, photo=None, name="photo.jpg", **fields):
    fields = {"model": "run-1", "mode": "single", **fields}
    files = {"photo": (name, photo, "application/octet-stream")} if photo is not None else None
    return client.post("/api/jobs", data=fields, files=files)


def _wait(client, job, until=("done", "error", "cancelled")):
    """The job's status once it reaches one of ``until`` (polled; fails after 2 minutes)."""
    for _ in range(2400):
        status = client.get(f"/api/jobs/{job}").json()
        if status["state"] in until:
            return status
        time.sleep(0.05)
    pytest.fail(f"job {job} stayed {status}")


def _png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_the_model_list_names_runs_and_releases_without_paths(runs):
    alpha, beta = runs
    with _client(runs, releases=True) as client:
        page = client.get("/")
        answer = client.get("/api/models")
    assert page.status_code == 200 and "<title>mit_semseg" in page.text
    assert answer.status_code == 200
    models = answer.json()["models"]
    assert [m["key"] for m in models[:2]] == ["run-1", "run-2"]
    assert [m["key"] for m in models[2:]] == zoo.list_models()
    first = models[0]
    assert first["kind"] == "run" and first["epochs"] == [1, 2] and first["latest_epoch"] == 2
    assert first["classes"] == resolve_class_names(8, alpha.data)  # the run's own table
    assert first["scales"] == {"single": [96], "multi": [64, 96, 128]}
    assert first["colors"][1] == "#cd2323"  # "red disc", from the table's Color column
    released = models[2]
    assert released["classes"][0] == "wall" and released["needs_download"]
    assert released["scales"]["single"] == [450]  # the original README's single-scale setting
    assert str(alpha.folder) not in answer.text and str(beta.folder) not in answer.text
    assert {e["key"] for e in answer.json()["examples"]} == {"coffee", "astronaut", "cat"}


def test_a_photo_segmented_end_to_end(runs, example_photo):
    """The labels are predict_labels' on TestDataset's reading of the photo (test.py's path),
    and every file of the result agrees with them."""
    data = (example_photo.parent / "astronaut.jpg").read_bytes()
    with _client(runs) as client:
        submitted = _post(client, data, name="astronaut.jpg", epoch="1")
        assert submitted.status_code == 202 and submitted.json()["state"] == "queued"
        status = _wait(client, submitted.json()["job"])
        assert status["state"] == "done", status
        base = f"/api/results/{status['job']}"
        label_png, panel_png = client.get(f"{base}/labels.png"), client.get(f"{base}/panel.png")
        maps = client.get(f"{base}/maps").content
        image = client.get(f"{base}/image.jpg")
    choice = run_choice(runs[0].folder, "run-1", CPU)
    sample = read_photo(data, "astronaut.jpg", choice.dataset_options("single"), Limits())
    module = choice.trained_model(1).load(CPU)
    expected = predict_labels(module, sample["img_data"], (512, 512), CPU,
                              PredictOptions()).numpy()
    assert (status["width"], status["height"], status["epoch"]) == (512, 512, 1)
    labels = np.frombuffer(maps[: 2 * 512 * 512], "<u2").reshape(512, 512)
    confidence = np.frombuffer(maps[2 * 512 * 512:], "<u2").reshape(512, 512) / 65535
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) >= 4
    assert 1 / 8 <= confidence.min() and confidence.max() <= 1  # a max of 8 probabilities
    assert label_png.headers["content-disposition"] == \
        'attachment; filename="astronaut_run-1_epoch1_single_labels.png"'
    np.testing.assert_array_equal(_png(label_png.content), expected + 1)
    panel = prediction_panel(sample["img_ori"], expected, choice.palette, choice.class_names)
    np.testing.assert_array_equal(_png(panel_png.content)[..., ::-1], panel)
    assert image.headers["content-type"] == "image/jpeg"
    assert _png(image.content).shape == (512, 512, 3)
    shares = status["shares"]
    assert [c for c, _ in shares] == [c for c, _ in sorted(shares, key=lambda s: -s[1])]
    counts = np.bincount(expected.ravel(), minlength=8) / expected.size
    for c, share in shares:
        assert share == pytest.approx(counts[c], abs=1e-6)
    assert status["seconds"] > 0 and status["load_seconds"] > 0


def test_an_example_photo_and_the_multi_scale_mode(runs, example_photo):
    with _client(runs) as client:
        status = _wait(client, _post(client, example="cat", mode="multi").json()["job"])
        maps = client.get(f"/api/results/{status['job']}/maps").content
        missing = client.get("/api/examples/dog")
        served = client.get("/api/examples/cat")
    assert status["state"] == "done" and status["mode"] == "multi"
    choice = run_choice(runs[0].folder, "run-1", CPU)
    photo = example_photo.parent / "chelsea.jpg"
    sample = read_photo(photo.read_bytes(), "x", choice.dataset_options("multi"), Limits())
    assert [tuple(x.shape[2:]) for x in sample["img_data"]] == [(64, 96), (96, 144), (128, 192)]
    expected = predict_labels(choice.trained_model(2).load(CPU), sample["img_data"], (300, 451),
                              CPU, PredictOptions(flip=True)).numpy()
    np.testing.assert_array_equal(np.frombuffer(maps[: 2 * expected.size], "<u2"),
                                  expected.ravel())
    assert missing.status_code == 404 and "choose one of coffee" in missing.json()["error"]
    assert served.content == photo.read_bytes()


def _jpeg(width, height) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", noise)[1].tobytes()


def _png_bytes() -> bytes:
    noise = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    return cv2.imencode(".png", noise)[1].tobytes()


def _gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "GIF")
    return out.getvalue()


BAD_REQUESTS = [
    ({"photo": b"just some text\n", "name": "notes.txt"}, 415, "notes.txt is not an image"),
    ({"photo": _jpeg(64, 48)[:-300], "name": "cut.jpg"}, 400,
     "cut.jpg: truncated JPEG (no end-of-image marker)"),
    ({"photo": _png_bytes()[:-400], "name": "cut.png"}, 400, "cut.png: cannot decode"),
    ({"photo": _gif(), "name": "anim.gif"}, 415, "anim.gif is a GIF image"),
    ({"photo": b"", "name": "empty.jpg"}, 400, "empty.jpg is empty"),
    ({"photo": _jpeg(400, 300), "name": "big.jpg"}, 413,
     "big.jpg is 400x300 pixels (0.12 megapixels), over this server's limit of 0.05 "
     "megapixels (mit-semseg-app --max-megapixels)"),
    ({"photo": _jpeg(64, 48), "model": "ade20k-nonsense"}, 400, "unknown model"),
    ({"photo": _jpeg(64, 48), "epoch": "7"}, 400, "has no epoch '7'; choose one of 1, 2"),
    ({"photo": _jpeg(64, 48), "mode": "triple"}, 400, "unknown mode 'triple'"),
    ({}, 400, "no photo: upload one"),
    ({"example": "dog"}, 404, "no example photo 'dog'"),
]


@pytest.mark.parametrize("fields,status,message", BAD_REQUESTS)
def test_a_bad_request_is_refused_with_one_line_and_the_server_keeps_serving(
        runs, fields, status, message):
    fields = dict(fields)
    photo, name = fields.pop("photo", None), fields.pop("name", "photo.jpg")
    with _client(runs, Limits(max_bytes=1_000_000, max_pixels=50_000)) as client:
        answer = _post(client, photo, name=name, **fields)
        assert answer.status_code == status, answer.text
        assert message in answer.json()["error"] and "\n" not in answer.json()["error"]
        after = _wait(client, _post(client, _jpeg(64, 48)).json()["job"])
    assert after["state"] == "done"


def test_an_upload_over_the_byte_limit_is_refused_before_it_is_read(runs):
    limit = Limits(max_bytes=20_000)
    with _client(runs, limit) as client:
        # a file over the limit, within the form's slack: the photo check names it
        answer = _post(client, b"\xff\xd8" + bytes(29_998), name="huge.jpg")
        assert answer.status_code == 413
        assert answer.json()["error"] == ("huge.jpg is 30 kB, over this server's limit of 20 kB "
                                          "(mit-semseg-app --max-upload-mb)")
        # far over: refused from Content-Length, or while it arrives when there is none
        answer = _post(client, bytes(200_000))
        assert answer.status_code == 413 and "--max-upload-mb" in answer.json()["error"]
        chunks = (bytes(10_000) for _ in range(30))
        answer = client.post("/api/jobs", content=chunks,
                             headers={"content-type": "multipart/form-data; boundary=x"})
        assert answer.status_code == 413 and "--max-upload-mb" in answer.json()["error"]
        assert _wait(client, _post(client, _jpeg(64, 48)).json()["job"])["state"] == "done"


def test_unknown_jobs_and_results_are_404(runs):
    with _client(runs) as client:
        assert client.get("/api/jobs/nope").status_code == 404
        answer = client.get("/api/results/nope/labels.png")
        assert answer.status_code == 404 and "no longer kept" in answer.json()["error"]
        done = _wait(client, _post(client, _jpeg(64, 48)).json()["job"])
        answer = client.get(f"/api/results/{done['job']}/secrets.txt")
        assert answer.status_code == 404 and "one of maps" in answer.json()["error"]


class _Gate:
    """Stands in for segment(): blocks until opened, counting the calls running at once."""

    def __init__(self, real):
        self.real = real
        self.open = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __call__(self, *args):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if args[2].key == "run-1":  # the choice: only the first model's photos wait
                assert self.open.wait(120)
            return self.real(*args)
        finally:
            with self.lock:
                self.running -= 1


def test_one_photo_at_a_time_per_model_the_others_wait_in_line(runs, monkeypatch):
    gate = _Gate(jobs_module.segment)
    monkeypatch.setattr(jobs_module, "segment", gate)
    loads = []
    real_load = jobs_module.ModelChoice.trained_model

    def counted(choice, epoch):
        loads.append((choice.key, epoch))
        return real_load(choice, epoch)

    monkeypatch.setattr(jobs_module.ModelChoice, "trained_model", counted)
    with _client(runs) as client:
        photo = _jpeg(64, 48)
        first, second, third = (_post(client, photo).json()["job"] for _ in range(3))
        assert _wait(client, first, until=("running",))["state"] == "running"
        assert client.get(f"/api/jobs/{second}").json()["ahead"] == 1
        assert client.get(f"/api/jobs/{third}").json()["ahead"] == 2
        # another model is not held up by the first one's line
        other = _post(client, photo, model="run-2").json()["job"]
        assert _wait(client, other)["state"] == "done"
        # a waiting job can leave the line; the one behind moves up
        assert client.delete(f"/api/jobs/{second}").json()["state"] == "cancelled"
        assert client.get(f"/api/jobs/{third}").json()["ahead"] == 1
        assert client.delete(f"/api/jobs/{first}").json()["state"] == "running"  # too late
        gate.open.set()
        assert _wait(client, first)["state"] == "done"
        assert _wait(client, third)["state"] == "done"
        assert client.get(f"/api/jobs/{second}").json()["state"] == "cancelled"
    assert gate.most == 2  # run-1 and run-2 side by side, never two of run-1
    assert sorted(loads) == [("run-1", 2), ("run-2", 3)]  # each loaded once, then kept


def test_a_failed_inference_is_reported_and_the_model_keeps_serving(runs, monkeypatch):
    real = jobs_module.segment
    calls = []

    def fails_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory\n(imagine a long trace)")
        return real(*args)

    monkeypatch.setattr(jobs_module, "segment", fails_once)
    with _client(runs) as client:
        failed = _wait(client, _post(client, _jpeg(64, 48)).json()["job"])
        worked = _wait(client, _post(client, _jpeg(64, 48)).json()["job"])
    assert failed == {**failed, "state": "error", "message": "out of memory (imagine a long trace)"}
    assert worked["state"] == "done"


def _release_weights(tmp_path):
    """Random weights with the released model's architecture (150 classes), as its files."""
    release = zoo.get_model(RELEASE)
    module = zoo.build_model(RELEASE)
    encoder, decoder = tmp_path / "encoder.pth", tmp_path / "decoder.pth"
    torch.save(module.encoder.state_dict(), encoder)
    torch.save(module.decoder.state_dict(), decoder)
    names = release.file_names()
    return {f"/{RELEASE}/{names[0]}": encoder.read_bytes(),
            f"/{RELEASE}/{names[1]}": decoder.read_bytes()}


def test_a_released_model_is_fetched_on_first_use_with_the_bytes_shown(
        runs, tmp_path, monkeypatch, http_server):
    for path, content in _release_weights(tmp_path).items():
        http_server.serve(path, content)
    monkeypatch.setenv(zoo.ENV_MIRROR, http_server.url)
    fetched = threading.Event()
    seen = threading.Event()
    real_fetch = zoo.fetch

    def fetch_then_wait(name, **kwargs):
        files = real_fetch(name, **kwargs)
        fetched.set()
        assert seen.wait(120)  # the test has seen the downloading state with the bytes
        return files

    monkeypatch.setattr(zoo, "fetch", fetch_then_wait)
    with _client(runs, releases=True) as client:
        assert client.get("/api/models").json()["models"][2]["needs_download"]
        job = _post(client, _jpeg(64, 48), model=RELEASE).json()["job"]
        assert fetched.wait(120)
        status = client.get(f"/api/jobs/{job}").json()
        seen.set()
        assert status["state"] == "downloading"
        size = sum(len(c) for c in _release_weights(tmp_path).values())
        assert status["received_bytes"] == size
        done = _wait(client, job)
        assert done["state"] == "done" and done["epoch"] == 20
        assert not client.get("/api/models").json()["models"][2]["needs_download"]


def test_an_unreachable_released_model_shows_the_offline_line(runs):
    with _client(runs, releases=True) as client:
        failed = _wait(client, _post(client, _jpeg(64, 48), model=RELEASE).json()["job"])
        # the slot is not broken: the next photo tries again, and a run still works
        again = _wait(client, _post(client, _jpeg(64, 48), model=RELEASE).json()["job"])
        run = _wait(client, _post(client, _jpeg(64, 48)).json()["job"])
    assert failed["state"] == "error"
    assert failed["message"].startswith(f"cannot fetch pretrained model {RELEASE}: cannot "
                                        "download http://127.0.0.1:9/")
    assert "put both files in" in failed["message"] and "\n" not in failed["message"]
    assert again["state"] == "error" and run["state"] == "done"
