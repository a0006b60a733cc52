"""The viewer answers only its user: Host, Origin and token checks (viewer/security.py) against a real running
viewer (``python -m viewer``'s ``start`` on a free port, a network with random weights on tiny generated rooms),
with real HTTP requests (http.client) and a real websocket client (websockets, installed with viser).

Each refusal is a 403 whose text says why; the right token with the page's own Origin opens the websocket (101)
and the scene's messages arrive on it. ``--no-token`` drops the token, not the Host and Origin checks. A taken
port moves the viewer to the next free one, and the printed URL and SSH hint name that one.
"""
import http.client
import socket

import pytest
from helpers import free_port, make_viewer_experiment

EVIL = 'http://evil.example'


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
    return make_viewer_experiment(str(tmp_path_factory.mktemp('viewer_security')), n_val=1, test_repeats=1)


@pytest.fixture(scope='module')
def app(experiment):
    """The viewer with its random token (the default)."""
    from viewer.__main__ import start
    viewer = start([experiment, '--port', str(free_port())])
    yield viewer
    viewer.stop()


@pytest.fixture(scope='module')
def open_app(experiment):
    """The viewer started with --no-token."""
    from viewer.__main__ import start
    viewer = start([experiment, '--port', str(free_port()), '--no-token'])
    yield viewer
    viewer.stop()


# ---------------------------------------------------------------------- clients
def get(port, path='/', host=None, headers=None):
    """GET ``path`` from 127.0.0.1:``port`` with that Host header (default: 127.0.0.1:port): (status, headers, body)."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    try:
        conn.putrequest('GET', path, skip_host=True)
        conn.putheader('Host', f'127.0.0.1:{port}' if host is None else host)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def ws_connect(port, query='', origin=None, cookie=None, host=None):
    """A websocket to the viewer on ``port`` as viser's client opens it (its version's subprotocol), to the URL
    ``ws://<host>/<query>`` over a TCP connection to 127.0.0.1:``port`` (``host`` is what the Host header says)."""
    import viser
    from websockets.sync.client import connect
    sock = socket.create_connection(('127.0.0.1', port), timeout=10)
    try:
        return connect(f'ws://{host or f"127.0.0.1:{port}"}/{query}', sock=sock, origin=origin, proxy=None,
                       subprotocols=[f'viser-v{viser.__version__}'], open_timeout=10,
                       additional_headers={'Cookie': cookie} if cookie else None)
    except BaseException:
        sock.close()
        raise


def ws_refusal(port, **kwargs):
    """(status, text) of the refused handshake; fails when the websocket opens."""
    from websockets.exceptions import InvalidStatus
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(port, **kwargs).close()
    response = refused.value.response
    return response.status_code, response.body.decode()


def message_types(ws, wanted, timeout=10):
    """Types of the viser messages received until one of ``wanted`` arrived (viser's wire format: sizes of the
    zstd-compressed msgpack, the msgpack, then raw buffers)."""
    import time

    import msgspec
    import zstandard
    seen, deadline = [], time.time() + timeout
    while wanted not in seen and time.time() < deadline:
        frame = ws.recv(timeout=max(0.1, deadline - time.time()))
        size, packed = int.from_bytes(frame[:8], 'little'), int.from_bytes(frame[8:16], 'little')
        inner = zstandard.ZstdDecompressor().decompress(frame[16:16 + packed], max_output_size=size)
        seen += [m['type'] for m in msgspec.msgpack.decode(inner)['messages']]
    return seen


def token_cookie(app, token=None):
    return f'viewer-token-{app.port}={token or app.token}'


# ---------------------------------------------------------------------- the page
def test_page_needs_the_token_and_sets_its_cookie(app):
    assert app.token and len(app.token) >= 32
    assert app.url == f'http://127.0.0.1:{app.port}/?token={app.token}'
    for path in ('/', '/index.html', '/?token=wrong', f'/?token={app.token[:-1]}', '/?token=%C3%A9'):
        status, _, body = get(app.port, path)
        assert status == 403, path
        assert b'without the right token' in body and b'--no-token' in body and app.token.encode() not in body
    status, headers, body = get(app.port, f'/?token={app.token}')
    assert status == 200 and b'<html' in body.lower()
    cookie = headers['Set-Cookie']
    assert cookie.startswith(f'{token_cookie(app)};') and 'HttpOnly' in cookie and 'SameSite=Strict' in cookie
    # the cookie alone opens the page; another viewer's (another port's) cookie does not
    assert get(app.port, '/', headers={'Cookie': token_cookie(app)})[0] == 200
    assert get(app.port, '/', headers={'Cookie': f'viewer-token-{app.port + 1}={app.token}'})[0] == 403
    assert get(app.port, '/', headers={'Cookie': token_cookie(app, 'wrong')})[0] == 403


def test_tokens_are_compared_in_constant_time(app, monkeypatch):
    import hmac

    from viewer import security
    calls, compare = [], hmac.compare_digest
    monkeypatch.setattr(security.hmac, 'compare_digest', lambda a, b: calls.append((a, b)) or compare(a, b))
    assert get(app.port, '/?token=wrong')[0] == 403
    assert calls == [(b'wrong', app.token.encode())]


