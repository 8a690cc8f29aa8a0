"""The page in a real browser: headless Chromium (Debian's package) driven by Playwright.

``mit-semseg-app`` runs as a user starts it (``python -m mit_semseg.app --run ... --port 0``,
the URL read from what it prints), with two training runs of random but varied weights
(conftest.py). The tests upload real photographs, wait for the overlay, hover pixels and read
the class shown, click legend entries, switch modes, compare two models, and check that the
label map and the panel the page downloads are those ``test.py`` writes, pixel for pixel.

Without Chromium (``apt-get install chromium``) or Playwright (``pip install playwright``;
never ``playwright install``: the system's Chromium is used) the tests are skipped, saying
which is missing; with ``MIT_SEMSEG_REQUIRE_BROWSER=1`` (as CI sets it) they fail instead.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "mit_semseg" / "app" / "examples"
CHROMIUM = os.environ.get("MIT_SEMSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
DONE_MS = 180_000  # a job: loading the model, and a busy machine
RELEASE = "ade20k-mobilenetv2dilated-c1_deepsup"

pytestmark = pytest.mark.xdist_group("app_browser")  # one browser and one server per worker


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MIT_SEMSEG_CHROMIUM)"
    from mit_semseg.app.main import APP_MODULES

    missing = [name for name in APP_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return f"the app's packages are missing ({', '.join(missing)}): pip install -e '.[app]'"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = _missing_browser()
    if missing:
        if os.environ.get("MIT_SEMSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MIT_SEMSEG_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 900},
            accept_downloads=True)
        yield context
        context.close()


def _start_app(args: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    """``python -m mit_semseg.app ARGS`` and the URL it prints."""
    process = subprocess.Popen([sys.executable, "-m", "mit_semseg.app", *args], cwd=REPO_ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(120)
    if not lines or "open http://" not in lines[0]:
        process.kill()
        pytest.fail(f"the app did not start: {lines} {process.stderr.read()[-3000:]}")
    return process, lines[0].split("open ", 1)[1].split()[0]


@pytest.fixture(scope="module")
def app_url(runs, tmp_path_factory):
    """The app over the two runs, in its own process; released models cannot be fetched
    (the mirror is a closed port)."""
    alpha, beta = runs
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               MIT_SEMSEG_HOME=str(tmp_path_factory.mktemp("app_cache")),
               MIT_SEMSEG_MODEL_MIRROR="http://127.0.0.1:9")
    process, url = _start_app(["--run", str(alpha.folder), "--run", str(beta.folder),
                               "--port", "0"], env)
    assert url.startswith("http://127.0.0.1:")
    yield url
    process.terminate()
    process.communicate(timeout=60)


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app_url)
    page.wait_for_selector("body[data-ready=true]")
    yield page
    page.close()
    assert not errors, errors  # no JavaScript exception on the way


def _done(page, view="a"):
    page.wait_for_selector(f"#view-{view}[data-state=done]", timeout=DONE_MS)


def _png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _result_labels(page, view="a") -> np.ndarray:
    """The label map of a view's result, 0-based, from the page's own download link."""
    href = page.eval_on_selector(f"#view-{view} .download-labels", "link => link.href")
    return _png(page.request.get(href).body()).astype(np.int64) - 1


def _pixel_at(page, view: str, x: int, y: int, size: tuple[int, int]) -> tuple[float, float]:
    """Where on the screen the photo's pixel ``(x, y)`` is drawn (its centre)."""
    box = page.locator(f"#view-{view} .overlay").bounding_box()
    width, height = size
    return (box["x"] + (x + 0.5) * box["width"] / width,
            box["y"] + (y + 0.5) * box["height"] / height)


def _inner_pixels(labels: np.ndarray, margin: int = 6) -> dict[int, tuple[int, int]]:
    """One pixel ``(x, y)`` per class, deep inside a region of it (so that rounding the mouse
    position cannot land on another class)."""
    found = {}
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    for c in np.unique(labels):
        inside = cv2.erode((labels == c).astype(np.uint8), kernel)
        ys, xs = np.nonzero(inside)
        if len(xs):
            middle = len(xs) // 2
            found[int(c)] = (int(xs[middle]), int(ys[middle]))
    return found


