"""`cent serve`: the OpenAI-compatible server on emulated CENT devices."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from cent_serve.cli_common import add_config_args, config_from_args
from cent_serve.config import PLACEMENTS
from cent_serve.preflight import bind_listen_socket, check_runnable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible API on emulated CENT devices",
                       description="Start the server. With no arguments: a local Ray, the tiny model with full "
                                   "numerics on 8 devices (pipeline), http://127.0.0.1:8000/v1.")
    add_config_args(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8000)")
    p.add_argument("--clock", choices=["virtual", "paced"], help="simulated clock mode (default virtual)")
    p.add_argument("--pace-factor", type=float, help="paced mode: wall seconds per simulated second (default 1)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--placement", choices=PLACEMENTS,
                   help="on a cluster advertising cent_device: spread devices over nodes, pack them, or a node "
                        "per replica (replica: a node's loss fails only its replicas)")
    p.add_argument("--local", action="store_true", help="devices in this process, no Ray")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every path but /health, /ping and the docs "
                                     "(default: the CENT_API_KEY environment variable, which unlike the flag "
                                     "is not visible to other users in the process list)")
    p.add_argument("--allowed-origins", help="web origins whose pages may call the API from a browser (CORS), "
                                             "comma-separated, or '*' for any (default: none)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from api.server import run_server
    from cent_serve.executor.watch import ClusterLost

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    s = cfg.server
    if args.api_key is None and os.environ.get("CENT_API_KEY"):
        args.api_key = os.environ["CENT_API_KEY"]
    for flag, field in (("host", "host"), ("port", "port"), ("clock", "clock"), ("pace_factor", "pace_factor"),
                        ("ray_address", "ray_address"), ("api_key", "api_key"), ("placement", "placement"),
                        ("allowed_origins", "allowed_origins")):
        value = getattr(args, flag)
        if value is not None:
            setattr(s, field, value)
    s.__post_init__()
    cfg.executor = "local" if args.local or cfg.on_gpus else "ray"  # modelled GPUs run in this process
    unread = [f"--{flag.replace('_', '-')} {value}" for flag in ("ray_address", "placement")
              if args.local and not cfg.on_gpus and (value := getattr(args, flag)) is not None]
    if unread:  # GPUs' runs are warned of with the config (warn_gpu_run)
        logging.getLogger("cent").warning("%s: not read with --local (the devices run in this process, no Ray): "
                                          "drop --local to run them on the cluster", " ".join(unread))
    sock = bind_listen_socket(s.host, s.port)  # refused before anything starts, then held while Ray and the devices do
    try:
        check_runnable(cfg)
    except BaseException:
        sock.close()
        raise
    try:
        run_server(cfg, sock)
    except ClusterLost as exc:  # it ran, then failed: 1, not a refusal's 2; one line, as a refusal
        print(f"cent serve: error: {exc}", file=sys.stderr)
        return 1
    return 0
