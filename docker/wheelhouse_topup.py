"""List requirements the wheels in a wheelhouse need on some CPython 3.11.x but lack.

pip evaluates environment markers against the interpreter that runs it, even with
--python-version, so a wheelhouse built on this host's 3.11.N misses what another 3.11 patch
release needs (redis wants async-timeout below 3.11.3; Debian bookworm ships 3.11.2). This reads
every wheel's Requires-Dist, evaluates the markers for the lowest and a high 3.11 patch release
on Linux x86_64, and prints those (without markers) that no wheel in the folder provides.

    python docker/wheelhouse_topup.py DIR        # one requirement a line; nothing: complete
"""
from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # pip vendors packaging: no dependency for the host
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

PATCHES = ("3.11.0", "3.11.99")


def metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = Parser().parsestr(z.read(name).decode("utf-8", "replace"))
    return msg.get_all("Requires-Dist") or []


def main() -> None:
    folder = Path(sys.argv[1])
    wheels = sorted(folder.glob("*.whl"))
    have = {parse_wheel_filename(w.name)[0] for w in wheels}
    missing: dict[str, str] = {}
    for wheel in wheels:
        for line in metadata(wheel):
            req = Requirement(line)
            if req.marker is None or canonicalize_name(req.name) in have:
                continue
            for full in PATCHES:
                env = default_environment()
                env.update(python_full_version=full, python_version="3.11", platform_system="Linux",
                           sys_platform="linux", platform_machine="x86_64",
                           implementation_name="cpython", platform_python_implementation="CPython",
                           extra="")
                if req.marker.evaluate(env):
                    req.marker = None
                    missing[canonicalize_name(req.name)] = str(req)
                    break
    for r in sorted(missing.values()):
        print(r)


if __name__ == "__main__":
    main()
