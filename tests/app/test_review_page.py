"""The review page (/ui) in a real browser: Debian's Chromium, driven through its chromedriver
by Selenium, against `python -m app` serving the committed models with an API key.

Uploads 64 committed images (60 real C-NMC cells, 4 out-of-distribution photos), waits for the
gallery and checks it against the API's own answer: order, labels, the summary's counts and
Wilson interval, the OOD section with reasons, a heatmap shown, and the message for a wrong key.
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

    blasts = sum(r["label"] == "all" for r in in_dist)
    assert browser.find_element(By.ID, "s-all").text == str(blasts)
    assert browser.find_element(By.ID, "s-ood").text == str(len(ood))
    low, high = _wilson(blasts, len(in_dist))
    fraction = browser.find_element(By.ID, "s-fraction").text
    assert f"{100 * blasts / len(in_dist):.1f}%" in fraction
    assert f"{100 * low:.1f}% to {100 * high:.1f}%" in fraction
    model_text = browser.find_element(By.ID, "s-model").text
    assert "cnmc-improved-cnn version 3" in model_text and "digest sha256:" in model_text

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
