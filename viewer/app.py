"""The browser viewer (viser): a scene's points coloured by RGB / GT / prediction / errors / a query's heat map.

viser serves a prebuilt web client (three.js) from its pip wheel and talks to it over a websocket; the
Python side here keeps the scenes (``viewer.data.ViewerData``) and answers the GUI's events: scene selector,
colour mode, a text box whose query is scored against the loaded embeddings, point size. The legend is an
HTML block of swatches, one per colour on screen. Every request passes the Host, Origin and token checks of
``viewer.security`` before viser answers it.
"""
import html
import secrets
import threading

import numpy as np

from pipeline import visualize as vis

MODES = ('prediction', 'ground truth', 'errors', 'RGB', 'query')


def _swatches(entries, title=''):
    rows = ''.join(
        f'<div style="display:flex;align-items:center;margin:1px 0">'
        f'<span style="display:inline-block;width:16px;height:16px;margin-right:6px;border:1px solid #555;'
        f'background:rgb({r},{g},{b})"></span><span>{html.escape(name)}</span></div>'
        for name, (r, g, b) in entries)
    head = f'<div style="font-weight:600;margin-bottom:3px">{html.escape(title)}</div>' if title else ''
    return f'<div style="font-size:12px;padding:2px 8px">{head}{rows}</div>'


def _colorbar(lo, hi, label):
    import matplotlib
    stops = ','.join(f'rgb({int(255 * c[0])},{int(255 * c[1])},{int(255 * c[2])}) {int(100 * t)}%'
                     for t, c in ((t, matplotlib.colormaps['inferno'](t)) for t in np.linspace(0, 1, 6)))
    return (f'<div style="font-size:12px;padding:2px 8px"><div style="font-weight:600">{html.escape(label)}</div>'
            f'<div style="height:14px;background:linear-gradient(to right,{stops});border:1px solid #555"></div>'
            f'<div style="display:flex;justify-content:space-between"><span>{lo:.3f}</span><span>{hi:.3f}</span>'
            f'</div></div>')