def test_page_for_another_host_is_refused(app):
    token = f'/?token={app.token}'
    for host in ('evil.example', f'evil.example:{app.port}', f'localhost:{app.port + 1}', f'127.0.0.1:{app.port}0',
                 '127.0.0.1', f'127.0.0.1.evil.example:{app.port}', ''):
        status, _, body = get(app.port, token, host=host)
        assert status == 403, host
        assert f"Host '{host}'".encode() in body and b'DNS-rebinding' in body
        assert f'ssh -N -L {app.port}:localhost:{app.port}'.encode() in body
    for host in (f'localhost:{app.port}', f'LOCALHOST:{app.port}', f'[::1]:{app.port}'):
        assert get(app.port, token, host=host)[0] == 200, host


# ---------------------------------------------------------------------- the websocket
def test_websocket_from_another_origin_is_refused(app):
    for origin in (EVIL, f'{EVIL}:{app.port}', f'http://127.0.0.1:{app.port + 1}', 'null',
                   f'https://127.0.0.1:{app.port}'):
        status, text = ws_refusal(app.port, query=f'?token={app.token}', origin=origin, cookie=token_cookie(app))
        assert status == 403 and f"Origin '{origin}'" in text, origin


def test_websocket_for_another_host_is_refused(app):
    status, text = ws_refusal(app.port, query=f'?token={app.token}', host=f'evil.example:{app.port}',
                              origin=f'http://evil.example:{app.port}', cookie=token_cookie(app))
    assert status == 403 and f"Host 'evil.example:{app.port}'" in text
    # the page's Origin does not help a request that names another host
    status, text = ws_refusal(app.port, query=f'?token={app.token}', host='evil.example',
                              origin=f'http://127.0.0.1:{app.port}')
    assert status == 403 and "Host 'evil.example'" in text


def test_websocket_needs_the_token(app):
    origin = f'http://127.0.0.1:{app.port}'
    for kwargs in ({}, {'query': '?token=wrong'}, {'cookie': token_cookie(app, 'wrong')},
                   {'cookie': f'viewer-token-{app.port + 1}={app.token}'}):
        status, text = ws_refusal(app.port, origin=origin, **kwargs)
        assert status == 403 and 'websocket request without the right token' in text, kwargs
    status, _ = ws_refusal(app.port)  # a client without an Origin (not a browser) needs it too
    assert status == 403


@pytest.mark.parametrize('origin_host', ['127.0.0.1', 'localhost'])
def test_websocket_with_the_token_cookie_gets_the_scene(app, origin_host):
    """What the browser does: the page's Origin and the cookie the tokened page set."""
    with ws_connect(app.port, origin=f'http://{origin_host}:{app.port}', cookie=token_cookie(app)) as ws:
        assert ws.response.status_code == 101
        assert 'PointCloudMessage' in message_types(ws, 'PointCloudMessage')


def test_websocket_of_a_non_browser_client_with_the_token_in_its_url(app):
    with ws_connect(app.port, query=f'?token={app.token}') as ws:  # no Origin header
        assert ws.response.status_code == 101
        assert 'PointCloudMessage' in message_types(ws, 'PointCloudMessage')


# ---------------------------------------------------------------------- --no-token
def test_no_token_mode_keeps_the_host_and_origin_checks(open_app):
    port = open_app.port
    assert open_app.token is None and open_app.url == f'http://127.0.0.1:{port}/'
    assert get(port, '/')[0] == 200
    assert get(port, '/', host='evil.example')[0] == 403
    with ws_connect(port, origin=f'http://127.0.0.1:{port}') as ws:
        assert ws.response.status_code == 101
        assert 'PointCloudMessage' in message_types(ws, 'PointCloudMessage')
    assert ws_refusal(port, origin=EVIL)[0] == 403
    assert ws_refusal(port, host=f'evil.example:{port}', origin=f'http://evil.example:{port}')[0] == 403


# ---------------------------------------------------------------------- start-up
def test_a_taken_port_moves_the_viewer_and_the_printed_hint(experiment, capsys):
    from viewer.__main__ import start
    taken = socket.socket()
    taken.bind(('127.0.0.1', free_port()))
    taken.listen()
    requested = taken.getsockname()[1]
    try:
        viewer = start([experiment, '--port', str(requested)])
        try:
            port = viewer.port
            assert port != requested
            out = capsys.readouterr().out
            line = next(line for line in out.splitlines() if 'viewer at' in line)
            assert f'port {requested} is taken' in line
            assert f'http://127.0.0.1:{port}/?token={viewer.token}' in line
            assert f'ssh -N -L {port}:localhost:{port} ' in line
            assert line.count(viewer.token) == 1 and f':{requested}/' not in line and f'L {requested}:' not in line
            assert get(port, f'/?token={viewer.token}')[0] == 200
        finally:
            viewer.stop()
    finally:
        taken.close()


def test_an_unhooked_viser_fails_loudly(app, monkeypatch):
    """A viser that starts its server otherwise than the hook expects: the viewer refuses to start (no unguarded
    server left listening) and says which viser it needs."""
    from viewer import security
    from viewer.app import ViewerApp
    monkeypatch.setattr(security, '_is_viser_handler', lambda handler: False)
    port = free_port()
    with pytest.raises(RuntimeError, match=r"could not hook viser .*install viser 1\.1\.1"):
        ViewerApp(app.data, port=port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(('127.0.0.1', port), timeout=5).close()
