"""A real headless chromium (Debian's chromium + chromium-driver, driven by Selenium) uses the service's UI: uploads
images, waits for the result cards, toggles a heatmap, opens the worklist, reviews a case; saves the screenshots
(in the test's temporary folder; in docs/ with MELANOMA_SCREENSHOTS=docs, which refreshes the documentation's, so a
plain test run leaves the working tree clean). Skipped (with the reason) without chromium; FAILS on CI (CI=true),
where .ci/run installs it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from melanoma.serve.testing import ServerProcess, copy_model

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _screenshot_dir(tmp_path: Path) -> Path:
    return DOCS if os.environ.get("MELANOMA_SCREENSHOTS") == "docs" else tmp_path


def _driver(width: int, height: int):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        reason = f"{CHROMIUM} / {CHROMEDRIVER} not installed (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; .ci/run must install them", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # never selenium-manager: no downloads
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-GB"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    folder = copy_model(base / "serve" / "default")  # its ONNX export is shared with test_serve_onnx
    tmp = tmp_path_factory.mktemp("browser")
    with ServerProcess("--model", str(folder), "--db", f"sqlite:///{tmp / 'audit.sqlite'}", "--keep-images",
                       str(tmp / "kept"), "--state-dir", str(base / "serve-state"), log=tmp / "server.log") as s:
        s.db_url = f"sqlite:///{tmp / 'audit.sqlite'}"  # tests that need many records write them directly
        yield s


def _wait(driver, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def test_upload_result_cards_worklist_and_review(server, shared_train, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    images = [sorted((shared_train / c).glob("*.jpg"))[1] for c in ("melanoma", "nevus", "basal cell carcinoma")]
    driver = _driver(1366, 1500)
    try:
        driver.get(server.url + "/")
        _wait(driver, ec.presence_of_element_located((By.ID, "files")))
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in images))
        driver.find_element(By.ID, "case-ref").send_keys("CASE-2026-0142")
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 3)
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert all("not a diagnosis" in c.text for c in cards)
        assert any("MELANOMA ALERT" in c.text.upper() for c in cards)
        assert "melanoma probability" in cards[0].text
        toggle = cards[0].find_element(By.CSS_SELECTOR, "button[aria-pressed]")
        toggle.click()  # Grad-CAM (the server loads the PyTorch model for the first explanation)
        _wait(driver, lambda d: toggle.get_attribute("aria-pressed") == "true", timeout=180)
        assert "Grad-CAM" in cards[0].text
        shots = _screenshot_dir(tmp_path)
        driver.save_screenshot(str(shots / "screenshot-result.png"))

        driver.get(server.url + "/#/worklist")
        _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "tbody tr")))
        rows = driver.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == 3 and "MELANOMA ALERT" in rows[0].text.upper()
        driver.save_screenshot(str(shots / "screenshot-worklist.png"))

        rows[0].find_element(By.CSS_SELECTOR, "a").click()  # open the top case, review it by keyboard-usable buttons
        _wait(driver, ec.presence_of_element_located((By.ID, "final-diagnosis")))
        driver.find_element(By.CSS_SELECTOR, "button[data-value=agree]").click()
        driver.find_element(By.CSS_SELECTOR, "#final-diagnosis option[value=melanoma]").click()
        driver.find_element(By.CSS_SELECTOR, "form[aria-label=Review] button[type=submit]").click()
        _wait(driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "form[aria-label=Review] .status"),
                                                       "Review saved"))
        reviewed = httpx.get(server.url + "/v1/audit", params={"reviewed": "true"}).json()["records"]
        assert [r["review"]["final_diagnosis"] for r in reviewed] == ["melanoma"]
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


@pytest.mark.parametrize("width", [1280, 820])
def test_pages_fit_laptop_and_tablet_widths(server, width):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = _driver(width, 1000)
    try:
        for page, marker in (("upload", "#files"), ("worklist", ".table-wrap"), ("calibration", "#target")):
            driver.get(f"{server.url}/#/{page}")
            _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, marker)))
            overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{page} scrolls sideways at {width} px"
            nav = driver.find_elements(By.CSS_SELECTOR, "nav a")
            assert [a.text for a in nav] == ["Upload", "Worklist", "Site calibration"]
    finally:
        driver.quit()


def test_calibration_page_shows_the_site_monitor(server):
    """The site monitor (GET /v1/monitor) heads the calibration page: its status badge and, with few images
    predicted yet, how many it needs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = _driver(1280, 1000)
    try:
        driver.get(f"{server.url}/#/calibration")
        badge = _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "#monitor h2 .badge")))
        assert badge.text.lower() in ("too few", "ok", "check", "unknown")
        assert "no diagnoses needed" in driver.find_element(By.CSS_SELECTOR, "#monitor h2").text
        if badge.text.lower() == "too few":
            assert "the monitor speaks from 50" in driver.find_element(By.CSS_SELECTOR, "#monitor").text
    finally:
        driver.quit()


