"""`slt`: the service from a shell. Each subcommand is one or two API calls (slt.api); errors
are the API's own `detail` on stderr and a non-zero exit, never a traceback.

Exit status: 0 done; 1 the API refused (or a followed job ended failed or cancelled);
2 usage (argparse); 3 a bundle's card and file disagree.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from slt.api import ApiError, Client, sse_events
from slt.bundle import CARD, BundleError, check
from slt.settings import ClientSettings

log = logging.getLogger("slt")

REFUSED, MISMATCH = 1, 3
SEARCH_FIELDS = ("k", "iterations", "batch_size", "pruning", "seed", "lr")
# each subcommand's API operations (slt.api.OPERATIONS), checked against the OpenAPI document
COMMANDS = {
    "generate": ("generate_images",),
    "search": ("submit_search", "follow_job_events", "get_job"),
    "follow": ("follow_job_events", "get_job"),
    "promote": ("update_domain",),
    "upload": ("upload_dataset",),
    "export": ("get_mask_card", "get_mask_file"),
    "import": ("import_mask",),
}


def _emit(obj: object) -> None:
    """A command's result on stdout, as JSON (for scripts and `jq`)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def generate(c: Client, a: argparse.Namespace) -> int:
    r = c.generate_images(a.domain, a.n, a.seed, a.format)
    if a.out == "-":
        sys.stdout.buffer.write(r.content)
        sys.stdout.buffer.flush()
    else:
        Path(a.out).write_bytes(r.content)  # exactly the bytes the API sent
    log.info("%s: %d bytes, domain %s, mask %s, seed %s", a.out, len(r.content), a.domain,
             r.headers.get("x-mask-id"), r.headers.get("x-seed"))
    return 0


def search(c: Client, a: argparse.Namespace) -> int:
    body = {"domain": a.domain, "dataset": a.dataset, "promote": a.promote,
            "config": {k: getattr(a, k) for k in SEARCH_FIELDS if getattr(a, k) is not None}}
    if a.preset:
        body["preset"] = a.preset
    accepted = c.submit_search(body)
    _emit(accepted)
    return follow_job(c, accepted["job_id"]) if a.follow else 0


def _progress_line(data: dict) -> str:
    parts = [f"iteration {data.get('iteration')}/{data.get('iterations')}"]
    if data.get("loss") is not None:
        parts.append(f"loss {data['loss']:.6g}")
    if data.get("eta_s") is not None:
        parts.append(f"eta {data['eta_s']:.0f} s")
    if data.get("preview_iteration"):
        parts.append(f"preview at iteration {data['preview_iteration']}")
    return "  ".join(parts)


def follow_job(c: Client, job_id: str) -> int:
    """Print the job's events until its `end` event; reconnect after the last event id when the
    stream closes earlier (a replica going away, the server's stream time limit)."""
    last: str | None = None
    while True:
        r = c.follow_job_events(job_id, last)
        try:
            if r.status_code == 204:  # resumed after `end`: the record has the outcome
                return _ended(c.get_job(job_id))
            for eid, event, raw in sse_events(r.iter_lines()):
                last = eid or last
                data = json.loads(raw) if raw else {}
                if event == "job":
                    print(f"job {job_id}: {data.get('status')} ({data.get('domain')} on {data.get('dataset')})",
                          flush=True)
                elif event == "phase":
                    print(f"phase: {data.get('phase')}", flush=True)
                elif event == "progress":
                    print(_progress_line(data), flush=True)
                elif event == "end":
                    return _ended(data)
        finally:
            r.close()
        log.info("event stream closed before the job ended; reconnecting after %s", last)


def _ended(job: dict) -> int:
    status = job.get("status")
    what = f"mask {job['mask_id']}" if job.get("mask_id") else (job.get("error") or job.get("note") or "")
    print(f"{status}: {what}".rstrip(": "), flush=True)
    return 0 if status == "succeeded" else REFUSED


def follow(c: Client, a: argparse.Namespace) -> int:
    return follow_job(c, a.job_id)


def promote(c: Client, a: argparse.Namespace) -> int:
    body: dict = {}
    if a.mask_id:
        body["mask_id"] = a.mask_id
    if a.pin is not None:
        body["pinned"] = a.pin
    if not body:
        log.error("give a MASK_ID to promote, or --pin / --unpin")
        return REFUSED
    _emit(c.update_domain(a.domain, body))
    return 0


