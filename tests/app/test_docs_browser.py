"""/docs in a real browser: Debian's Chromium renders the OpenAPI page of the running service.

Checks what an assets-answer-200 test cannot: that the vendored Swagger UI reads the
OpenAPI 3.1 document FastAPI emits, with API keys on, and that a call made from the page
with the Authorize button's key succeeds. Needs `chromium` and `chromium-driver` (Debian
packages, installed by .ci/run); skipped without them. Selenium is given the driver's path,
so Selenium Manager never runs (it would download a driver).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.live_service import HAS_CHROMIUM, chromium_driver, running_service

API_KEY = "docs-test-key"
# Generous: a busy 2-core machine, a 1.7 MB bundle parsed by Chromium.
DEADLINE_S = 120

pytestmark = pytest.mark.skipif(
    not HAS_CHROMIUM,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


@pytest.fixture
def service_url(tiny_store: Path) -> Iterator[str]:
    with running_service(tiny_store, LEUK_API_KEYS=API_KEY) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[object]:
    pytest.importorskip("selenium.webdriver")
    with chromium_driver("1280,2000", DEADLINE_S) as driver:
        yield driver


def test_docs_page_renders_and_calls_the_api_with_a_key(
    service_url: str, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    wait = WebDriverWait(browser, DEADLINE_S)
    screenshot = tmp_path / "docs.png"
    try:
        browser.get(f"{service_url}/docs")
        # One operation block per endpoint, once Swagger UI has parsed /openapi.json.
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "Unable to render" not in body
        assert "does not specify a valid version" not in body
        paths = {
            element.get_attribute("data-path")
            for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        }
        assert {"/v1/classify", "/model-info", "/v1/models/{name}/versions/{version}"} <= paths
        assert "C-NMC leukaemia cell classifier" in body
        assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")

        # Authorize with the key, then "Try it out" on GET /model-info from the page.
        browser.execute_script(f"ui.preauthorizeApiKey('ApiKeyHeader', '{API_KEY}')")
        # Swagger UI's id for an operation: operations-<tag>-<operationId>.
        operation_id = "operations-models-default_model_info_model_info_get"
        operation = browser.find_element(By.ID, operation_id)
        operation.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
        wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
        operation.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
        wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, ".execute"))
        operation.find_element(By.CSS_SELECTOR, ".execute").click()
        live = (By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status")
        wait.until(lambda _: operation.find_elements(*live))
        assert operation.find_element(*live).text.strip() == "200"
        responses = operation.find_element(By.CSS_SELECTOR, ".live-responses-table").text
        assert '"name": "tiny"' in responses
    finally:
        browser.save_screenshot(str(screenshot))
    severe = [
        entry["message"]
        for entry in browser.get_log("browser")  # type: ignore[no-untyped-call]
        if entry["level"] == "SEVERE"
    ]
    assert not severe, severe
    assert screenshot.stat().st_size > 10_000
