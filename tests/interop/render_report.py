"""Opens a chatetl HTML report in headless Chromium (Selenium + Debian's chromedriver) and prints
what the rendered page shows, as JSON: the visible text, the number of SVG bars per chart, and
every URL the page asked the network for (there must be none).

Usage: render_report.py REPORT_HTML
"""

import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main():
    path = os.path.abspath(sys.argv[1])
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHATETL_TEST_CHROMIUM", "/usr/bin/chromium")
    for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run",
              "--window-size=1000,1600"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(os.environ.get("CHATETL_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        driver.get("file://" + path)
        text = driver.find_element(By.TAG_NAME, "body").text
        bars = {
            chart: len(driver.find_elements(By.CSS_SELECTOR, f"svg#{chart} rect"))
            for chart in ["top-senders", "hourly", "rooms"]
        }
        requests = []
        for entry in driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                url = msg["params"]["request"]["url"]
                if not url.startswith("file://"):
                    requests.append(url)
        width = driver.execute_script(
            "return document.querySelector('svg#top-senders').getBoundingClientRect().width"
        )
        print(json.dumps({"text": text, "bars": bars, "requests": requests, "svg_width": width}))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
