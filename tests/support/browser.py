"""Debian's Chromium driven by Selenium, for the console's tests.

Chromium and chromedriver come from apt (``.ci/run`` installs them); when
either is missing the tests skip and say why. Every step can leave a
screenshot under the artifacts folder (``VOR_TEST_ARTIFACTS``, else the test
session's temporary folder).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1500",
    "--autoplay-policy=no-user-gesture-required",
)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="vor-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """One test's view of the browser: waits, screenshots, mouse work in frame coordinates."""

    def __init__(self, driver: Any, base_url: str, artifacts: Path, name: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.artifacts = artifacts
        self.name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
        self.step = 0

    def open(self, fragment: str = "") -> None:
        """A fresh load of the console (only the tab's sessionStorage carries over)."""
        self.driver.get("about:blank")
        self.driver.get(f"{self.base_url}/ui/{fragment}")
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete")

    def wait(self, condition: Callable[[Any], Any], timeout: float = 30, what: str = "") -> Any:
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        # The console replaces elements as jobs change; a stale one is read again.
        waiting = WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        )
        try:
            return waiting.until(condition)
        except TimeoutException:
            self.shot("timeout")
            raise AssertionError(f"timed out waiting for {what or condition}") from None

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def visible(self, selector: str, timeout: float = 30) -> Any:
        def shown(_: Any) -> Any:
            found = [e for e in self.all(selector) if e.is_displayed()]
            return found[0] if found else False

        return self.wait(shown, timeout, f"{selector} to show")

    def text_of(self, selector: str, timeout: float = 30) -> str:
        def text(_: Any) -> Any:
            found = [e.text for e in self.all(selector) if e.is_displayed() and e.text.strip()]
            return found[0] if found else False

        return str(self.wait(text, timeout, f"text in {selector}"))

    def shot(self, label: str) -> Path:
        self.step += 1
        path = self.artifacts / f"{self.name}-{self.step:02d}-{label}.png"
        self.driver.save_screenshot(str(path))
        return path

    def _offset(self, element: Any, x: float, y: float) -> tuple[int, int]:
        """Selenium's pointer offsets count from the element's centre."""
        rect = self.driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", element
        )
        return round((x - 0.5) * rect[0]), round((y - 0.5) * rect[1])

    def click_at(self, element: Any, x: float, y: float) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        dx, dy = self._offset(element, x, y)
        ActionChains(self.driver).move_to_element_with_offset(element, dx, dy).click().perform()

    def drag(self, element: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        x0, y0 = self._offset(element, *start)
        x1, y1 = self._offset(element, *end)
        chain = ActionChains(self.driver).move_to_element_with_offset(element, x0, y0)
        chain.click_and_hold().move_by_offset((x1 - x0) // 2, (y1 - y0) // 2)
        chain.move_to_element_with_offset(element, x1, y1).release().perform()

    def js_errors(self) -> list[str]:
        """Errors the page's scripts logged; refused requests are the API's to explain."""
        logs = self.driver.get_log("browser")
        return [
            entry["message"]
            for entry in logs
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
        ]
