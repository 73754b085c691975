"""The review page (/ui) in a real browser: Debian's Chromium, driven through its chromedriver
by Selenium, against `python -m app` serving the committed models with an API key.

Uploads 64 committed images (60 real C-NMC cells, 4 out-of-distribution photos), waits for the
gallery and checks it against the API's own answer: order, labels, the summary's counts and
Wilson interval, the OOD section with reasons, a heatmap shown, and the message for a wrong key.
A second test drops 64 real cells as a DragEvent and checks the gallery, the CSV's defence
against formula injection and the keyboard-only path, and prints drop-to-gallery seconds.
Skipped without `chromium` and `chromium-driver` (.ci/run installs them). Selenium is given
the driver's path, so Selenium Manager never runs (it would download a driver).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.conftest import CNMC_BMP, CNMC_PNGS, COMMITTED_STORE, OOD_JPEGS, REPO
from tests.app.live_service import HAS_CHROMIUM, chromium_driver, running_service

API_KEY = "review-page-test-key"
DEADLINE_S = 180  # generous: a busy 2-core machine
SCREENSHOT = os.environ.get("REVIEW_SCREENSHOT")  # set to docs/review-page.png to refresh it

pytestmark = pytest.mark.skipif(
    not HAS_CHROMIUM,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    with running_service(COMMITTED_STORE, LEUK_API_KEYS=API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """64 files of one 'sample': the committed real cells repeated, and the OOD photos."""
    folder = tmp_path_factory.mktemp("sample")
    cells = [*CNMC_PNGS, CNMC_BMP]
    paths = []
    for i in range(64 - len(OOD_JPEGS)):
        source = cells[i % len(cells)]
        paths.append(folder / f"cell_{i:02d}{source.suffix}")
        shutil.copyfile(source, paths[-1])
    for i, source in enumerate(OOD_JPEGS):
        paths.append(folder / f"photo_{i}{source.suffix}")
        shutil.copyfile(source, paths[-1])
    return sorted(paths, key=lambda p: p.name)


@pytest.fixture
def browser() -> Iterator[Any]:
    pytest.importorskip("selenium.webdriver")
    with chromium_driver("1280,1000", DEADLINE_S) as driver:
        yield driver


def _api_answer(url: str, paths: list[Path]) -> list[dict[str, Any]]:
    results = []
    with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": API_KEY}) as http:
        for start in range(0, len(paths), 8):
            files = [("files", (p.name, p.read_bytes())) for p in paths[start : start + 8]]
            response = http.post("/v1/classify", files=files)
            assert response.status_code == 200, response.text
            results += response.json()["results"]
    return results


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def test_review_page_classifies_a_sample_and_explains_a_cell(
    service_url: str, sample: list[Path], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, DEADLINE_S)
    browser.get(f"{service_url}/")  # redirects to /ui/
    assert browser.current_url.endswith("/ui/")
    assert "research use only" in browser.find_element(By.ID, "ruo").text.lower()
    # The service needs a key: the page says so and shows the key field.
    wait.until(lambda d: d.find_element(By.ID, "key-row").is_displayed())

    # A wrong key: the upload stops with the API's unauthorized error, in words.
    browser.find_element(By.ID, "api-key").send_keys("wrong-key")
    browser.find_element(By.ID, "key-save").click()
    browser.find_element(By.ID, "files").send_keys(str(sample[0]))
    error = browser.find_element(By.ID, "error")
    wait.until(lambda d: error.is_displayed())
    assert "unauthorized" in error.text and "API key" in error.text

    key_field = browser.find_element(By.ID, "api-key")
    key_field.clear()
    key_field.send_keys(API_KEY)
    browser.find_element(By.ID, "key-save").click()
    assert browser.execute_script("return sessionStorage.getItem('leuk-api-key')") == API_KEY

    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in sample))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-complete"))
    seconds = float(browser.find_element(By.TAG_NAME, "body").get_attribute("data-seconds"))
    assert not error.is_displayed()

    expected = _api_answer(service_url, sample)
    in_dist = [r for r in expected if not r["out_of_distribution"]]
    ood = [r for r in expected if r["out_of_distribution"]]
    assert len(ood) == len(OOD_JPEGS)

    cells = browser.find_elements(By.CSS_SELECTOR, "#gallery > li")
    shown = [
        (c.get_attribute("data-label"), float(c.get_attribute("data-probability"))) for c in cells
    ]
    assert [p for _, p in shown] == sorted((p for _, p in shown), reverse=True)
    want = sorted(((r["label"], r["blast_probability"]) for r in in_dist), key=lambda t: -t[1])
    assert [label for label, _ in shown] == [label for label, _ in want]
    assert [p for _, p in shown] == pytest.approx([p for _, p in want], abs=1e-5)

    ood_cells = browser.find_elements(By.CSS_SELECTOR, "#ood > li")
    assert len(ood_cells) == len(ood)
    assert all("Why:" in c.text for c in ood_cells)
    # the reason in words, with the API's code beside it
    assert all(
        "no black background: not a segmented single cell (no_black_background)" in c.text
        for c in ood_cells
    )

    blasts = sum(r["label"] == "all" for r in in_dist)
    assert browser.find_element(By.ID, "s-all").text == str(blasts)
    assert browser.find_element(By.ID, "s-ood").text == str(len(ood))
    low, high = _wilson(blasts, len(in_dist))
    fraction = browser.find_element(By.ID, "s-fraction").text
    assert f"{100 * blasts / len(in_dist):.1f}%" in fraction
    assert f"{100 * low:.1f}% to {100 * high:.1f}%" in fraction
    model_text = browser.find_element(By.ID, "s-model").text
    served = f"{expected[0]['model']} version {expected[0]['version']}"
    assert served in model_text and "digest sha256:" in model_text

    # The heatmap of the top cell: the image turns into the API's PNG overlay.
    top = cells[0]
    toggle = top.find_element(By.CLASS_NAME, "heat-toggle")
    toggle.click()
    wait.until(lambda d: toggle.get_attribute("aria-pressed") == "true")
    image = top.find_element(By.TAG_NAME, "img")
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert top.find_element(By.CLASS_NAME, "heat-note").text

    # Keyboard: the large view opens with Enter on a cell and closes with Escape.
    from selenium.webdriver.common.keys import Keys

    opener = cells[1].find_element(By.CLASS_NAME, "cell-open")
    opener.send_keys(Keys.ENTER)
    viewer = browser.find_element(By.ID, "viewer")
    wait.until(lambda d: viewer.get_attribute("open") is not None)
    assert "P(blast)" in viewer.text
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait.until(lambda d: viewer.get_attribute("open") is None)

    # The CSV download holds one row per image, in the API's words.
    csv_rows = browser.execute_script("return resultsCsv()").strip().split("\n")
    assert csv_rows[0].startswith("file,label,blast_probability")
    assert len(csv_rows) == 1 + len(sample)
    assert sum(",all," in row for row in csv_rows) == sum(r["label"] == "all" for r in expected)

    # Tablet width: nothing wider than the window.
    browser.set_window_size(768, 1024)
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )

    browser.set_window_size(1280, 1300)
    browser.execute_script("document.getElementById('summary').scrollIntoView()")
    browser.save_screenshot(str(tmp_path / "review-page.png"))
    if SCREENSHOT:
        shutil.copyfile(tmp_path / "review-page.png", REPO / SCREENSHOT)
    print(json.dumps({"cells": len(sample), "drop_to_gallery_seconds": seconds}))


# Names a spreadsheet would run as formulas (OWASP's CSV-injection list); the page's CSV must
# turn them into text. They are ordinary file names on a lab's disk.
FORMULA_NAMES = ["=HYPERLINK(1).png", "+cmd.png", "-2+3.png", "@SUM(A1).png"]


@pytest.fixture(scope="module")
def dropped_sample(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """64 real cells: the committed C-NMC images repeated under different names."""
    folder = tmp_path_factory.mktemp("dropped")
    cells = [*CNMC_PNGS, CNMC_BMP]
    paths = []
    for i in range(64):
        source = cells[i % len(cells)]
        name = FORMULA_NAMES[i] if i < len(FORMULA_NAMES) else f"cell_{i:02d}{source.suffix}"
        paths.append(folder / (Path(name).stem + source.suffix))
        shutil.copyfile(source, paths[-1])
    return paths


# A drop as Chromium delivers it: a DragEvent whose DataTransfer holds File objects. The files
# come from a hidden input that WebDriver filled from disk (scripts cannot read the disk), and a
# MutationObserver notes when the page marks the gallery complete.
_DROP = """
const source = document.getElementById('drop-source');
const transfer = new DataTransfer();
for (const file of source.files) transfer.items.add(file);
new MutationObserver((changes, observer) => {
  if (document.body.dataset.complete) { window.doneAt = performance.now(); observer.disconnect(); }
}).observe(document.body, {attributes: true});
window.droppedAt = performance.now();
document.getElementById('drop').dispatchEvent(
  new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
return transfer.files.length;
"""


def test_dropped_files_fill_the_gallery_and_the_page_works_by_keyboard(
    service_url: str, dropped_sample: list[Path], browser: Any
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, DEADLINE_S)
    browser.get(f"{service_url}/ui/")
    browser.execute_script(f"sessionStorage.setItem('leuk-api-key', {json.dumps(API_KEY)})")
    browser.execute_script(
        "const input = Object.assign(document.createElement('input'),"
        " {type: 'file', multiple: true, id: 'drop-source'});"
        "input.style.display = 'none'; document.body.append(input);"
    )
    source = browser.find_element(By.ID, "drop-source")
    source.send_keys("\n".join(str(p) for p in dropped_sample))
    assert browser.execute_script(_DROP) == len(dropped_sample)
    wait.until(lambda d: d.execute_script("return window.doneAt !== undefined"))
    seconds = browser.execute_script("return (window.doneAt - window.droppedAt) / 1000")
    print(json.dumps({"dropped_cells": len(dropped_sample), "drop_to_gallery_seconds": seconds}))

    expected = _api_answer(service_url, dropped_sample)
    assert not any(r["out_of_distribution"] for r in expected)
    cells = browser.find_elements(By.CSS_SELECTOR, "#gallery > li")
    assert len(cells) == len(dropped_sample)
    shown = [float(c.get_attribute("data-probability")) for c in cells]
    want = sorted((r["blast_probability"] for r in expected), reverse=True)
    assert shown == pytest.approx(want, abs=1e-5)
    assert browser.find_element(By.ID, "progress-text").text.startswith("Done: 64 cells")

    # The CSV: the formula-like names start with an apostrophe, nothing else does.
    csv_rows = browser.execute_script("return resultsCsv()").strip().split("\n")[1:]
    names = sorted(row.split(",")[0] for row in csv_rows)
    assert sorted(f"'{Path(n).stem}{Path(n).suffix}" for n in FORMULA_NAMES) == [
        n for n in names if n.startswith("'")
    ]
    assert not any(n[:1] in "=+-@" for n in names)
    fields = browser.execute_script(
        "return ['\\tx', '\\rx', 'a\\r', 'plain', '-1', 'a,b'].map(csvField)"
    )
    assert fields == ["'\tx", '"\'\rx"', '"a\r"', "plain", "'-1", '"a,b"']

    # Keyboard only: Tab from the top reaches the drop zone, the file choosers, the downloads,
    # each cell and its heatmap toggle, in reading order; Enter on the drop zone opens the file
    # chooser (noted by a stub: a real chooser is a native dialog), Enter toggles a heatmap.
    browser.execute_script(
        "window.chooserOpened = 0;"
        "document.getElementById('files').click = () => { window.chooserOpened += 1; };"
    )

    def press(key: str) -> None:  # to whatever has focus, as a keyboard does
        ActionChains(browser).send_keys(key).perform()

    browser.find_element(By.TAG_NAME, "h1").click()  # Tab starts from the top
    visited = []
    for _ in range(30):
        press(Keys.TAB)
        focused = browser.switch_to.active_element
        visited.append(focused.get_attribute("id") or focused.get_attribute("class"))
        if focused.get_attribute("class") == "heat-toggle":
            break
    assert visited[0] == "drop"
    order = [name for name in visited if name in ("drop", "files", "dl-csv", "cell-open")]
    assert order[:4] == ["drop", "files", "dl-csv", "cell-open"], visited
    assert visited[-1] == "heat-toggle", visited
    toggle = browser.switch_to.active_element
    press(Keys.ENTER)
    wait.until(lambda d: toggle.get_attribute("aria-pressed") == "true")
    assert cells[0].find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:")

    browser.execute_script("document.getElementById('drop').focus()")
    press(Keys.ENTER)
    press(Keys.SPACE)
    assert browser.execute_script("return window.chooserOpened") == 2