def test_an_alert_on_most_lesions_is_flagged_and_an_adapted_copy_written(server, tmp_path):
    """With 80 audit records of the served model, 70% alerted, the monitor says CHECK with its finding, shows the
    threshold adapted at the stated prevalence, and writes the adapted copy only after the confirmation box."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from melanoma.serve.db import PredictionRecord, make_engine, session_factory

    card = httpx.get(f"{server.url}/v1/model", timeout=60).json()
    engine = make_engine(server.db_url)
    with session_factory(engine)() as session:
        session.add_all([PredictionRecord(
            image_sha256="0" * 64, model_name="m", model_version="v", model_sha256=card["sha256"], backend="onnx",
            probabilities={}, prediction="nevus", confidence=0.9, melanoma_probability=0.3 + i / 200,
            alert_threshold=card["alert_threshold"], alert=i % 10 < 7, refer=False) for i in range(80)])
        session.commit()
    engine.dispose()
    driver = _driver(1280, 1000)
    try:
        driver.get(f"{server.url}/#/calibration")
        _wait(driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#monitor h2 .badge"), "CHECK"))
        monitor = driver.find_element(By.CSS_SELECTOR, "#monitor")
        assert "most alerts carry no information" in monitor.text
        assert "Threshold adapted to this site, without diagnoses" in monitor.text
        button = driver.find_element(By.XPATH, "//button[text()='Write adapted copy']")
        assert not button.is_enabled()
        driver.find_element(By.ID, "confirm-share").click()
        button.click()
        _wait(driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#monitor"), "Adapted copy written to"))
        driver.save_screenshot(str(_screenshot_dir(tmp_path) / "screenshot-monitor.png"))
    finally:
        driver.quit()


def test_api_docs_render_without_internet(server):
    """Swagger UI draws the API from the service's own copy of its scripts (no machine here reaches a CDN)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = _driver(1280, 1000)
    try:
        driver.get(server.url + "/docs")
        title = _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")), 60)
        assert "melanoma clinic service" in title.text
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path[data-path='/v1/predict']"))
    finally:
        driver.quit()


def test_a_low_resolution_upload_shows_its_image_quality_warning(server, shared_train, tmp_path):
    """The API's `warning` reaches the clinician: a real image reduced below the model's training detail shows an
    "Image quality" note on its result card and on its case page; the original image shows none."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    original = sorted((shared_train / "nevus").glob("*.jpg"))[2]
    small = tmp_path / "small.png"
    Image.open(original).convert("RGB").resize((100, 100), Image.BICUBIC).save(small)
    driver = _driver(1366, 1200)
    try:
        driver.get(server.url + "/")
        _wait(driver, ec.presence_of_element_located((By.ID, "files")))
        driver.find_element(By.ID, "files").send_keys(f"{original}\n{small}")
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 2)
        sharp_card, small_card = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert not sharp_card.find_elements(By.CSS_SELECTOR, ".quality")
        note = small_card.find_element(By.CSS_SELECTOR, ".quality")
        assert "Image quality" in note.text and "shorter side 100 px" in note.text
        small_card.find_element(By.PARTIAL_LINK_TEXT, "Open case").click()
        case_note = _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, ".panel .quality")))
        assert "less detail than the training images" in case_note.text
    finally:
        driver.quit()


def test_a_heic_upload_is_analysed_and_never_shown_as_a_broken_image(server, shared_train, tmp_path):
    """A phone's HEIC photo gets its result card; where the browser cannot draw HEIC (Chromium) the card says so
    instead of a broken picture, the heatmap (a PNG from the server) still shows, and so does the case page."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    import melanoma.images  # noqa: F401 - registers HEIF with Pillow
    heic = tmp_path / "IMG_0042.HEIC"
    Image.open(sorted((shared_train / "melanoma").glob("*.jpg"))[3]).convert("RGB").save(heic, format="HEIF")
    shown = "return arguments[0].complete && arguments[0].naturalWidth > 0 && !arguments[0].hidden"
    driver = _driver(1366, 1200)
    try:
        driver.get(server.url + "/")
        _wait(driver, ec.presence_of_element_located((By.ID, "files")))
        driver.find_element(By.ID, "files").send_keys(str(heic))
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        card = _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, ".card")))
        assert "Most likely" in card.text and "IMG_0042.HEIC" in card.text
        img = card.find_element(By.CSS_SELECTOR, ".media img")
        _wait(driver, lambda d: d.execute_script(shown, img) or "cannot show this image format" in card.text)
        assert _drawn_or_explained(driver, img, card.text)
        toggle = card.find_element(By.CSS_SELECTOR, "button[aria-pressed]")
        toggle.click()
        _wait(driver, lambda d: toggle.get_attribute("aria-pressed") == "true", timeout=180)
        _wait(driver, lambda d: d.execute_script(shown, img))  # the heatmap is drawn
        assert "Grad-CAM" in card.text
        card.find_element(By.PARTIAL_LINK_TEXT, "Open case").click()
        box = _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, ".image")))
        _wait(driver, lambda d: (box.find_elements(By.TAG_NAME, "img") and d.execute_script(
            shown, box.find_element(By.TAG_NAME, "img"))) or "cannot show this image format" in box.text)
    finally:
        driver.quit()


def _drawn_or_explained(driver, img, text: str) -> bool:
    """The uploaded image is either drawn, or hidden with the note saying why: never a broken picture."""
    drawn = driver.execute_script("return arguments[0].naturalWidth > 0 && !arguments[0].hidden", img)
    return drawn or (not img.is_displayed() and "cannot show this image format" in text)