def _overlay_alpha(page, view: str, x: int, y: int) -> int:
    return page.evaluate(
        "([view, x, y]) => document.querySelector(`#view-${view} .overlay`).getContext('2d')"
        ".getImageData(x, y, 1, 1).data[3]", [view, x, y])


def test_upload_hover_legend_and_downloads_are_test_pys(page, runs, tmp_path, test_py_labels):
    alpha, _ = runs
    photo = EXAMPLES / "astronaut.jpg"
    page.set_input_files("#photo-input", str(photo))
    _done(page)
    expected_png = test_py_labels(alpha, 2, photo, tmp_path / "test_py", "(96,)")
    expected = _png(expected_png.read_bytes()).astype(np.int64) - 1
    names = [line.split(",")[1] for line in
             (alpha.data / "object_info.csv").read_text().splitlines()[1:]]
    assert page.inner_text("#view-a .view-title") == "alpha, epoch 2"
    assert page.inner_text("#view-a .view-meta") == \
        "mobilenetv2dilated + c1_deepsup · single-scale (96 px)"
    assert page.inner_text("#view-a .timing").startswith("inference ")

    # the downloads are test.py's files, pixel for pixel
    with page.expect_download() as download:
        page.click("#view-a .download-labels")
    assert download.value.suggested_filename == "astronaut_run-1_epoch2_single_labels.png"
    labels_file = tmp_path / "labels.png"
    download.value.save_as(labels_file)
    np.testing.assert_array_equal(_png(labels_file.read_bytes()), _png(expected_png.read_bytes()))
    with page.expect_download() as download:
        page.click("#view-a .download-panel")
    panel_file = tmp_path / "panel.png"
    download.value.save_as(panel_file)
    np.testing.assert_array_equal(_png(panel_file.read_bytes()),
                                  _png((tmp_path / "test_py" / "astronaut.png").read_bytes()))

    # hovering a pixel names its class, with a probability
    inner = _inner_pixels(expected)
    assert len(inner) >= 3
    for c, (x, y) in list(inner.items())[:4]:
        page.mouse.move(*_pixel_at(page, "a", x, y, (512, 512)))
        line = page.locator("#hover-info [data-view=a]")
        assert line.locator(".hover-class").inner_text() == names[c]
        # the photo is drawn a little smaller than its pixels: the mouse lands within one
        shown_x = int(page.get_attribute("#hover-info", "data-x"))
        shown_y = int(page.get_attribute("#hover-info", "data-y"))
        assert abs(shown_x - x) <= 1 and abs(shown_y - y) <= 1
        assert expected[shown_y, shown_x] == c
        probability = float(line.locator(".hover-probability").inner_text().rstrip("%"))
        assert 100 / 8 <= probability <= 100  # the largest of 8 probabilities
        assert page.inner_text("#view-a .tooltip").startswith(names[c] + " ")

    # the legend: every class present, largest first, with its share of the pixels
    counts = np.bincount(expected.ravel(), minlength=8)
    order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    items = page.locator("#view-a .legend li")
    assert items.evaluate_all("items => items.map(i => i.dataset.class)") == \
        [names[c] for c in order]
    shares = page.locator("#view-a .legend .share").all_inner_texts()
    assert len(shares) == len(order)
    for text, c in zip(shares, order):
        exact = 100 * counts[c] / expected.size
        if text == "<0.1%":
            assert exact < 0.1
        else:  # one decimal, rounded
            assert abs(float(text.rstrip("%")) - exact) <= 0.05 + 1e-9

    # clicking a class shows it alone; clicking it again shows every class
    chosen, other = order[1], order[0]
    (cx, cy), (ox, oy) = inner[chosen], inner[other]
    page.click(f"#view-a .legend li[data-class='{names[chosen]}'] button")
    assert page.get_attribute(f"#view-a .legend li[data-class='{names[chosen]}'] button",
                              "aria-pressed") == "true"
    assert (_overlay_alpha(page, "a", cx, cy), _overlay_alpha(page, "a", ox, oy)) == (255, 0)
    assert "highlighting" in page.get_attribute("#view-a .stage", "class")
    page.click(f"#view-a .legend li[data-class='{names[chosen]}'] button")
    assert (_overlay_alpha(page, "a", cx, cy), _overlay_alpha(page, "a", ox, oy)) == (255, 255)

    # the opacity slider
    page.locator("#opacity").fill("25")
    assert page.eval_on_selector("#view-a .overlay", "c => c.style.opacity") == "0.25"
    assert page.inner_text("#opacity-value") == "25%"


