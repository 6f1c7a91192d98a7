"""The API's operation ids, in one place: (method, path) -> the id a client calls
(tests/service/test_operation_ids.py checks the app against it; tests/client checks the `slt`
client's calls)."""
from __future__ import annotations

# The one list of operation ids: (method, path) -> id. A new route adds its row here.
EXPECTED = {
    ("GET", "/healthz"): "get_liveness",
    ("GET", "/readyz"): "get_readiness",
    ("GET", "/metrics"): "get_metrics",
    ("GET", "/generate"): "generate_images",
    ("GET", "/domains"): "list_domains",
    ("GET", "/domains/{name}"): "get_domain",
    ("PUT", "/domains/{name}"): "update_domain",
    ("DELETE", "/domains/{name}"): "delete_domain",
    ("GET", "/masks"): "list_masks",
    ("POST", "/masks"): "submit_search",
    ("GET", "/masks/{mask_id}"): "get_mask",
    ("DELETE", "/masks/{mask_id}"): "delete_mask",
    ("GET", "/masks/{mask_id}/file"): "get_mask_file",
    ("GET", "/masks/{mask_id}/card"): "get_mask_card",
    ("POST", "/masks/import"): "import_mask",
    ("GET", "/jobs"): "list_jobs",
    ("GET", "/jobs/{job_id}"): "get_job",
    ("DELETE", "/jobs/{job_id}"): "cancel_job",
    ("GET", "/jobs/{job_id}/preview"): "get_job_preview",
    ("GET", "/datasets"): "list_datasets",
    ("POST", "/datasets"): "upload_dataset",
    ("GET", "/jobs/{job_id}/events"): "follow_job_events",
    ("GET", "/interpolate"): "interpolate",
}
ARRIVING: dict[tuple[str, str], str] = {}  # routes allowed but not yet required (none now)
