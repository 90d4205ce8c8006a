"""The command line: `python -m skscratch <command>` (also installed as `skscratch`)."""

from __future__ import annotations

import argparse
import sys

TOLERANCE = 1e-6


def _gradcheck(args: argparse.Namespace) -> int:
    from skscratch.gradcheck import check_all_operations

    rows = check_all_operations(seed=args.seed)
    width = max(len(op) for op, _, _ in rows)
    name_width = max(len(name) for _, name, _ in rows)
    print(f"{'operation':<{width}}  {'input':<{name_width}}  {'max rel error':>13}  result")
    failed = 0
    for op, name, err in rows:
        ok = err < args.tolerance
        failed += not ok
        print(f"{op:<{width}}  {name:<{name_width}}  {err:13.2e}  {'pass' if ok else 'FAIL'}")
    print(f"\n{len(rows) - failed} of {len(rows)} gradients within {args.tolerance:g} (float64)")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skscratch", description="Selective Kernel Networks from scratch in NumPy."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = commands.add_parser(
        "gradcheck",
        help="check every operation's backward pass against finite differences",
        description="Check every operation's hand-written gradients against centred finite "
        "differences, in float64 on random shapes, and print a table.",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for shapes and values")
    p.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="largest relative error that passes"
    )
    p.set_defaults(run=_gradcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
