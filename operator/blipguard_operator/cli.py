"""``blipguard operator run``: the operator outside a cluster (demo, tests) or in its pod."""

from __future__ import annotations

import argparse
import logging
import os


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blipguard operator", description="Run the blipguard operator.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="watch guards and their pods; pause the fleet during blips")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster ServiceAccount, else KUBECONFIG)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="namespace to serve (repeatable; guards and watched pods must live in them)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve the whole cluster")
    run.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    run.add_argument("--metrics-address", default="0.0.0.0")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                     help="kopf's probe endpoint for liveness/readiness ('' to turn off)")
    run.add_argument("--pod-selector", default=None,
                     help="server-side label selector of the pods watched (default: "
                          "'app.kubernetes.io/name in (redis,nats)'; guards' selectors must fall inside it; "
                          "'' watches every pod)")
    run.add_argument("--watch-timeout", type=int, default=60,
                     help="seconds the API server keeps a quiet watch open before the operator renews it")
    run.add_argument("--sentry-dsn", default=os.environ.get("SENTRY_DSN") or None,
                     help="report blips and degraded guards to Sentry (default: env SENTRY_DSN; needs sentry-sdk)")
    run.add_argument("--sentry-environment", default=os.environ.get("SENTRY_ENVIRONMENT") or None)
    run.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        parser().error("pass --namespace NS (repeatable) or --all-namespaces")
    if args.kubeconfig:
        if not os.path.exists(args.kubeconfig):
            parser().error(f"kubeconfig {args.kubeconfig} does not exist")
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf

    from . import main as _wiring  # noqa: F401 - registers the handlers
    from . import metrics, sentry_events
    from .handlers import startup

    if args.pod_selector is not None:
        startup.pod_selector = args.pod_selector
    if args.watch_timeout < 1:
        parser().error(f"--watch-timeout must be >= 1 second, got {args.watch_timeout}")
    startup.watch_server_timeout = args.watch_timeout

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    if not args.verbose:  # one line per pod event otherwise ("Handler 'pod_event' succeeded.")
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        sentry_events.setup(args.sentry_dsn, args.sentry_environment)
    except sentry_events.SentrySetupError as e:
        parser().error(str(e))
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    kopf.run(
        standalone=True,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0