def test_a_dropped_photo_and_the_multi_scale_switch(page, runs):
    photo = EXAMPLES / "coffee.jpg"
    page.evaluate("""
        ([name, data]) => {
            const bytes = Uint8Array.from(atob(data), (ch) => ch.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            document.querySelector("#drop-zone").dispatchEvent(
                new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
        }""", ["coffee.jpg", base64.b64encode(photo.read_bytes()).decode()])
    _done(page)
    single = _result_labels(page)
    page.check("input[name=mode][value=multi]")
    page.wait_for_function("document.querySelector('#view-a .view-meta').textContent"
                           ".includes('multi')")
    _done(page)
    assert page.inner_text("#view-a .view-meta") == \
        "mobilenetv2dilated + c1_deepsup · multi-scale + flip (64, 96, 128 px)"
    multi = _result_labels(page)

    from mit_semseg.app.catalog import run_choice
    from mit_semseg.app.photos import Limits, read_photo
    from mit_semseg.inference.predict import predict_labels

    cpu = torch.device("cpu")
    choice = run_choice(runs[0].folder, "run-1", cpu)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the app's process runs (OMP_NUM_THREADS=1)
    try:
        module = choice.trained_model(2).load(cpu)
        for mode, shown in (("single", single), ("multi", multi)):
            sample = read_photo(photo.read_bytes(), "coffee.jpg", choice.dataset_options(mode),
                                Limits())
            expected = predict_labels(module, sample["img_data"], (400, 600), cpu,
                                      choice.predict_options(mode))
            np.testing.assert_array_equal(shown, expected.numpy())
    finally:
        torch.set_num_threads(threads)
    assert (single != multi).any()


