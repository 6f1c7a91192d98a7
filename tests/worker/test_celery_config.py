"""The Celery settings that long searches rely on (late acks, no prefetch, a bounded
visibility timeout), as the worker app really resolves them; no broker is contacted."""
from __future__ import annotations

from store.settings import SharedSettings, get_settings
from worker.app import VISIBILITY_TIMEOUT_S, celery_config, make_app

URL = "redis://127.0.0.1:1/0"  # never connected to: reading the configuration is enough


def test_worker_app_is_configured_for_long_tasks():
    conf = make_app(URL).conf
    assert conf.broker_url == URL
    assert conf.task_acks_late is True  # acknowledged only when the search returns
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1  # no second search reserved behind a running one
    assert conf.worker_pool == "solo" and conf.worker_concurrency == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    vt = conf.broker_transport_options["visibility_timeout"]
    assert vt == VISIBILITY_TIMEOUT_S == celery_config(URL, 30.0)["broker_transport_options"]["visibility_timeout"]
    # hours, so Redis itself rarely redelivers, and far past a lease, so a dead worker's job is
    # recovered by the watchdog (after SLT_LEASE_S) long before Redis would hand it out again
    lease_s = SharedSettings.model_fields["lease_s"].default
    assert 3600 <= vt and vt >= 100 * lease_s


def test_search_task_acks_late_and_is_rejected_when_its_worker_is_lost(monkeypatch):
    # the worker's own app resolves its broker URL from the settings when first finalised
    monkeypatch.setenv("SLT_REDIS_URL", URL)
    get_settings.cache_clear()
    try:
        from worker.queue import SEARCH_TASK
        from worker.tasks import app, search_mask

        assert app.conf.task_acks_late is True and app.conf.worker_prefetch_multiplier == 1
        task = app.tasks[SEARCH_TASK]  # what a worker runs for a search message
        assert task.name == search_mask.name == SEARCH_TASK
        assert task.acks_late is True and task.reject_on_worker_lost is True
        assert task.ignore_result is True
    finally:
        get_settings.cache_clear()
