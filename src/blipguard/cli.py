"""The ``blipguard`` command."""

import sys

USAGE = """usage: blipguard <command> [options]

commands:
  demo      run a job through a Redis blip on the pre-fix and the patched reference app
  operator  run the Kubernetes operator (`blipguard operator run --help`)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from blipguard.demo import main as demo_main

        return demo_main(rest)
    if command == "operator":
        from blipguard.operator.cli import main as operator_main

        return operator_main(rest)
    print(f"blipguard: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
