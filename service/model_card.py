"""A mask's model card (README.md), in the Hugging Face Hub's habit: YAML front matter that
tools read (license, tags, datasets, metrics, model-index) plus an `slt` block that `slt import`
checks against the file, then a body a person reads: what the mask is, the base it prunes, the
dataset, the exact search request and settings, the metrics and where it was searched.

Everything comes from the shared catalog's entry: the file's own metadata (`info`), its
evaluations (`evaluation`, by split) and how its job made it (`provenance`, recorded by the
worker; absent for an imported mask, whose card then says the search is not known here)."""
from __future__ import annotations

import json
import time
from typing import Any

import yaml

from service.mask_views import evaluation_by_split, finite

METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")
_NAMES = {"fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall",
          "density": "density", "coverage": "coverage"}


def mask_file_name(mask_id: str) -> str:
    return f"{mask_id}.safetensors"


def _when(t: Any) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if isinstance(t, int | float) else None


def _search_request(prov: dict) -> dict | None:
    """The POST /masks body that runs this search again (the job's config is the preset's
    settings with its overrides already applied, so the config alone is exact)."""
    if not prov:
        return None
    return {"domain": prov.get("domain"), "dataset": prov.get("dataset"), "preset": prov.get("preset"),
            "config": {k: v for k, v in (prov.get("config") or {}).items()
                       if k in ("k", "iterations", "batch_size", "pruning", "seed", "lr")},
            "promote": prov.get("promote", True)}


def _slt_command(req: dict) -> str:
    parts = ["slt search", f"--domain {req['domain']}", f"--dataset {req['dataset']}"]
    if req.get("preset"):
        parts.append(f"--preset {req['preset']}")
    for k, v in req["config"].items():
        parts.append(f"--{k.replace('_', '-')} {v}")
    if not req.get("promote", True):
        parts.append("--no-promote")
    return " ".join(parts)


def front_matter(entry: dict, license: str) -> dict:
    info, prov = entry.get("info") or {}, entry.get("provenance") or {}
    evaluation = evaluation_by_split(entry.get("evaluation") or {})
    mask_id = entry["mask_id"]
    arch = info.get("base_arch") if isinstance(info.get("base_arch"), dict) else {}
    dataset = prov.get("dataset") or next((e.get("dataset") for e in evaluation.values()
                                           if e.get("dataset")), None)
    domain = info.get("domain") or prov.get("domain")
    index = [{"task": {"type": "unconditional-image-generation"},
              "dataset": {"name": dataset, "type": dataset, "split": split},
              "metrics": [{"type": m, "value": ev[m], "name": f"{_NAMES[m]} (n={ev.get('n')}, {split})"}
                          for m in METRICS if isinstance(ev.get(m), int | float)]}
             for split, ev in evaluation.items()]
    out: dict[str, Any] = {
        "license": license,
        "library_name": "slt-serve",
        "tags": [t for t in ("strong-lottery-ticket", "slt-mask", "edge-popup",
                             "unconditional-image-generation", domain) if t],
        "datasets": [dataset] if dataset else [],
        "metrics": [m for m in METRICS if any(m in ev for ev in evaluation.values())],
    }
    if index:
        out["model-index"] = [{"name": f"slt-{domain or mask_id[:12]}", "results": index}]
    out["slt"] = {  # what `slt import` checks against the file before importing it
        "mask_id": mask_id, "file": mask_file_name(mask_id), "sha256": mask_id,
        "bytes": entry.get("bytes") or info.get("bytes"), "format": info.get("format"),
        "domain": domain,
        "base": {"arch": arch.get("arch"), "nz": arch.get("nz"), "width": arch.get("width"),
                 "init": info.get("init"), "seed": info.get("base_seed"),
                 "sha256": info.get("base_sha256")},
        "dataset": {"name": dataset, "sha256": info.get("dataset_sha256")},
    }
    return finite(out)


def render(entry: dict, license: str) -> str:
    """The README.md of a mask's bundle."""
    meta = front_matter(entry, license)
    info, prov, slt = entry.get("info") or {}, entry.get("provenance") or {}, meta["slt"]
    base, data = slt["base"], slt["dataset"]
    evaluation = evaluation_by_split(entry.get("evaluation") or {})
    req = _search_request(prov)
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {slt['domain'] or 'mask'}: a strong lottery ticket mask", "",
        "A binary mask over a frozen, never-trained random generator: the subnetwork it keeps "
        "generates this domain. The base is not in this bundle; it is rebuilt from "
        "(arch, init, seed) and identified by its sha256.", "",
        f"- mask id (sha256 of `{slt['file']}`): `{slt['mask_id']}`",
        f"- format: {slt['format']}, {slt['bytes']} bytes; k (fraction of weights kept): "
        f"{info.get('k')}, pruning: {info.get('pruning')}, kept: {info.get('kept_fraction')}",
        f"- license: {meta['license']}", "",
        "## Base", "",
        f"- arch: {base['arch']}, nz {base['nz']}, width {base['width']}",
        f"- init: {base['init']}, base seed: {base['seed']}",
        f"- base sha256 (of its canonical weights, as the catalog records it): `{base['sha256']}`", "",
        "## Dataset", "",
        f"- name: {data['name'] or 'not known here'}",
        f"- sha256: `{data['sha256']}`", "",
        "## Search", "",
    ]
    if req:
        lines += [
            f"- job: `{prov.get('job_id')}`, finished {_when(prov.get('finished'))}, "
            f"attempts {prov.get('attempts')}",
            f"- search time: {prov.get('search_seconds', 'not recorded')} s on "
            f"{prov.get('device', 'a device not recorded')}", "",
            "The exact request (`POST /masks`) and the same with the client:", "",
            "```json", json.dumps(req, indent=2, sort_keys=True), "```", "",
            "```sh", _slt_command(req), "```", "",
            "The job's settings, all of them (preset and overrides resolved):", "",
            "```json", json.dumps(prov.get("config"), indent=2, sort_keys=True), "```", "",
        ]
    else:
        lines += ["The job that searched this mask is not known to this deployment (an imported "
                  "mask); its settings as the file records them:", ""]
    lines += [f"- features: {info.get('features')}, iterations: {info.get('iterations')}, "
              f"precision: {info.get('search_precision')}",
              f"- objective: `{json.dumps(info.get('objective'), sort_keys=True)}`",
              f"- created: {info.get('created')}", "", "## Evaluation", ""]
    if evaluation:
        lines += ["| split | n | FID | KID | precision | recall | density | coverage | features | evaluated |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for split, ev in evaluation.items():
            cells = [split, ev.get("n"), *(ev.get(m) for m in METRICS), ev.get("features"),
                     _when(ev.get("evaluated")) or "not recorded"]
            lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
        lines.append("")
    else:
        lines += ["Not evaluated (yet).", ""]
    return "\n".join(lines)
