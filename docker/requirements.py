"""Print the runtime requirements of pyproject.toml, one per line, torch left out.

Used by the image build (to install dependencies before the source is copied, so that layer
is cached until pyproject.toml changes) and by docker/build-wheelhouse.sh. torch is left out
because it is installed first, on its own, pinned (CPU build by default, CUDA by build arg).

    python docker/requirements.py [--pyproject pyproject.toml] [--extras dev,...]
"""
from __future__ import annotations

import argparse
import re
import tomllib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyproject", default="pyproject.toml")
    ap.add_argument("--extras", default="", help="optional-dependency groups, comma-separated")
    args = ap.parse_args()
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    for extra in filter(None, args.extras.split(",")):
        reqs += project.get("optional-dependencies", {}).get(extra.strip(), [])
    for r in reqs:
        name = re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower()
        if name != "torch":
            print(r)


if __name__ == "__main__":
    main()
