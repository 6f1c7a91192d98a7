"""Dataset uploads with real archives made here: safe unpacking, and POST /datasets over real HTTP."""
from __future__ import annotations

import io
import stat
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from live_server import LiveServer, settings_for
from slt_stack import Stack, copy_images

from service.uploads import Limits, UploadError, unpack_archive, validate_dataset

LIMITS = Limits(upload_bytes=4 << 20, unpacked_bytes=20 << 20, entries=500)


# ---- archives ---------------------------------------------------------------------------

def zip_bytes(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a repeated name is one of the bad cases
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix: the mode lives in the high 16 bits
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.fixture(scope="module")
def pngs(emoji_google_dir: Path) -> list[tuple[str, bytes]]:
    files = sorted(emoji_google_dir.glob("*.png"))
    return [(f"emoji/{f.name}", f.read_bytes()) for f in files[:: len(files) // 24][:24]]


@pytest.fixture(scope="module")
def good_zip(pngs) -> bytes:
    return zip_bytes([("emoji/", b""), *pngs, ("README.txt", b"not an image, ignored")])


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """1 GiB of zeros deflated to about 1 MB."""
    buf = io.BytesIO()
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("bomb.png", "w", force_zip64=True) as f:
            for _ in range(1024):
                f.write(zeros)
    return buf.getvalue()


def bad_archives(pngs, good_zip, zip_bomb) -> dict[str, tuple[bytes, int, str]]:
    """name -> (archive, expected status, words in the message)."""
    png = pngs[0][1]
    return {
        "zip-slip": (zip_bytes([pngs[0], ("../../evil.png", png)]), 422, "outside"),
        "zip-absolute": (zip_bytes([("/tmp/evil.png", png)]), 422, "absolute"),
        "zip-symlink": (zip_bytes([pngs[0], zip_symlink("link.png", "/etc/passwd")]), 422, "link"),
        "tar-symlink": (tar_bytes([(tar_info("a.png"), png),
                                   (tar_info("l.png", tarfile.SYMTYPE, "/etc/passwd"), None)]), 422, "link"),
        "tar-hardlink": (tar_bytes([(tar_info("a.png"), png),
                                    (tar_info("h.png", tarfile.LNKTYPE, "a.png"), None)]), 422, "link"),
        "tar-device": (tar_bytes([(tar_info("dev", tarfile.CHRTYPE), None)]), 422, "device"),
        "tar-slip": (tar_bytes([(tar_info("x/../../evil.png"), png)]), 422, "outside"),
        "zip-bomb": (zip_bomb, 413, "unpacks to more than"),
        "many-entries": (zip_bytes([(f"{i}.txt", b"") for i in range(LIMITS.entries + 1)]), 413, "entries"),
        "truncated-zip": (good_zip[: len(good_zip) // 2], 422, "truncated"),
        "truncated-tar": (tar_bytes([(tar_info(n), d) for n, d in pngs])[:3000], 422, "truncated"),
        "not-images": (zip_bytes([("a.txt", b"hello"), ("b.csv", b"1,2")]), 422, "no images"),
        "corrupt-images": (zip_bytes([("a.png", b"\x89PNG\r\n\x1a\n" + bytes(500))]), 422, "no readable images"),
        "not-an-archive": (b"just some bytes" * 100, 422, "not a .zip or .tar"),
        "duplicate-entry": (zip_bytes([pngs[0], pngs[0]]), 422, "cannot be written"),
    }


# ---- unpacking, no server -----------------------------------------------------------------

def install_locally(data: bytes, tmp_path: Path) -> dict:
    tmp_path.mkdir(exist_ok=True)
    archive = tmp_path / "upload"
    archive.write_bytes(data)
    root = tmp_path / "root"
    unpack_archive(archive, root, LIMITS)
    return validate_dataset(root, "x")


def assert_nothing_escaped(root: Path, top: Path, name: str) -> None:
    """No `evil.png` outside the unpack folder: not in any folder from root's parent up to
    `top` (where `../../evil.png` and `x/../../evil.png` would land), nowhere else under `top`,
    not at the absolute path an archive named, nor in the working directory."""
    d = root.parent
    while True:
        assert not (d / "evil.png").exists(), (name, d)
        if d == top:
            break
        assert top in d.parents, (d, top)
        d = d.parent
    escaped = [p for p in top.rglob("evil.png") if root not in p.parents]
    assert not escaped, (name, escaped)
    assert not Path("/tmp/evil.png").exists() and not (Path.cwd() / "evil.png").exists(), name


def test_good_archives_unpack(tmp_path, good_zip, pngs):
    info = install_locally(good_zip, tmp_path / "zip")
    assert info == {"name": "x", "format": "folder", "images": 24, "skipped": 0}
    assert install_locally(tar_bytes([(tar_info(n), d) for n, d in pngs]), tmp_path / "tar")["images"] == 24
    files = sorted(p for p in (tmp_path / "zip" / "root").rglob("*") if p.is_file())
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in files)


def test_bad_archives_are_refused(tmp_path, pngs, good_zip, zip_bomb):
    for name, (data, status, words) in bad_archives(pngs, good_zip, zip_bomb).items():
        work = tmp_path / name
        t0 = time.monotonic()
        with pytest.raises(UploadError) as e:
            install_locally(data, work)
        assert (e.value.status_code, words in e.value.detail) == (status, True), (name, e.value.detail)
        assert_nothing_escaped(work / "root", tmp_path, name)
        written = sum(p.stat().st_size for p in (work / "root").rglob("*") if p.is_file()) \
            if (work / "root").exists() else 0
        assert written <= LIMITS.unpacked_bytes, name
        assert time.monotonic() - t0 < 30, name


# ---- over HTTP ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory, emoji_google_dir: Path):
    home = tmp_path_factory.mktemp("uploads") / "home"
    copy_images(emoji_google_dir, home / "datasets" / "tiny")
    st = Stack(home, SLT_MAX_UPLOAD_BYTES=str(LIMITS.upload_bytes),
               SLT_MAX_UNPACKED_BYTES=str(LIMITS.unpacked_bytes),
               SLT_MAX_ARCHIVE_ENTRIES=str(LIMITS.entries))
    try:
        st.start_api()
        yield st
    finally:
        st.close()


def upload(stack: Stack, name: str, data: bytes, filename: str = "data.zip", admin: bool = True):
    with stack.client(admin=admin) as c:
        return c.post("/datasets", data={"name": name}, files={"file": (filename, data)})


def entries(stack: Stack) -> list[str]:
    return sorted(p.name for p in (stack.home / "datasets").iterdir())


@pytest.mark.slow
def test_uploaded_zip_becomes_a_dataset_a_search_can_use(stack: Stack, good_zip, pngs):
    r = upload(stack, "uploaded", good_zip)
    assert r.status_code == 201, r.text
    body = r.json()
    assert len(body.pop("sha256")) == 64 and body.pop("bytes") > 0
    assert body == {"name": "uploaded", "format": "folder", "images": 24, "skipped": 0, "error": None,
                    "local": True, "shared": True}
    r = upload(stack, "uploaded-tar", tar_bytes([(tar_info(n), d) for n, d in pngs]), "data.tar.gz")
    assert r.status_code == 201 and r.json()["images"] == 24
    with stack.client(admin=False) as c:
        listed = {d["name"]: d for d in c.get("/datasets").json()}
    assert listed["uploaded"]["images"] == 24 and listed["uploaded-tar"]["format"] == "folder"
    assert listed["uploaded"]["shared"] and listed["uploaded"]["local"] and not listed["tiny"]["shared"]
    assert entries(stack) == ["tiny", "uploaded", "uploaded-tar"]
    # a replica with a disk of its own lists it too, from the shared store, with the same fields
    with LiveServer(settings_for(stack.home.parent / "replica", stack.redis.url)) as replica, \
            replica.client() as c:
        there = {d["name"]: d for d in c.get("/datasets").json()}
    assert "tiny" not in there
    assert {k: there["uploaded"][k] for k in ("name", "format", "images", "local", "shared")} == \
        {"name": "uploaded", "format": "folder", "images": 24, "local": False, "shared": True}
    assert there["uploaded"]["sha256"] == listed["uploaded"]["sha256"] and there["uploaded"]["bytes"] > 0

    stack.start_worker()
    job = stack.wait_job(stack.submit("uploaded", iterations=4))
    assert job["status"] == "succeeded", job


def test_upload_refusals_leave_nothing_behind(stack: Stack, pngs, good_zip, zip_bomb):
    before = entries(stack)
    for name, (data, status, words) in bad_archives(pngs, good_zip, zip_bomb).items():
        r = upload(stack, f"bad-{name}", data)
        assert (r.status_code, words in r.json()["detail"]) == (status, True), (name, r.text)
        assert entries(stack) == before, name
    too_large = b"\0" * (LIMITS.upload_bytes + 1)
    r = upload(stack, "too-large", too_large)
    assert r.status_code == 413 and "SLT_MAX_UPLOAD_BYTES" in r.json()["detail"]

    def chunked():  # no Content-Length: the cap holds while streaming
        yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nstreamed\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'
        for _ in range(LIMITS.upload_bytes >> 20):
            yield bytes(1 << 20)
        yield b"more than the limit\r\n--b--\r\n"

    with stack.client() as c:
        r = c.post("/datasets", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "SLT_MAX_UPLOAD_BYTES" in r.json()["detail"]
    assert upload(stack, "tiny", good_zip).status_code == 409  # the name is taken
    for bad_name in ("../x", "a/b", ".hidden", ""):
        assert upload(stack, bad_name, good_zip).status_code == 422, bad_name
    assert upload(stack, "anon", good_zip, admin=False).status_code == 401
    with stack.client() as c:
        assert c.post("/datasets", json={"name": "x"}).status_code == 415
        assert c.post("/datasets", data={"name": "nofile"}, files={"other": ("a", b"")}).status_code == 422
    assert entries(stack) == before


def test_upload_over_the_shared_cap_is_507_and_leaves_nothing(stack: Stack, good_zip, tmp_path):
    """Installed here, then refused by the shared store: uninstalled, so no replica sees it."""
    settings = settings_for(tmp_path / "home", stack.redis.url, shared_dataset_max_bytes=1000,
                            max_upload_bytes=LIMITS.upload_bytes)
    with LiveServer(settings) as srv, srv.client(admin=True) as c:
        r = c.post("/datasets", data={"name": "over-cap"}, files={"file": ("a.zip", good_zip)})
        assert r.status_code == 507 and "SLT_SHARED_DATASET_MAX_BYTES" in r.json()["detail"], r.text
        assert "over-cap" not in {d["name"] for d in c.get("/datasets").json()}
        left = [p.name for p in settings.datasets_dir.iterdir()] if settings.datasets_dir.exists() else []
        assert left == []
