"""Who may use the viewer: Host, Origin and token checks on every HTTP request and websocket handshake.

viser serves its web client and its websocket on one port through ``websockets.asyncio.server.serve``, and
answers the page's HTTP requests in the ``process_request`` hook it hands to that call. ``start_viser`` wraps
that hook while ``viser.ViserServer`` starts, so ``RequestGuard`` sees every request before viser does and
answers 403 Forbidden, saying why, to any that fails one of these checks:

* Host: the request must name this server: 127.0.0.1, localhost, [::1] or the ``--host`` address (on a
  wildcard address also this machine's name and the address the request came in on), with the bound port. A
  page of another site whose name was rebound to 127.0.0.1 (DNS rebinding) sends its own name and is refused.
* Origin: a browser sends the page's origin with a websocket handshake (and with other cross-site requests);
  any but http://<one of the names above>:<port> is refused, so another site's page cannot drive the viewer. A
  request without one (not a browser, or a same-origin page load) passes this check.
* Token (as Jupyter's): a random ``secrets.token_urlsafe`` the viewer prints in its URL
  (http://127.0.0.1:<port>/?token=...). viser's client connects its websocket to the page's address without
  the query string, so the page loaded with the right ``?token=`` sets an HttpOnly, SameSite=Strict cookie
  that the websocket presents; a non-browser client may give ``?token=`` in the websocket URL instead. Tokens
  are compared with ``hmac.compare_digest``. ``token=None`` (``python -m viewer --no-token``) turns this check
  off; Host and Origin are still checked.

The hook relies on one viser internal (checked with viser 1.1.1, websockets 16): ``ViserServer()`` starts its
server by calling ``websockets.asyncio.server.serve(handler, host, port, ..., process_request=...)`` with a
handler of viser's own module before it returns. ``start_viser`` checks that this happened and otherwise stops
the server and raises, so a viser release that starts its server differently fails loudly at start-up instead
of serving without the checks.
"""
import contextlib
import hmac
import http
import http.cookies
import inspect
import logging
import socket
import threading
from urllib.parse import parse_qs, urlsplit

TESTED_VISER = '1.1.1'
WILDCARD_HOSTS = ('', '0.0.0.0', '::')
LOOPBACK_NAMES = ('127.0.0.1', 'localhost', '[::1]')
_START_LOCK = threading.Lock()  # one guarded start at a time: the patched serve() belongs to that start


def bracketed(address):
    """An IPv6 address as it appears in a URL or a Host header ('::1' -> '[::1]'); other names unchanged."""
    return f'[{address}]' if ':' in address and not address.startswith('[') else address


def cookie_name(port):
    """The token cookie of the viewer on ``port`` (cookies are shared between the ports of a host)."""
    return f'viewer-token-{port}'


def served_names(host):
    """The lower-case host names (IPv6 bracketed, no port) under which a viewer listening on ``host`` is reached."""
    names = set(LOOPBACK_NAMES)
    if host:
        names.add(bracketed(host).lower())
    if host in WILDCARD_HOSTS:  # open to the network: reached by this machine's name too (its addresses: per request)
        for name in (socket.gethostname(), socket.getfqdn()):
            if name:
                names.add(name.lower())
    return names


def _port_of(host_header):
    """(name, port) of a Host header value: 'a:8080' -> ('a', 8080), '[::1]:80' -> ('[::1]', 80), 'a' -> ('a', 80);
    the port is None when it is not a number."""
    value = host_header.strip().lower()
    name, sep, port = value.rpartition(':')
    if not sep or name.endswith(':') or (value.startswith('[') and not name.endswith(']')):
        return value, 80  # no port: 'a', '[::1]' (an unbracketed IPv6 address is refused by the name check)
    return name, int(port) if port.isdigit() else None


def _equal(given, expected):
    """Constant-time comparison of two tokens (any text: non-ASCII input must not raise)."""
    return hmac.compare_digest(given.encode('utf-8', 'surrogateescape'), expected.encode('utf-8'))


