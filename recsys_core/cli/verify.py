"""``recsys verify``: check stage outputs against their manifests (``recsys_core.artifacts.manifest``)."""

from __future__ import annotations

from pathlib import Path

from recsys_core.artifacts.hashing import HashMemo
from recsys_core.artifacts.manifest import verify_tree
from recsys_core.errors import RecsysError


def add(subparsers, name: str, summary: str) -> None:
    p = subparsers.add_parser(
        name, help=summary,
        description="Check every stage folder at or under PATH (a data dir of the flow, or one of its folders) "
                    "against its manifest.json: every file it lists must still have its recorded size and sha256 "
                    "(every byte is read again). Prints one line per folder; exit status 2 when one does not "
                    "verify (the flow rebuilds such a folder on its next run).")
    p.add_argument("path", metavar="PATH", type=Path, help="a data dir or a stage folder")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.path.exists():
        raise RecsysError(f"{args.path}: no such file or folder")
    checks = verify_tree(args.path, HashMemo(None))
    if not checks:
        raise RecsysError(f"{args.path} holds no stage folder (no manifest.json at or under it)")
    for check in checks:
        print(f"{'ok' if check.ok else 'DAMAGED':8} {check.stage or '?':9} {check.folder}"
              + ("" if check.ok else f": {check.problem}"))
    damaged = sum(not c.ok for c in checks)
    if damaged:
        raise RecsysError(f"{damaged} of {len(checks)} stage folders under {args.path} do not verify")
    print(f"all {len(checks)} stage folders verify")
    return 0
