"""The browser viewer in a real browser: headless Chromium (Debian's chromium + chromium-driver) loads the page,
and the screenshots show the points, the legend's colours and, after a query typed into the page, a heat map.

The network has random weights (what is drawn, not what is learnt, is under test here; tests/test_query.py
checks the answers of a trained one). Screenshots are saved under the test's tmp folder and, when
``VIEWER_TEST_ARTIFACTS`` names a folder (.ci/run sets it), copied there. Without Chromium the test is skipped
with the install command, except under CI, where it fails.
"""
import os
import shutil
import time

import numpy as np
import pytest
from helpers import free_port, make_viewer_experiment

pytestmark = pytest.mark.slow


def require_browser():
    """Chromium and chromedriver, or a skip with the install command; under CI (CI=true, .ci/run installs them)
    a missing browser is a failure, so the browser test cannot silently not run there."""
    from viewer.screenshot import find_browser
    try:
        find_browser()
    except RuntimeError as err:
        if os.environ.get('CI'):
            raise
        pytest.skip(str(err))


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
    return make_viewer_experiment(str(tmp_path_factory.mktemp('viewer')), n_val=2, test_repeats=2)


def save_artifact(image, tmp_path, name):
    from viewer.screenshot import save_png
    path = str(tmp_path / name)
    save_png(image, path)
    target = os.environ.get('VIEWER_TEST_ARTIFACTS')
    if target:
        os.makedirs(target, exist_ok=True)
        shutil.copy(path, os.path.join(target, name))
    return path


def count_colour(image, rgb):
    return int((image.reshape(-1, 3) == np.asarray(rgb, np.uint8)).all(1).sum())


def test_viewer_draws_points_legend_and_a_live_query(experiment, tmp_path):
    from viewer.__main__ import start
    from viewer.screenshot import Browser, wait_until_stable
    require_browser()
    app = start([experiment, '--port', str(free_port())])
    browser = None
    try:
        assert app.data.names == ['scene0100_00', 'scene0101_00']
        browser = Browser(width=1200, height=800)
        browser.open(app.url)
        wait_until_stable(browser)
        browser.dismiss_notifications()
        shown = wait_until_stable(browser)
        save_artifact(shown, tmp_path, 'viewer_prediction.png')

        # the same page with the point cloud hidden: what differs is what the points drew
        app.cloud.visible = False
        hidden = wait_until_stable(browser, reference=shown, min_changed=1)
        save_artifact(hidden, tmp_path, 'viewer_hidden.png')
        x, y, w, h = browser.canvas_rect()
        changed = (shown[y:y + h, x:x + w].astype(int) != hidden[y:y + h, x:x + w]).any(2)
        assert changed.sum() > 0.005 * w * h, f'only {changed.sum()} pixels of the canvas show points'
        # flat-shaded points keep their colours: most drawn pixels are colours of the predicted classes
        r = app.result
        pred_colors = {tuple(int(v) for v in app.data.palette[c]) for c in np.unique(r.pred)}
        drawn = shown[y:y + h, x:x + w][changed]
        in_palette = np.zeros(len(drawn), bool)
        for rgb in pred_colors:
            in_palette |= (drawn == np.asarray(rgb, np.uint8)).all(1)
        assert in_palette.mean() > 0.8, f'{in_palette.mean():.2f} of the drawn pixels have a predicted class colour'
        # the legend stays without the points: each predicted class's swatch (16 x 16 px) is on the page
        for rgb in pred_colors:
            assert count_colour(hidden, rgb) >= 150, f'legend swatch {rgb} missing'
        # a class absent from the prediction has no swatch
        absent = [c for c in range(len(app.data.palette)) if c not in set(np.unique(r.pred).tolist())]
        assert count_colour(hidden, app.data.palette[absent[0]]) < 20
        app.cloud.visible = True
        shown_again = wait_until_stable(browser, reference=hidden, min_changed=1)

        # a query typed into the page's text box: the points turn into a heat map (inferno colours)
        box = browser.query_box()
        box.click()
        box.send_keys('floor')
        # the page reports the text box's value to the server asynchronously: press the button once it arrived
        deadline = time.time() + 30
        while app.query_box.value != 'floor' and time.time() < deadline:
            time.sleep(0.1)
        browser.button('run query').click()
        deadline = time.time() + 30
        while app.query_text != 'floor' and time.time() < deadline:
            time.sleep(0.2)
        assert app.query_text == 'floor' and app.mode_box.value == 'query'
        heat = wait_until_stable(browser, reference=shown_again, min_changed=1)
        save_artifact(heat, tmp_path, 'viewer_query.png')
        from pipeline.visualize import heat_colors
        expected = heat_colors(app.query_scores, np.percentile(app.query_scores, 1),
                               np.percentile(app.query_scores, 99))
        drawn = heat[y:y + h, x:x + w][changed]
        palette = np.unique(expected, axis=0)
        hits = np.zeros(len(drawn), bool)
        for rgb in palette:
            hits |= (drawn == rgb).all(1)
        assert hits.mean() > 0.5, f'{hits.mean():.2f} of the drawn pixels have heat-map colours'
        # the scores are the embeddings' cosine similarity to the class's text embedding
        emb, _ = app.data.text_embedding('floor')
        np.testing.assert_allclose(app.query_scores, r.embedding.astype(np.float32) @ emb, atol=1e-6)
    finally:
        if browser is not None:
            browser.close()
        app.stop()


def test_viewer_folder_resolution(experiment, tmp_path):
    from util.config import ConfigError
    from viewer.data import resolve_folder
    config, checkpoint = resolve_folder(experiment)
    assert config.endswith(os.path.join('result_eval', 'eval_config.yaml'))
    assert checkpoint == os.path.join(experiment, 'best.pth')
    # the result folder itself finds the checkpoint one level up
    assert resolve_folder(os.path.join(experiment, 'result_eval')) == (config, checkpoint)
    with pytest.raises(ConfigError, match='no query_config.yaml'):
        resolve_folder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        resolve_folder(str(tmp_path / 'nowhere'))
