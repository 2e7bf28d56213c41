"""The gateway's live dashboard in a real browser (Debian's headless Chromium, driven by
Selenium): against the real cluster, with a job in progress, the page shows the workers and the
job, and the job's progress moves as the server-sent snapshots arrive."""
import os
import shutil
import threading
import time

import pytest


def wait_for(predicate, timeout, what):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except StaleElementReferenceException:
            value = None  # the page redrew the element between finding it and reading it: ask again
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "the dashboard test needs Debian's chromium and chromium-driver"
    options = Options()
    options.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(a)
    d = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield d
    d.quit()


def test_the_dashboard_shows_workers_and_a_job_making_progress(cluster, client, browser):
    from selenium.webdriver.common.by import By

    # The local admin's token: an admin sees every user's jobs.
    token = cluster.create_token("local")
    base = cluster.tap_url[: -len("/tap")]

    def slow(df):
        import time
        time.sleep(0.8)
        return len(df)

    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(sizes=client.catalog("object").map_partitions(slow, columns=["objectId"])))
    job.start()
    try:
        browser.get(f"{base}/?token={token}")
        workers = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr[data-worker]"), 20, "the workers")
        assert len(workers) == cluster.workers
        assert browser.find_element(By.ID, "state").text == "live"
        row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-state=running]"), 20, "the running job")[0]
        job_id = row.get_attribute("data-job")
        total = int(row.get_attribute("data-total"))
        assert total > 4

        def done():
            rows = browser.find_elements(By.CSS_SELECTOR, f"#jobs tbody tr[data-job='{job_id}']")
            return int(rows[0].get_attribute("data-done")) if rows else None

        first = wait_for(lambda: (done(),) if done() is not None else None, 10, f"job {job_id}'s row")[0]
        wait_for(lambda: (done() or 0) > first, 20, f"job {job_id}'s progress to move past {first}/{total}")
        top = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, f"#jobs tbody tr[data-job='{job_id}'] progress").get_attribute("max"), 10, "the progress bar")
        assert int(top) == total
        # The datasets and their coverage maps.
        names = {r.get_attribute("data-dataset") for r in browser.find_elements(By.CSS_SELECTOR, "#datasets tbody tr")}
        assert {"object", "object_coarse"} <= names
        assert browser.find_elements(By.CSS_SELECTOR, "canvas[data-coverage='object']")
        shot = os.environ.get("TESSERA_DASHBOARD_SCREENSHOT")
        if shot:
            browser.save_screenshot(shot)
    finally:
        job.join(timeout=120)
    assert sum(outcome["sizes"]) == 60_000
    # The job ends, and the page says so.
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"#jobs tbody tr[data-job='{job_id}'][data-state=done]"), 20, "the job to show as done")
