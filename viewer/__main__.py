"""Serve the viewer:  python -m viewer <experiment or result folder> [--port 8080] [--no-token] [key value ...]

    python -m viewer exp/demo/esg                        # the demo's network on its val split
    python -m viewer out/query                           # a query.py output folder (its config and scenes)
    python -m viewer exp/demo/esg input my_room.ply      # one's own scan
    python -m viewer exp/demo/esg feature_type ess       # the ESS embeddings instead of the 3D network

On a headless server the viewer listens on 127.0.0.1:<port>; from a laptop, forward the port over SSH
(``ssh -N -L 8080:localhost:8080 user@server``) and open the URL it prints, http://127.0.0.1:8080/?token=...
(README, "The viewer"). The page and its websocket need that random token and answer only under the served
address (Host and Origin checks, ``viewer/security.py``); ``--no-token`` drops the token on a trusted machine.
When the port is taken, the viewer takes the next free one and prints that.
"""
import argparse
import time

from util.cli import run_cli
from util.logger import get_logger
from util.misc import get_device, set_seed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m viewer', description=__doc__.splitlines()[0],
        usage='python -m viewer <folder> [--host ADDRESS] [--port PORT] [--no-token] [options] [key value ...]',
        epilog="key value: overrides of the folder's config with query.py's keys (python query.py --help lists them), "
               "before or after the options, e.g. input my_room.ply input_up_axis y, feature_type ess, split train. "
               "Default address: http://127.0.0.1:8080/?token=<random, printed at start> (forward the port over SSH "
               "from a laptop, keeping its number).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('folder', help='experiment folder (<exp> with best.pth), evaluation result folder, or a '
                                       'query.py output folder')
    parser.add_argument('--config', default=None, help='evaluation config (default: found in the folder)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (127.0.0.1: reach it through SSH forwarding; 0.0.0.0 opens it '
                             'to the network)')
    parser.add_argument('--port', type=int, default=8080,
                        help='port to listen on (when taken: the next free one, printed at start)')
    parser.add_argument('--no-token', action='store_true',
                        help='serve without the random token the page and its websocket otherwise require (only on '
                             'a trusted machine: then any local user or program can use the viewer; requests for '
                             'another Host or from pages of another Origin are still refused)')
    parser.add_argument('--max-points', type=int, default=150_000,
                        help='points shown and embedded per scene (a seeded random subset of larger scenes)')
    parser.add_argument('--point-size', type=float, default=None, help='metres (default: twice the point spacing)')
    # everything else is `key value` overrides of the config, before or after the options
    args, args.opts = parser.parse_known_args(argv)
    stray = [o for o in args.opts[0::2] if o.startswith('--')]
    if stray:
        parser.error(f'unknown option(s) {stray}')
    return args


def start(argv=None):
    """Load the folder, compute the first scene and start serving; returns the ``ViewerApp`` (not blocking)."""
    from viewer.app import ViewerApp
    from viewer.data import ViewerData, load_viewer_config
    args = parse_args(argv)
    cfg = load_viewer_config(args.folder, args.config, args.opts)
    logger = get_logger('viewer')
    set_seed(cfg.manual_seed)
    data = ViewerData(cfg, device=get_device(cfg.device), max_points=args.max_points, logger=logger)
    logger.info(f"config '{cfg.config_file}', model '{cfg.model_path}', {len(data.names)} scene(s)")
    app = ViewerApp(data, host=args.host, port=args.port, point_size=args.point_size, token=not args.no_token)
    app.show_scene(data.names[0])
    logger.info(address_message(app, args.port))
    return app


def address_message(app, requested_port):
    """The start-up line: the URL to open (token included) and the SSH forwarding of the port actually bound."""
    port = app.port
    moved = f'port {requested_port} is taken: ' if requested_port and port != requested_port else ''
    return (f'{moved}viewer at {app.url}  (from another machine: ssh -N -L {port}:localhost:{port} '
            f'<user>@<this server>, then open that URL there)')


def main(argv=None):
    app = start(argv)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        app.stop()


if __name__ == '__main__':
    run_cli(main)
