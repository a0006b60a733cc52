"""Screenshots of the viewer in headless Chromium (the browser test and the README's docs/viewer.png).

    python -m viewer.screenshot exp/demo/esg --out docs/viewer.png --mode prediction [--query chair] [key value ...]

Starts the viewer in this process, opens it in Debian's Chromium through Selenium and chromedriver (packages
``chromium`` and ``chromium-driver``; ``.ci/run`` installs them), waits until the point cloud is on the
canvas and saves the page. Headless Chromium without a GPU draws WebGL with SwiftShader; the flags below keep
it from reaching for the network (closed here) and for a GPU.
"""
import argparse
import io
import os
import shutil
import tempfile
import time

import numpy as np

CHROMIUM_FLAGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--use-angle=swiftshader',
                  '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-extensions',
                  '--disable-dev-shm-usage', '--hide-scrollbars', '--mute-audio', '--force-device-scale-factor=1')


def find_browser():
    """(chromium, chromedriver) paths; a clear error when either is missing."""
    chromium = next((p for p in (shutil.which('chromium'), shutil.which('chromium-browser'), '/usr/bin/chromium')
                     if p and os.path.isfile(p)), None)
    driver = next((p for p in (shutil.which('chromedriver'), '/usr/bin/chromedriver') if p and os.path.isfile(p)), None)
    if chromium is None or driver is None:
        raise RuntimeError(f"headless Chromium is needed (found chromium: {chromium}, chromedriver: {driver}); on "
                           f"Debian / Ubuntu: apt-get install -y chromium chromium-driver")
    return chromium, driver


class Browser:
    """A headless Chromium driven by Selenium, with a fresh profile folder removed on close."""

    def __init__(self, width=1400, height=900):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        chromium, driver = find_browser()
        self.profile = tempfile.mkdtemp(prefix='viewer-chromium-')
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS + (f'--user-data-dir={self.profile}', f'--window-size={width},{height}'):
            options.add_argument(flag)
        # the driver path is given, so Selenium Manager (which would download one) is never asked
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.set_page_load_timeout(60)

    def open(self, url, timeout=60):
        from selenium.webdriver.common.by import By
        self.driver.get(url)
        deadline = time.time() + timeout
        while time.time() < deadline:
            canvases = self.driver.find_elements(By.TAG_NAME, 'canvas')
            if canvases and canvases[0].size['width'] > 0:
                return
            time.sleep(0.5)
        raise TimeoutError(f'no canvas appeared at {url} within {timeout} s')

    def dismiss_notifications(self):
        """Close the client's toasts (e.g. 'Software WebGL rendering detected', which SwiftShader triggers)."""
        self.driver.execute_script(
            "document.querySelectorAll('.mantine-Notification-close, [class*=Notification-close]')"
            ".forEach(function (b) { b.click(); });")

    def query_box(self):
        """The text input of the viewer's 'query' field: the last visible text input above the 'run query' button
        (viser's labels are not bound to their inputs, so position is what identifies it)."""
        from selenium.webdriver.common.by import By
        top = self.button('run query').rect['y']
        inputs = [el for el in self.driver.find_elements(By.TAG_NAME, 'input')
                  if el.get_attribute('type') == 'text' and el.rect['width'] > 0 and el.rect['y'] < top]
        return max(inputs, key=lambda el: el.rect['y'])

    def button(self, text):
        from selenium.webdriver.common.by import By
        return next(el for el in self.driver.find_elements(By.TAG_NAME, 'button') if el.text.strip() == text)

    def canvas_rect(self):
        """(x, y, width, height) of the largest canvas: the 3D view."""
        from selenium.webdriver.common.by import By
        canvases = self.driver.find_elements(By.TAG_NAME, 'canvas')
        rect = max((c.rect for c in canvases), key=lambda r: r['width'] * r['height'])
        return int(rect['x']), int(rect['y']), int(rect['width']), int(rect['height'])

    def screenshot(self):
        """The page as uint8 [H, W, 3]."""
        from PIL import Image
        png = self.driver.get_screenshot_as_png()
        return np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def wait_until_stable(browser, timeout=90, settle=0.5, min_changed=0, reference=None):
    """Screenshots until two in a row are equal (the client has drawn everything it got) and, with
    ``reference``, at least ``min_changed`` pixels differ from it; returns the last screenshot."""
    deadline = time.time() + timeout
    last = browser.screenshot()
    while time.time() < deadline:
        time.sleep(settle)
        shot = browser.screenshot()
        stable = shot.shape == last.shape and np.array_equal(shot, last)
        changed = reference is None or (shot.shape == reference.shape and
                                        int((np.abs(shot.astype(int) - reference).sum(2) > 0).sum()) >= min_changed)
        if stable and changed:
            return shot
        last = shot
    raise TimeoutError(f'the viewer page did not settle within {timeout} s')


def save_png(image, path):
    from PIL import Image

    from util.io import atomic_path
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format='png')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('folder')
    parser.add_argument('--out', default='docs/viewer.png')
    parser.add_argument('--mode', default='prediction', help='colour mode shown (prediction, errors, RGB, ...)')
    parser.add_argument('--query', default='', help='run this query first (the mode becomes "query")')
    parser.add_argument('--scene', default='', help='scene shown (default: the first)')
    parser.add_argument('--port', type=int, default=8097)
    parser.add_argument('--width', type=int, default=1400)
    parser.add_argument('--height', type=int, default=900)
    args, opts = parser.parse_known_args(argv)  # the rest: `key value` overrides of the config
    from viewer.__main__ import start
    app = start([args.folder, '--port', str(args.port)] + opts)
    browser = None
    try:
        if args.scene:
            app.show_scene(args.scene)
        app.mode_box.value = args.mode
        app.recolor()
        if args.query:
            app.run_query(args.query)
        browser = Browser(args.width, args.height)
        browser.open(app.url)
        wait_until_stable(browser)
        browser.dismiss_notifications()
        shot = wait_until_stable(browser)
        save_png(shot, args.out)
        print(f"saved '{args.out}' ({shot.shape[1]}x{shot.shape[0]})")
    finally:
        if browser is not None:
            browser.close()
        app.stop()


if __name__ == '__main__':
    main()