class ViewerApp:
    """One viser server showing ``ViewerData``; every GUI event runs in viser's thread pool.

    ``port`` is the one asked for: viser takes the next free one when it is taken (``self.port`` is the bound one).
    ``token``: True, a random token the page and the websocket require (``self.url`` carries it); False, none
    (Host and Origin are still checked); a string, that token.
    """

    def __init__(self, data, host='127.0.0.1', port=8080, point_size=None, token=True):
        from viewer.security import RequestGuard, start_viser
        self.data = data
        self.token = secrets.token_urlsafe(32) if token is True else (token or None)
        self.guard = RequestGuard(host, token=self.token)
        self.server = start_viser(self.guard, host=host, port=port, label='3DSS-VLG viewer', verbose=False)
        self.server.scene.set_up_direction('+z')
        self.lock = threading.RLock()  # one redraw at a time (events arrive on several threads; re-entrant: setting
        # a GUI value from here may run its callback on this thread)
        self.cloud, self.result = None, None
        self.query_scores, self.query_text, self.query_note = None, '', ''
        gui = self.server.gui
        gui.add_markdown(f'**3DSS-VLG** · {html.escape(data.cfg.feature_type)} features · '
                         f'{len(data.labels)} labels · {len(data.names)} scene(s)')
        self.scene_box = gui.add_dropdown('scene', options=data.names, initial_value=data.names[0])
        self.mode_box = gui.add_dropdown('colour by', options=MODES, initial_value='prediction')
        self.query_box = gui.add_text('query', initial_value='', hint='free text, e.g. "a soft place to sit"')
        self.query_button = gui.add_button('run query')
        self.size_slider = gui.add_slider('point size (m)', min=0.002, max=0.2, step=0.002,
                                          initial_value=0.02 if point_size is None else point_size)
        self.status = gui.add_markdown('')
        self.legend = gui.add_html('')
        self._point_size_set = point_size is not None

        @self.scene_box.on_update
        def _(_event):
            if self.result is None or self.scene_box.value != self.result.name:
                self.show_scene(self.scene_box.value)

        @self.mode_box.on_update
        def _(_event):
            self.recolor()

        @self.query_button.on_click
        def _(_event):
            self.run_query(self.query_box.value)

        @self.size_slider.on_update
        def _(_event):
            if self.cloud is not None:
                self.cloud.point_size = float(self.size_slider.value)

    @property
    def port(self):
        """The port bound (the one asked for, or the next free one when it was taken)."""
        return self.server.get_port()

    @property
    def url(self):
        """The page to open, token included: http://127.0.0.1:<port>/?token=... (the --host address when it is
        one address)."""
        from viewer.security import bracketed
        host = self.server.get_host()
        host = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '[::1]'}.get(host, bracketed(host))
        return f'http://{host}:{self.port}/' + (f'?token={self.token}' if self.token else '')

    # ------------------------------------------------------------------ drawing
    def show_scene(self, name):
        with self.lock:
            self.status.content = f'computing **{html.escape(name)}** ...'
            self.cloud = None  # the old cloud's point count no longer matches
            self.result = self.data.scene(name)
            self.scene_box.value = name  # when called from Python (first scene, screenshots), not the selector
            r = self.result
            rows = r.embedding_rows
            self.points = r.coords[rows]
            if not self._point_size_set:  # 1.5 sampling steps: surfaces look closed, edges stay sharp
                self.size_slider.value = float(np.clip(1.5 * vis.point_spacing(self.points), 0.002, 0.2))
            self.query_scores, self.query_text, self.query_note = None, '', ''
            modes = [m for m in MODES if r.has_gt or m not in ('ground truth', 'errors')]
            self.mode_box.options = modes
            if self.mode_box.value not in modes:
                self.mode_box.value = 'prediction'
            self.cloud = self.server.scene.add_point_cloud(
                '/scene', points=self.points, colors=self.colors()[0], point_size=float(self.size_slider.value),
                point_shape='square', precision='float32', point_shading='flat')
            self._frame_camera()
            self._update_panel()

    def _frame_camera(self):
        lo, hi = self.points.min(0), self.points.max(0)
        centre = (lo + hi) / 2
        span = float(np.max(hi - lo))
        position = centre + np.array([0.0, -0.55 * span, 0.95 * span])  # from the front, well above the walls
        self.server.initial_camera.look_at = tuple(centre)
        self.server.initial_camera.position = tuple(position)
        for client in self.server.get_clients().values():
            client.camera.look_at = centre
            client.camera.position = position

    def colors(self):
        """(uint8 [M, 3] colours of the shown points in the current mode, legend HTML)."""
        r, mode = self.result, self.mode_box.value
        rows = r.embedding_rows
        palette = list(self.data.palette) + [vis.UNLABELED_COLOR]
        names = list(self.data.labels) + ['unlabeled (no 2D feature)']
        if mode == 'RGB':
            return r.colors[rows], _swatches([], 'the scan\'s own colours')
        if mode in ('prediction', 'ground truth'):
            labels = r.pred[rows] if mode == 'prediction' else r.gt[rows]
            present = np.unique(labels)
            entries = [(names[c], palette[c]) for c in present if 0 <= c <= len(self.data.labels)]
            if (labels == 255).any():
                entries.append(('ignored (no GT)', vis.IGNORED_COLOR))
            return vis.labels_to_colors(labels, palette), _swatches(entries, mode)
        if mode == 'errors':
            covered = None if r.covered is None else r.covered[rows]
            colors, categories = vis.error_colors(r.pred[rows], r.gt[rows], len(self.data.labels), covered)
            return colors, _swatches(categories, 'prediction against GT')
        # query
        if self.query_scores is None:
            return r.colors[rows], _swatches([], 'type a query and press "run query" (shown: RGB)')
        s = self.query_scores
        lo, hi = float(np.percentile(s, 1)), float(np.percentile(s, 99))
        legend = _colorbar(lo, hi, f'"{self.query_text}": cosine similarity') + \
            f'<div style="font-size:11px;padding:2px 8px">{self.query_note}</div>'
        return vis.heat_colors(s, lo, hi), legend

    def recolor(self):
        with self.lock:
            if self.cloud is None:
                return
            colors, _ = self.colors()
            self.cloud.colors = colors
            self._update_panel()

    def _update_panel(self):
        _, legend = self.colors()
        r = self.result
        shown = len(r.embedding_rows)
        lines = [f'**{html.escape(r.name)}**: {len(r.coords):,} points'
                 + (f' ({shown:,} shown)' if shown < len(r.coords) else '')]
        if r.covered is not None:
            lines.append(f'2D coverage {100 * r.covered.mean():.1f} %')
        if r.has_gt:
            labelled = r.gt != 255
            lines.append(f'accuracy against GT {100 * (r.pred[labelled] == r.gt[labelled]).mean():.1f} %')
        self.status.content = '  \n'.join(lines)
        self.legend.content = legend

    # ------------------------------------------------------------------ queries
    def run_query(self, text):
        text = (text or '').strip()
        if not text:
            return
        try:
            scores, source = self.data.query(self.result.name, text)
        except Exception as err:  # shown in the page: a query CLIP cannot encode here must not end the server
            self.legend.content = _swatches([], f'query failed: {err}')
            return
        from pipeline import query as q
        note = f'embedding: {html.escape(source)}'
        class_id = q.class_index(self.data.info, text)
        if self.result.has_gt and class_id is not None:
            stats = q.score_stats(scores, self.data.cfg.score_threshold, gt=self.result.gt[self.result.embedding_rows],
                                  class_id=class_id)
            if 'top_precision' in stats:
                note += (f'<br>top 10 % points: {100 * stats["top_precision"]:.0f} % are {html.escape(text)} '
                         f'(class frequency {100 * stats["class_frequency"]:.0f} %)')
        with self.lock:
            self.query_scores, self.query_text, self.query_note = scores, text, note
            if self.query_box.value != text:  # a query run from Python shows in the text box too
                self.query_box.value = text
        self.mode_box.value = 'query'
        self.recolor()

    def stop(self):
        self.server.stop()
