"""The playground page (`GET /`) in headless Chromium against `audioldm-trt serve` on the tiny model: real Ray
Serve, real HTTP, a real browser. One server (with an API key) and one browser for the module.

Needs Debian's ``chromium`` and ``chromium-driver``; without them the tests fail saying so. With
``PLAYGROUND_SCREENSHOT=FILE`` the generation test saves the page there (``docs/playground.png`` is made so).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from audioldm_trt.engine.schedulers import SCHEDULERS

from conftest import ModelUnderTest
from test_serve import Server, decoded, until

KEY = "playground-test-key"
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}
#: Without these, Chromium stalls on this project's closed network (updates, sync, QUIC).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",  # play() without a click
    "--window-size=1000,1300",
)
#: The page's session storage entry for the key (playground.js's KEY_STORAGE).
KEY_STORAGE = "audioldm-trt-api-key"
#: Seconds the browser may take for what the page does (a generation of the tiny model takes about one).
PAGE_TIMEOUT = 60


@pytest.fixture(scope="module")
def server(tiny: ModelUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with an API key that holds two requests at once (a 429 is easy to provoke)."""
    directory = tmp_path_factory.mktemp("playground")
    (directory / "api-key").write_text(KEY + "\n")
    server = Server(
        directory / "server.log",
        *("--engine", str(tiny.export), "--api-key-file", str(directory / "api-key")),
        *("--max-batch", "2", "--max-queue", "0", "--max-duration", "6", "--max-steps", "1000"),
    )
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()
    assert server.process.returncode == 0, server.output()[-3000:]


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser saves what the page's download links give."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, driven by Debian's chromedriver (nothing downloaded)."""
    paths = {name: shutil.which(name) for name in ("chromium", "chromedriver")}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        pytest.fail(
            f"the playground tests drive Debian's chromium with chromium-driver; not found: {', '.join(missing)}."
            " Install them: apt-get install -y chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(paths["chromium"])
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(options=options, service=Service(str(paths["chromedriver"])))
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(browser: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = PAGE_TIMEOUT) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def open_page(browser: WebDriver, server: Server, key: str | None = KEY) -> None:
    """The page fresh, with the key the user gave in this tab (or none), once its form is ready or asks for it."""
    browser.get(server.url)
    browser.execute_script("sessionStorage.clear()")
    if key is not None:
        browser.execute_script("sessionStorage.setItem(arguments[0], arguments[1])", KEY_STORAGE, key)
    browser.refresh()
    wait_until(browser, lambda b: field(b, "prompt").is_enabled() or field(b, "key-form").is_displayed())


def field(browser: WebDriver, identifier: str) -> WebElement:
    return browser.find_element(By.ID, identifier)


def fill(browser: WebDriver, values: dict[str, str]) -> None:
    for name, value in values.items():
        element = field(browser, name)
        element.clear()
        element.send_keys(value)


def error_beside(browser: WebDriver, name: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f'[data-error-for="{name}"]').text


def test_the_page_and_its_files_are_served_open_and_self_contained(server: Server) -> None:
    page = server.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert b'name="viewport"' in page.body
    links = re.findall(r'(?:src|href)="([^"]*)"', page.body.decode())
    assert links == ["playground.css", "playground.js", "docs"]  # nothing from elsewhere
    for path, media in (("/playground.js", "text/javascript"), ("/playground.css", "text/css")):
        answer = server.get(path)
        assert answer.status == 200 and answer.headers["content-type"].startswith(media)
    # The page is open; what it asks the API for needs the key.
    assert server.get("/v1/info").status == 401
    info = server.get("/v1/info", AUTHORIZED).json()
    assert info["schedulers"] == sorted(SCHEDULERS)
    assert info["limits"] == {"max_steps": 1000, "max_duration": 6.0, "max_waveforms": 2}
    assert info["defaults"]["steps"] == 10 and info["defaults"]["guidance"] == 2.5


def test_the_page_asks_for_the_key_and_keeps_it_in_the_tab_only(server: Server, browser: WebDriver) -> None:
    open_page(browser, server, key=None)
    assert field(browser, "key-form").is_displayed() and not field(browser, "prompt").is_enabled()
    fill(browser, {"key": "wrong"})
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_until(browser, lambda b: field(b, "key-error").text)
    assert field(browser, "key-error").text == "missing or wrong Authorization: Bearer key"
    assert not field(browser, "prompt").is_enabled()
    fill(browser, {"key": KEY})
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_until(browser, lambda b: field(b, "prompt").is_enabled())
    assert not field(browser, "key-form").is_displayed()
    # The form offers the server's schedulers and limits.
    options = [option.get_attribute("value") for option in Select(field(browser, "scheduler")).options]
    assert options == ["", *sorted(SCHEDULERS)]
    assert field(browser, "steps").get_attribute("max") == "1000"
    assert field(browser, "duration").get_attribute("max") == "6"
    assert field(browser, "steps").get_attribute("value") == "10"
    stored = browser.execute_script("return [sessionStorage.getItem(arguments[0]), localStorage.length]", KEY_STORAGE)
    assert stored == [KEY, 0] and browser.get_cookies() == []


def test_a_generation_moves_the_progress_bar_then_plays_what_the_api_serves(
    server: Server, browser: WebDriver, downloads: Path
) -> None:
    """Heun, 30 steps: 59 UNet calls, each a progress event; two waveforms of 1.5 s; a seed beyond 2**63
    (a JavaScript number would round it)."""
    seed = "12345678901234567890"
    open_page(browser, server)
    fill(browser, {"prompt": "rain on a tin roof", "negative_prompt": "wind", "duration": "1.5", "steps": "30"})
    fill(browser, {"guidance": "3", "waveforms": "2"})
    Select(field(browser, "scheduler")).select_by_value("HeunDiscreteScheduler")
    field(browser, "random-seed").click()
    fill(browser, {"seed": seed})
    # Every value the bar takes, as the page sets it.
    browser.execute_script(
        """const bar = document.getElementById("progress");
        window.barValues = [bar.getAttribute("value")];
        new MutationObserver((records) => {
          for (const record of records) window.barValues.push(record.target.getAttribute("value"));
        }).observe(bar, {attributes: true, attributeFilter: ["value"]});"""
    )
    field(browser, "generate").click()
    wait_until(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".generation audio")) == 2)

    values = [int(v) for v in browser.execute_script("return window.barValues")]
    moves = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
    assert moves == list(range(60)), values
    assert field(browser, "progress").get_attribute("max") == "59"
    assert field(browser, "progress-text").text.startswith("done in")

    generation = browser.find_element(By.CSS_SELECTOR, ".generation")
    assert generation.find_element(By.CSS_SELECTOR, ".prompt").text == "rain on a tin roof"
    assert generation.find_element(By.CSS_SELECTOR, ".seed").text.startswith(f"seed {seed} ")
    timings = generation.find_element(By.CSS_SELECTOR, ".timings").text
    assert all(stage in timings for stage in ("queue", "UNet", "VAE decoder", "vocoder", "total"))

    players = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const audios = [...document.querySelectorAll(".generation audio")];
        Promise.all(audios.map(async (audio) => {
          await audio.play();
          await new Promise((resolve) => setTimeout(resolve, 300));
          audio.pause();
          return {duration: audio.duration, played: audio.currentTime, error: audio.error};
        })).then(done, (error) => done(String(error)));"""
    )
    assert isinstance(players, list), players
    for player in players:
        assert player["error"] is None and player["duration"] == pytest.approx(1.5, abs=1e-3)
        assert 0 < player["played"] < 1.5

    # The downloads hold what the API answers for the same body.
    links = generation.find_elements(By.CSS_SELECTOR, "a.download")
    names = [str(link.get_attribute("download")) for link in links]
    assert names == [f"audioldm-{seed}-1.wav", f"audioldm-{seed}-2.wav"]
    for link in links:
        link.click()
    wait_until(browser, lambda _: all((downloads / name).is_file() for name in names))
    body = {"prompt": "rain on a tin roof", "negative_prompt": "wind", "duration": 1.5, "steps": 30}
    body |= {"guidance": 3, "waveforms": 2, "scheduler": "HeunDiscreteScheduler", "seed": int(seed)}
    served = server.post(body, AUTHORIZED).json()["audio"]
    for name, api_file in zip(names, served, strict=True):
        assert np.array_equal(decoded((downloads / name).read_bytes()), decoded(base64.b64decode(api_file)))

    # A spectrogram per waveform: a column per 128 samples, drawn in more than a few colours.
    spectrograms = browser.execute_script(
        """return [...document.querySelectorAll(".generation canvas")].map((canvas) => {
          const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          const colours = new Set();
          for (let i = 0; i < pixels.length; i += 4) colours.add(pixels[i] << 16 | pixels[i + 1] << 8 | pixels[i + 2]);
          return [canvas.width, canvas.height, colours.size];
        });"""
    )
    assert len(spectrograms) == 2
    for width, height, colours in spectrograms:
        assert (width, height) == ((24000 - 512) // 128 + 1, 256) and colours > 100

    screenshot = os.environ.get("PLAYGROUND_SCREENSHOT")
    if screenshot:
        browser.find_element(By.TAG_NAME, "body").screenshot(screenshot)


def test_an_out_of_range_field_shows_the_api_message_beside_it(server: Server, browser: WebDriver) -> None:
    open_page(browser, server)
    fill(browser, {"steps": "1001", "duration": "1"})
    field(browser, "generate").click()
    wait_until(browser, lambda b: error_beside(b, "steps"))
    assert error_beside(browser, "steps") == "steps: 1001 is above this server's limit of 1000"
    fill(browser, {"steps": "2", "duration": "6.5"})
    field(browser, "generate").click()
    wait_until(browser, lambda b: error_beside(b, "duration"))
    assert error_beside(browser, "duration") == "duration: 6.5 s is above this server's limit of 6 s"
    assert error_beside(browser, "steps") == "" and field(browser, "form-error").text == ""
    assert browser.find_elements(By.CSS_SELECTOR, ".generation") == []


def test_a_full_queue_shows_the_429_and_when_to_retry(server: Server, browser: WebDriver) -> None:
    """Two long streamed requests fill the server; the page's request is refused; they leave when closed."""
    open_page(browser, server)
    holders = [hold_a_slot(server) for _ in range(2)]
    try:
        fill(browser, {"steps": "2", "duration": "1"})
        field(browser, "generate").click()
        wait_until(browser, lambda b: field(b, "form-error").text)
        message = field(browser, "form-error").text
        assert message.startswith("the queue is full (2 requests); retry in ") and message.endswith(" s"), message
        assert browser.find_elements(By.CSS_SELECTOR, ".generation") == []
    finally:
        for holder in holders:
            holder.close()
    assert server.wait_metric("audioldm_replica_requests", lambda held: held == 0) == 0


def hold_a_slot(server: Server) -> socket.socket:
    """A streamed request seconds long, once admitted (its answer's headers come when the replica has taken it)."""
    long_one = {"prompt": "a long one", "duration": 6, "steps": 900}
    connection = server.open_stream(long_one, {"Authorization": f"Bearer {KEY}"})
    headers = until(connection, b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 200 "), headers
    return connection


@pytest.mark.parametrize(("width", "height"), [(390, 844), (320, 568)], ids=["phone", "small-phone"])
def test_the_page_fits_a_phone_screen(server: Server, browser: WebDriver, width: int, height: int) -> None:
    browser.set_window_size(width, height)
    try:
        open_page(browser, server)
        inner = browser.execute_script("return innerWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= inner
        for name in ("prompt", "duration", "steps", "guidance", "scheduler", "seed", "waveforms", "generate"):
            box = field(browser, name).rect
            assert box["x"] >= 0 and box["x"] + box["width"] <= inner, name
    finally:
        browser.set_window_size(1000, 1300)
