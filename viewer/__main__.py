"""Serve the viewer:  python -m viewer <experiment or result folder> [--port 8080] [key value ...]

    python -m viewer exp/demo/esg                        # the demo's network on its val split
    python -m viewer out/query                           # a query.py output folder (its config and scenes)
    python -m viewer exp/demo/esg input my_room.ply      # one's own scan
    python -m viewer exp/demo/esg feature_type ess       # the ESS embeddings instead of the 3D network

On a headless server the viewer listens on 127.0.0.1:<port>; from a laptop, forward the port over SSH
(``ssh -N -L 8080:localhost:8080 user@server``) and open http://localhost:8080 (README, "The viewer").
"""
import argparse
import time

from util.cli import run_cli
from util.logger import get_logger
from util.misc import get_device, set_seed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m viewer', description=__doc__.splitlines()[0],
        usage='python -m viewer <folder> [--host ADDRESS] [--port PORT] [options] [key value ...]',
        epilog="key value: overrides of the folder's config with query.py's keys (python query.py --help lists them), "
               "before or after the options, e.g. input my_room.ply input_up_axis y, feature_type ess, split train. "
               "Default address: http://127.0.0.1:8080 (forward it over SSH from a laptop).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('folder', help='experiment folder (<exp> with best.pth), evaluation result folder, or a '
                                       'query.py output folder')
    parser.add_argument('--config', default=None, help='evaluation config (default: found in the folder)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (127.0.0.1: reach it through SSH forwarding; 0.0.0.0 opens it '
                             'to the network)')
    parser.add_argument('--port', type=int, default=8080, help='port to listen on')
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
    app = ViewerApp(data, host=args.host, port=args.port, point_size=args.point_size)
    app.show_scene(data.names[0])
    logger.info(f'viewer at {app.url}  (from another machine: ssh -N -L {args.port}:localhost:{args.port} '
                f'<user>@<this server>, then open http://localhost:{args.port})')
    return app


def main(argv=None):
    app = start(argv)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        app.stop()


if __name__ == '__main__':
    run_cli(main)
