"""Write requirements-gpu.lock: MedSeRL with its dev and gpu (vLLM) extras resolved together for the GPU
image's platform, keeping every pin of requirements.lock that vLLM does not force to move.

    python scripts/gpu_lock.py            # online (PyPI metadata only, nothing is installed)

requirements.lock is the CPU lock (the venv, the tests, the CPU image) and is never changed here. vLLM
pins its own torch and transformers (0.33.0: torch==2.14.0, transformers<5.21; numpy<2.4 through
mistral_common), so the GPU environment gets a lock of its own, as vLLM's own docs and every project
that runs it beside a trainer do. Only MOVABLE packages may differ from requirements.lock; a conflict
anywhere else fails the resolution and is for a person to decide. Lines under ``# [serving]`` are vLLM
and what only it needs: docker/Dockerfile.gpu (the trainer) drops them with ``lockfilter.py --drop
serving``; vLLM itself runs from its own image (docker/Dockerfile.vllm) at the same versions.
Must run on Linux x86_64 with CPython 3.11, the image's platform (markers are evaluated here).
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK, GPU_LOCK = ROOT / "requirements.lock", ROOT / "requirements-gpu.lock"
# what vLLM's pins may move: torch and its CUDA wheels, transformers, numpy
MOVABLE = re.compile(r"^(torch|triton|transformers|numpy|nvidia-[\w-]+|cuda-[\w-]+)$")
SERVING = "# [serving] vLLM and what only it needs (the vLLM sidecar image's; not installed in the trainer image)"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    if (sys.platform, platform.machine(), sys.version_info[:2]) != ("linux", "x86_64", (3, 11)):
        print("run this on Linux x86_64 with Python 3.11 (the GPU image's platform)", file=sys.stderr)
        return 2
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["dev"], *extras["gpu"]]
    constraints = [line for line in LOCK.read_text().splitlines()
                   if line.strip() and not line.startswith("#") and not MOVABLE.match(normalize(line.partition("==")[0]))]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in.txt").write_text("\n".join(wanted) + "\n")
        (Path(tmp) / "c.txt").write_text("\n".join(constraints) + "\n")
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), "-r", str(Path(tmp) / "in.txt"), "-c", str(Path(tmp) / "c.txt")],
                       check=True)
        installed = json.loads(report.read_text())["install"]
    meta = {normalize(i["metadata"]["name"]): i["metadata"] for i in installed}
    env = default_environment()

    def requirements(name: str, with_extras: tuple[str, ...] = ()) -> list[Requirement]:
        out = []
        for text in meta[name].get("requires_dist") or []:
            req = Requirement(text)
            if not req.marker or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *with_extras)):
                out.append(req)
        return out

    def closure(roots: list[Requirement]) -> set[str]:
        seen: set[tuple[str, tuple[str, ...]]] = set()
        stack = [(normalize(r.name), tuple(sorted(r.extras))) for r in roots]
        while stack:
            node = stack.pop()
            if node in seen or node[0] not in meta:
                continue
            seen.add(node)
            stack += [(normalize(r.name), tuple(sorted(r.extras))) for r in requirements(*node)]
        return {name for name, _ in seen}

    ours = closure([Requirement(r) for r in [*project["dependencies"], *extras["dev"]]])
    header = [
        "# requirements-gpu.lock: the GPU environment (Linux x86_64, CPython 3.11, CUDA wheels from PyPI):",
        "# MedSeRL with its dev and gpu extras resolved together, so the trainer image runs the torch,",
        "# transformers and numpy the vLLM sidecar runs. requirements.lock (CPU: the venv, the tests, the CPU",
        "# image) is unchanged; every pin here equals its pin there except torch and its CUDA wheels,",
        "# transformers and numpy, which vLLM moves (what rules out the CPU lock's version; tests check it):",
    ]
    cpu = {normalize(n): v.split(";")[0].strip() for n, _, v in
           (line.partition("==") for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#"))}
    for name in sorted(meta):  # every requirement that rules out requirements.lock's version of a moved pin
        for req in requirements(name):
            dep = normalize(req.name)
            if MOVABLE.match(dep) and dep in cpu and not req.specifier.contains(cpu[dep], prereleases=True):
                header.append(f"# {meta[name]['name']} {meta[name]['version']} requires: {req.name}{req.specifier} "
                              f"(requirements.lock: {cpu[dep]})")
    header += [
        "#   docker/Dockerfile.gpu (the trainer): python lockfilter.py --drop dev --drop serving requirements-gpu.lock",
        "#   a GPU host running vLLM in-process: pip install -r requirements-gpu.lock && pip install --no-deps '.[gpu]'",
        "#   regenerate (online, Linux x86_64, Python 3.11): python scripts/gpu_lock.py",
    ]

    def line(name: str) -> str:
        return f"{meta[name]['name']}=={meta[name]['version']}"

    main_lines = sorted((line(n) for n in meta if n in ours), key=lambda s: normalize(s.partition("==")[0]))
    serving = sorted((line(n) for n in meta if n not in ours), key=lambda s: normalize(s.partition("==")[0]))
    GPU_LOCK.write_text("\n".join([*header, *main_lines, SERVING, *serving]) + "\n")
    print(f"wrote {GPU_LOCK.name}: {len(main_lines)} + {len(serving)} serving pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