def test_compare_two_epochs_marks_where_they_disagree(page):
    page.click("#examples button[data-example=cat]")
    _done(page)
    page.check("#compare")
    page.select_option("#model-b", "run-1")
    page.select_option("#epoch-b", "1")
    _done(page, "b")
    page.wait_for_selector("#agreement:not([hidden])")
    assert page.inner_text("#view-b .view-title") == "alpha, epoch 1"
    first, second = _result_labels(page, "a"), _result_labels(page, "b")
    differ = first != second
    assert 0 < differ.mean() < 1
    share = float(page.get_attribute("#agreement", "data-share"))
    assert share == pytest.approx(100 * differ.mean(), abs=1e-9)
    assert f"disagree on {100 * differ.mean():.1f}% of the pixels" in page.inner_text("#agreement")

    # a striped pixel inside a region where they disagree, and one inside a region of agreement
    kernel = np.ones((9, 9), np.uint8)
    deep_differ = cv2.erode(differ.astype(np.uint8), kernel).astype(bool)
    ys, xs = np.nonzero(deep_differ & ((np.indices(differ.shape).sum(0) % 7) == 0))
    ys, xs = ys[len(ys) // 2:], xs[len(xs) // 2:]
    agree_y, agree_x = np.argwhere(cv2.erode((~differ).astype(np.uint8), kernel))[0]
    marks = "([v, x, y]) => Array.from(document.querySelector(`#view-${v} .marks`)" \
            ".getContext('2d').getImageData(x, y, 1, 1).data)"
    for view in ("a", "b"):
        assert page.evaluate(marks, [view, int(xs[0]), int(ys[0])]) == [255, 255, 255, 255]
        assert page.evaluate(marks, [view, int(agree_x), int(agree_y)])[3] == 0
    page.uncheck("#mark-disagreement")
    assert page.evaluate(marks, ["a", int(xs[0]), int(ys[0])])[3] == 0

    # hovering shows both models' classes at the same pixel, each named
    page.mouse.move(*_pixel_at(page, "b", int(xs[0]), int(ys[0]), (451, 300)))
    assert page.locator("#hover-info .hover-line small").all_inner_texts() == \
        ["alpha, epoch 2", "alpha, epoch 1"]
    assert abs(int(page.get_attribute("#hover-info", "data-x")) - xs[0]) <= 1


def test_bad_files_get_a_message_and_the_page_keeps_working(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    page.set_input_files("#photo-input", str(notes))
    page.wait_for_selector("#view-a[data-state=error]")
    assert page.inner_text("#error") == \
        "notes.txt is not an image; the page takes JPEG, PNG or WebP photos"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((EXAMPLES / "coffee.jpg").read_bytes()[:20_000])
    page.set_input_files("#photo-input", str(cut))
    page.wait_for_function("document.querySelector('#error').textContent.startsWith('cut.jpg')")
    assert page.inner_text("#error") == "cut.jpg: truncated JPEG (no end-of-image marker)"
    assert page.inner_text("#view-a .view-status") == page.inner_text("#error")
    page.set_input_files("#photo-input", str(EXAMPLES / "chelsea.jpg"))
    _done(page)
    assert page.is_hidden("#error")


def test_an_unreachable_released_model_shows_the_offline_line(page):
    page.click("#examples button[data-example=coffee]")
    page.select_option("#model-a", RELEASE)
    page.wait_for_selector("#view-a[data-state=error]", timeout=DONE_MS)
    message = page.inner_text("#error")
    assert message.startswith(f"cannot fetch pretrained model {RELEASE}: cannot download ")
    assert "put both files in" in message and "\n" not in message
    assert "(downloaded on first use)" in page.inner_text(f"#model-a option[value='{RELEASE}']")


def test_a_photo_waiting_for_its_model_shows_its_place_in_line(browser, runs, monkeypatch):
    """Two pages, one model: the second photo waits while the first is segmented, and its
    page says how many are ahead. The server runs in this process, so that the first photo
    can be held (a gate in place of the segmentation) for as long as the test looks."""
    import socket

    import uvicorn

    from mit_semseg.app import jobs as jobs_module
    from mit_semseg.app.catalog import run_choice
    from mit_semseg.app.server import create_app

    real, gate = jobs_module.segment, threading.Event()

    def held(*args):
        assert gate.wait(120)
        return real(*args)

    monkeypatch.setattr(jobs_module, "segment", held)
    app = create_app([run_choice(runs[1].folder, "run-1", torch.device("cpu"))],
                     torch.device("cpu"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    pages = [browser.new_page(), browser.new_page()]
    try:
        for one in pages:
            one.goto(url)
            one.wait_for_selector("body[data-ready=true]")
        pages[0].click("#examples button[data-example=coffee]")
        pages[0].wait_for_selector("#view-a[data-state=running]", timeout=DONE_MS)
        pages[1].click("#examples button[data-example=cat]")
        pages[1].wait_for_function(
            "document.querySelector('#view-a .view-status').textContent"
            " === 'waiting for the model: 1 photo ahead'", timeout=DONE_MS)
        assert pages[0].inner_text("#view-a .view-status") == "segmenting…"
        gate.set()
        for one in pages:
            _done(one)
    finally:
        gate.set()
        for one in pages:
            one.close()
        server.should_exit = True
        thread.join(30)


def test_the_page_loads_nothing_from_elsewhere(browser, app_url):
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(app_url)
    page.wait_for_selector("body[data-ready=true]")
    page.close()
    assert requested and all(url.startswith(app_url) for url in requested), requested
