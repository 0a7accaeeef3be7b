"""Select the image's pins from requirements.lock (the one lock; images never resolve on their own).

    python lockfilter.py --drop dev --drop cuda requirements.lock > requirements.txt
    python lockfilter.py --version-of torch requirements.lock

``dev`` drops the test and lint tools and what only they need (pyproject's ``dev`` extra): a
production image has no pytest, ruff or protoc. ``cuda`` drops torch and the CUDA libraries, for the
CPU image, which installs the same torch version from the CPU wheel index instead.
tests/test_k8s_manifests.py checks that what is kept still satisfies every kept package's requirements.
"""

from __future__ import annotations

import argparse
import re
import sys

GROUPS = {
    "dev": {"pytest", "pytest-timeout", "ruff", "grpcio-tools", "rouge", "iniconfig", "pluggy"},
    "cuda": {"torch", "triton"},
}
PREFIXES = {"cuda": ("nvidia-", "cuda-")}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock_text: str) -> list[tuple[str, str, str]]:
    """(normalized name, version, the original line) for every ``name==version`` line."""
    out = []
    for line in lock_text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        name, _, version = line.partition("==")
        out.append((normalize(name), version.split(";")[0].strip(), line))
    return out


def dropped(name: str, groups: list[str]) -> bool:
    return any(name in GROUPS[g] or name.startswith(PREFIXES.get(g, ())) for g in groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lock")
    parser.add_argument("--drop", action="append", default=[], choices=sorted(GROUPS))
    parser.add_argument("--version-of", metavar="NAME", help="print the locked version of one package and exit")
    args = parser.parse_args(argv)
    with open(args.lock) as fh:
        locked = pins(fh.read())
    if args.version_of:
        versions = [v for n, v, _ in locked if n == normalize(args.version_of)]
        if not versions:
            print(f"{args.version_of} is not in {args.lock}", file=sys.stderr)
            return 1
        print(versions[0])
        return 0
    for name, _, line in locked:
        if not dropped(name, args.drop):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
