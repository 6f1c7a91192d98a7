"""Print the runtime requirements of pyproject.toml, one per line, torch left out.

Used by the image build (to install dependencies before the source is copied, so that layer
is cached until pyproject.toml changes) and by docker/build-wheelhouse.sh. torch is left out
because it is installed first, on its own, pinned (CPU build by default, CUDA by build arg).

    python docker/requirements.py [--pyproject pyproject.toml] [--extras s3,...]

The image carries IMAGE_EXTRAS by default (the `s3` extra: boto3, so SLT_S3_BUCKET works in
a container); `--extras ""` leaves them out.
"""
from __future__ import annotations

import argparse
import re
import tomllib

IMAGE_EXTRAS = "s3"  # optional-dependency groups every image (and wheelhouse) includes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyproject", default="pyproject.toml")
    ap.add_argument("--extras", default=IMAGE_EXTRAS,
                    help=f"optional-dependency groups, comma-separated (default {IMAGE_EXTRAS})")
    args = ap.parse_args()
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    groups = project.get("optional-dependencies", {})
    for extra in filter(None, (e.strip() for e in args.extras.split(","))):
        if extra not in groups:
            ap.error(f"pyproject.toml has no optional-dependency group {extra!r}")
        reqs += groups[extra]
    for r in reqs:
        name = re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower()
        if name != "torch":
            print(r)


if __name__ == "__main__":
    main()
