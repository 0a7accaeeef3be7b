"""Select an image's pins from a lock (images never resolve on their own).

    python lockfilter.py --drop dev --drop cuda requirements.lock > requirements.txt        # CPU image
    python lockfilter.py --drop dev --drop serving requirements-gpu.lock > requirements.txt  # GPU image
    python lockfilter.py --version-of torch requirements.lock

Two locks: requirements.lock (CPU: the venv, the tests, the CPU image) and requirements-gpu.lock (the
GPU environment, resolved with vLLM: scripts/gpu_lock.py). ``dev`` drops the test and lint tools and
what only they need (pyproject's ``dev`` extra): a production image has no pytest, ruff or protoc.
``cuda`` drops torch and the CUDA libraries, for the CPU image, which installs the same torch version
from the CPU wheel index instead. ``serving`` drops the lines under a lock's ``# [serving]`` line: vLLM
and what only it needs, which the trainer image does not run (vLLM has an image of its own).
tests/test_k8s_manifests.py checks that what is kept still satisfies every kept package's requirements.
"""

from __future__ import annotations

import argparse
import re
import sys

GROUPS = {
    "dev": {"pytest", "pytest-timeout", "ruff", "grpcio-tools", "rouge", "iniconfig", "pluggy", "hypothesis",
            "sortedcontainers"},
    "cuda": {"torch", "triton"},
    "serving": set(),  # by section: every line after '# [serving]'
}
PREFIXES = {"cuda": ("nvidia-", "cuda-")}
SECTION = re.compile(r"^#\s*\[(\w+)\]")


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


def sections(lock_text: str) -> dict[str, str]:
    """Normalized name -> the section its line is in ('' before any ``# [name]`` line)."""
    out, section = {}, ""
    for line in lock_text.splitlines():
        line = line.strip()
        match = SECTION.match(line)
        if match:
            section = match.group(1)
        elif line and not line.startswith(("#", "-")):
            out[normalize(line.partition("==")[0])] = section
    return out


def dropped(name: str, groups: list[str], section: str = "") -> bool:
    return section in groups or any(name in GROUPS[g] or name.startswith(PREFIXES.get(g, ())) for g in groups)


def kept(lock_text: str, groups: list[str]) -> list[tuple[str, str, str]]:
    """The pins an image installs: the lock minus the named groups."""
    where = sections(lock_text)
    return [pin for pin in pins(lock_text) if not dropped(pin[0], groups, where.get(pin[0], ""))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lock")
    parser.add_argument("--drop", action="append", default=[], choices=sorted(GROUPS))
    parser.add_argument("--version-of", metavar="NAME", help="print the locked version of one package and exit")
    args = parser.parse_args(argv)
    with open(args.lock) as fh:
        text = fh.read()
    locked = pins(text)
    if args.version_of:
        versions = [v for n, v, _ in locked if n == normalize(args.version_of)]
        if not versions:
            print(f"{args.version_of} is not in {args.lock}", file=sys.stderr)
            return 1
        print(versions[0])
        return 0
    for _, _, line in kept(text, args.drop):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