class RequestGuard:
    """The checks of one viewer server: ``refusal(connection, request)`` says why a request is refused (or None),
    ``wrap(process_request)`` puts them in front of viser's HTTP handler. ``token=None``: no token check."""

    def __init__(self, host, token=None, logger=None):
        self.host = host
        self.token = token
        self.names = served_names(host)
        self.logger = logger or logging.getLogger('viewer')
        self.hooked = False  # set when viser's serve() call got the guarded process_request
        self._logged = set()

    # ------------------------------------------------------------------ the checks
    def allowed_hosts(self, connection):
        """(names, port) a Host header may give on ``connection``: its local port is the one bound, and on a wildcard
        address the address it came in on is one of the names."""
        address, port = connection.local_address[:2]
        names = set(self.names)
        if self.host in WILDCARD_HOSTS:
            names.add(bracketed(address).lower())
        return names, port

    def refusal(self, connection, request):
        """Why ``request`` is refused (a sentence for the 403 answer and the log), or None when it may pass."""
        names, port = self.allowed_hosts(connection)
        return (self._host_refusal(request, names, port) or self._origin_refusal(request, names, port)
                or self._token_refusal(request, port))

    @staticmethod
    def _host_refusal(request, names, port):
        host = request.headers.get('Host', '')
        name, host_port = _port_of(host)
        if name in names and host_port == port:
            return None
        served = ', '.join(f'{n}:{port}' for n in sorted(names))
        return (f"refused a request for Host '{host}': this viewer answers only as {served} (a Host of another name "
                f"is how a DNS-rebinding page reaches a local server); when forwarding the port, keep its number "
                f"(ssh -N -L {port}:localhost:{port} ...)")

    @staticmethod
    def _origin_refusal(request, names, port):
        origin = request.headers.get('Origin')
        origins = sorted(f'http://{n}:{port}' for n in names)
        if port == 80:  # the default port is left out of an Origin
            origins += sorted(f'http://{n}' for n in names)
        if origin is None or origin.lower() in origins:  # no Origin: not a browser (which must still give the token)
            return None
        return (f"refused a request from the page at Origin '{origin}': only this viewer's own pages "
                f"({', '.join(origins)}) may use it")

    def _token_refusal(self, request, port):
        if self.token is None or self.has_token(request, port):
            return None
        what = 'websocket' if _is_websocket(request) else 'page'
        return (f"refused a {what} request without the right token ({urlsplit(request.path).path}): open the URL "
                f"the viewer printed at start, http://127.0.0.1:{port}/?token=... (or start it with --no-token on "
                f"a trusted machine)")

    def has_token(self, request, port):
        """Whether ``request`` presents the token: ``?token=`` in its URL or the cookie the page set."""
        return any(_equal(given, self.token) for given in (_query_token(request), _cookie_token(request, port))
                   if given is not None)

    # ------------------------------------------------------------------ the hook
    def wrap(self, process_request):
        """viser's ``process_request`` (or None) behind the checks; a page opened with the right ``?token=`` gets
        the token cookie that its websocket will present."""

        def guarded(connection, request):
            reason = self.refusal(connection, request)
            if reason is not None:
                self._log_once(reason)
                return connection.respond(http.HTTPStatus.FORBIDDEN, f'403 Forbidden: {reason}\n')
            response = process_request(connection, request) if process_request is not None else None
            if inspect.isawaitable(response):
                return self._with_cookie_async(response, request, connection)
            return self._with_cookie(response, request, connection)

        return guarded

    async def _with_cookie_async(self, response, request, connection):
        return self._with_cookie(await response, request, connection)

    def _with_cookie(self, response, request, connection):
        if response is None or self.token is None or _is_websocket(request) or _query_token(request) is None:
            return response
        port = connection.local_address[1]
        response.headers['Set-Cookie'] = f'{cookie_name(port)}={self.token}; Path=/; HttpOnly; SameSite=Strict'
        return response

    def _log_once(self, reason):
        """Log each kind of refusal once (a browser retrying its websocket would repeat it every second)."""
        key = reason.split(':')[0]
        if key not in self._logged and len(self._logged) < 100:
            self._logged.add(key)
            self.logger.warning(reason)


def _is_websocket(request):
    return request.headers.get('Upgrade', '').lower() == 'websocket'


def _query_token(request):
    values = parse_qs(urlsplit(request.path).query).get('token')
    return values[0] if values else None


def _cookie_token(request, port):
    cookies = http.cookies.SimpleCookie()
    for header in request.headers.get_all('Cookie'):
        try:
            cookies.load(header)
        except http.cookies.CookieError:  # a malformed cookie of another site on this host: no token in it
            continue
    morsel = cookies.get(cookie_name(port))
    return morsel.value if morsel is not None else None


# ---------------------------------------------------------------------- starting viser behind the guard
def _is_viser_handler(handler):
    """Whether ``handler`` (given to serve()) is viser's websocket handler, not another server's of this process."""
    return getattr(handler, '__module__', '').startswith('viser.')


@contextlib.contextmanager
def _guarded_serve(guard):
    """While in this block, viser's call of ``websockets.asyncio.server.serve`` gets ``guard.wrap(process_request)``
    (viser calls it, once per port it tries, from its server thread before ``ViserServer()`` returns)."""
    import websockets.asyncio.server as ws_server
    original = ws_server.serve

    def serve(handler, *args, process_request=None, **kwargs):
        if _is_viser_handler(handler):
            guard.hooked = True
            process_request = guard.wrap(process_request)
        return original(handler, *args, process_request=process_request, **kwargs)

    with _START_LOCK:
        ws_server.serve = serve
        try:
            yield
        finally:
            ws_server.serve = original


def start_viser(guard, **kwargs):
    """``viser.ViserServer(**kwargs)`` whose every request passes ``guard``; raises (the server stopped) when the
    installed viser starts its server in a way the guard cannot hook."""
    import viser
    with _guarded_serve(guard):
        server = viser.ViserServer(**kwargs)
    if not guard.hooked:
        server.stop()
        raise RuntimeError(
            f"the viewer's Host / Origin / token checks could not hook viser {viser.__version__}: its ViserServer() "
            f"did not start its server through websockets.asyncio.server.serve(..., process_request=...) as viser "
            f"{TESTED_VISER} does; install viser {TESTED_VISER} (pip install 'viser=={TESTED_VISER}') or adapt "
            f"viewer/security.py")
    return server
