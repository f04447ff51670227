"""Serve one of our policies with openpi's websocket protocol: for `actdistill eval --policy ws://...` on
another machine or shell, or any openpi client (`openpi_client.websocket_client_policy.WebsocketClientPolicy`).

    actdistill serve --policy results/checkpoints/teacher-simpler                      # ws://127.0.0.1:8000
    actdistill serve --policy results/checkpoints/student-simpler-b0.50 --host 0.0.0.0 --port 8000 --device cuda
    actdistill serve --policy baseline:first_k@0.5:results/checkpoints/teacher-simpler --port 0   # a free port
    actdistill eval --policy ws://127.0.0.1:8000 --suite simpler_widowx --workers 2        # in another shell

Requests are observations with our keys (agentview, wrist: HxWx3 uint8 at the checkpoint's image size;
proprio: (8,) float32; instruction: str); replies hold the policy's whole action chunk, "actions" (K, 7),
which the client runs open loop, with "server_timing" and the policy's "info" (layers, FLOPs, model_ms).
Episodes: a new connection starts fresh, and {"reset": true} between episodes resets the connection's policy
(openpi's own clients never send it: their chunks need no reset). The metadata sent on connect says what is
served: policy, policy_hash, kind, budget, method, layers, observation (key -> shape, dtype), action_dim,
chunk, accepts_reset. Ctrl-C stops the server.
"""

from __future__ import annotations

import logging

from tasks.errors import UserInputError

HELP = "serve a policy over openpi's websocket protocol (for eval --policy ws://... and openpi clients)"


def add_arguments(parser) -> None:
    parser.add_argument("--policy", required=True,
                        help="a checkpoint folder or baseline:<name>@<budget>:<teacher folder>")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: a free one)")
    parser.add_argument("--device", default="cpu", help="device of the model, e.g. cpu or cuda (default cpu)")


def run(args) -> int:
    from harness.evaluate import policy_source
    from harness.serving.server import WebsocketPolicyServer, describe

    if args.policy == "expert" or args.policy.startswith(("ws://", "wss://", "py:")):
        raise UserInputError(f"serve --policy {args.policy!r}: serve takes a checkpoint folder or "
                             "baseline:<name>@<budget>:<teacher folder> (the scripted expert reads the simulator's "
                             "state, which a client does not send)")
    if not 0 <= args.port < 65536:
        raise UserInputError(f"--port must be in 0-65535, got {args.port}")
    source = policy_source(args.policy, device=args.device)
    if source.env_kwargs.get("privileged_obs"):
        raise UserInputError(f"serve --policy {args.policy!r}: a state-input checkpoint reads the simulator's "
                             "privileged state, which a client does not send; serve a camera policy")
    policy = source.build(None)  # checkpoints and baselines do not depend on the environment
    metadata = describe(source.name, source.meta, source.hash_for(None), policy)
    # predict() depends on the observation only, so every connection shares the one loaded policy
    server = WebsocketPolicyServer(lambda: policy, metadata, host=args.host, port=args.port)
    logging.basicConfig(level=logging.INFO, format="[serve] %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    budget = f", budget {metadata['budget']}" if "budget" in metadata else ""
    print(f"[serve] {source.name} ({metadata.get('kind', 'policy')}{budget}, {metadata.get('layers', '?')} layers, "
          f"chunk {metadata.get('chunk', 1)}) listening on {server.url}; Ctrl-C stops", flush=True)
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM stop the server even where SIGINT was inherited as ignored (a job started with & from
    # a non-interactive shell, e.g. under CI)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("[serve] stopped", flush=True)
    finally:
        server.shutdown()
    return 0