def upload(c: Client, a: argparse.Namespace) -> int:
    path = Path(a.archive)
    if not path.is_file():
        log.error("%s: no such file", path)
        return REFUSED
    _emit(c.upload_dataset(a.name, path))
    return 0


def export(c: Client, a: argparse.Namespace) -> int:
    """DIR/<mask_id>.safetensors and DIR/README.md, the card; the file checked against it."""
    card = c.get_mask_card(a.mask_id)
    data = c.get_mask_file(a.mask_id)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.mask_id}.safetensors").write_bytes(data)
    (out / CARD).write_text(card, encoding="utf-8")
    check(out)  # what `slt import` will check: a download that went wrong shows here
    log.info("bundle of mask %s written to %s", a.mask_id, out)
    _emit({"mask_id": a.mask_id, "dir": str(out), "files": [f"{a.mask_id}.safetensors", CARD]})
    return 0


def import_(c: Client, a: argparse.Namespace) -> int:
    path, data, slt = check(Path(a.dir))
    r = c.import_mask(path.name, data)
    info = r.json()
    log.info("mask %s %s", info.get("mask_id"), "imported" if r.status_code == 201 else "already there")
    _emit(info)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slt", description="A client of the strong-lottery-ticket service.")
    p.add_argument("--url", help="the API (default SLT_URL, else http://127.0.0.1:8000)")
    p.add_argument("--token", help="admin token (default SLT_ADMIN_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="images of a domain (GET /generate), the API's bytes as they are")
    g.add_argument("--domain", required=True)
    g.add_argument("--n", type=int, default=1, help="images; n > 1 gives one grid")
    g.add_argument("--seed", type=int, help="omit to have the server draw one (logged)")
    g.add_argument("--format", choices=("png", "webp", "json"), default="png")
    g.add_argument("--out", required=True, help="file to write, or - for stdout")
    g.set_defaults(run=generate)

    s = sub.add_parser("search", help="search a mask for a domain (POST /masks, admin)")
    s.add_argument("--domain", required=True)
    s.add_argument("--dataset", required=True, help="a dataset name (GET /datasets)")
    s.add_argument("--preset", help="named settings the options override (demo, fast, paper)")
    s.add_argument("--k", type=float, help="fraction of weights KEPT (the paper's k)")
    s.add_argument("--iterations", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--pruning", choices=("local", "global", "gradual"))
    s.add_argument("--seed", type=int, help="seeds scores and latents, never the base")
    s.add_argument("--lr", type=float)
    s.add_argument("--no-promote", dest="promote", action="store_false",
                   help="do not make the mask the domain's active one when done")
    s.add_argument("--follow", action="store_true", help="then follow the job (as `slt follow`)")
    s.set_defaults(run=search)

    f = sub.add_parser("follow", help="a job's live progress (GET /jobs/{id}/events) until it ends; "
                                      "exit 0 if it succeeded")
    f.add_argument("job_id")
    f.set_defaults(run=follow)

    pr = sub.add_parser("promote", help="make MASK_ID a domain's active mask, or pin it (PUT /domains/{name})")
    pr.add_argument("domain")
    pr.add_argument("mask_id", nargs="?")
    pin = pr.add_mutually_exclusive_group()
    pin.add_argument("--pin", dest="pin", action="store_true", default=None)
    pin.add_argument("--unpin", dest="pin", action="store_false")
    pr.set_defaults(run=promote)

    u = sub.add_parser("upload", help="upload a .zip or .tar(.gz) of images as a dataset (POST /datasets)")
    u.add_argument("name")
    u.add_argument("archive")
    u.set_defaults(run=upload)

    e = sub.add_parser("export", help="a mask and its model card into a folder (a bundle)")
    e.add_argument("mask_id")
    e.add_argument("--out", required=True, help="the bundle's folder")
    e.set_defaults(run=export)

    i = sub.add_parser("import", help="check a bundle's card against its file, then import it "
                                      "(POST /masks/import, admin)")
    i.add_argument("dir")
    i.set_defaults(run=import_)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="slt: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env = ClientSettings()
    settings = ClientSettings(url=a.url or env.url, admin_token=a.token or env.admin_token,
                              http_timeout_s=env.http_timeout_s)
    try:
        with Client(settings) as c:
            return a.run(c, a)
    except ApiError as e:
        log.error("%s", e)
        return REFUSED
    except BundleError as e:
        log.error("%s", e)
        return MISMATCH
    except OSError as e:
        log.error("%s", e)
        return REFUSED
    except KeyboardInterrupt:
        return 130
