"""Masks as the API shows them: a shared catalog entry (file metadata, evaluation) plus what
this replica knows (served here, resident on the device, the domains using it)."""
from __future__ import annotations

import math
from typing import Any

from trainer.masks import ForeignMaskError, MaskError


def evaluation_by_split(sidecar: dict) -> dict[str, dict]:
    """A mask's evaluation as `{split: metrics}`, the format `python -m trainer evaluate
    --record` and the worker write (`{"heldout": {"fid": ..., "kid": ..., "n": ...}}`). A flat
    dict of metrics (older workers wrote one) is shown under its own `split`, else `heldout`."""
    out = {str(k): v for k, v in sidecar.items() if isinstance(v, dict)}
    flat = {k: v for k, v in sidecar.items() if not isinstance(v, dict)}
    if flat:
        split = flat.get("split") if isinstance(flat.get("split"), str) else "heldout"
        out.setdefault(split, flat)
    return out


def finite(obj: Any) -> Any:
    """JSON-safe: NaN and infinities (a random mask's loss, say) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def mask_view(entry: dict, base_sha: str, domains: list[str], resident: bool,
              refusal: MaskError | None = None) -> dict:
    """One mask for GET /masks: its info, `evaluation` by split, and this replica's state.
    `served` means this replica can serve it: made for the served base and not refused;
    `error` says why a mask of the served base was refused."""
    info = entry.get("info") if isinstance(entry.get("info"), dict) else {}
    out: dict[str, Any] = {**info, "mask_id": entry["mask_id"]}
    out.setdefault("bytes", entry.get("bytes"))
    evaluation = evaluation_by_split(entry.get("evaluation") or {})
    if evaluation:
        out["evaluation"] = evaluation
    if entry.get("provenance"):
        out["provenance"] = entry["provenance"]
    out["served"] = info.get("base_sha256") == base_sha and refusal is None
    out["resident"] = resident
    out["domains"] = sorted(domains)
    if refusal is not None and not isinstance(refusal, ForeignMaskError):  # else: `served` says it
        out["error"] = str(refusal)
    return finite(out)


def domains_by_mask(view: dict[str, str]) -> dict[str, list[str]]:
    """Invert domain -> mask_id, for listing many masks at once."""
    out: dict[str, list[str]] = {}
    for name, mask_id in view.items():
        out.setdefault(mask_id, []).append(name)
    return out
