"""One Redis timeout for every client (SLT_REDIS_SOCKET_TIMEOUT_S: Celery's broker and backend,
the store's clients, the domain listener's), and the worker's metrics on a configured address."""
from __future__ import annotations

import socket
import urllib.request

import pytest

from store.connection import connect, free_port
from store.settings import SharedSettings, get_settings
from worker.app import make_app

URL = "redis://127.0.0.1:1/0"  # never connected to: reading the configuration is enough


@pytest.fixture
def timeout_7s(monkeypatch):
    monkeypatch.setenv("SLT_REDIS_SOCKET_TIMEOUT_S", "7")
    get_settings.cache_clear()
    yield 7.0
    get_settings.cache_clear()


def test_celery_redis_clients_use_the_socket_timeout_setting(timeout_7s):
    conf = make_app(URL).conf
    assert conf.broker_transport_options["socket_timeout"] == timeout_7s  # the broker's client
    assert conf.redis_socket_timeout == timeout_7s  # the result backend's


def test_a_client_without_an_explicit_timeout_uses_the_setting(timeout_7s):
    # e.g. the domain listener's own connection (service/domain_mirror.py: connect(url))
    client = connect(URL)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == timeout_7s


def test_worker_metrics_listen_on_the_configured_address_only():
    from worker import metrics

    assert SharedSettings.model_fields["worker_metrics_host"].default == "127.0.0.1"
    # two distinct loopback addresses: served on the one configured, refused on the other
    for served, other in (("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.1")):
        port = free_port()
        metrics.serve(port, served)
        with urllib.request.urlopen(f"http://{served}:{port}/metrics", timeout=5) as r:
            assert b"slt_worker_search_iterations" in r.read()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((other, port), timeout=2).close()
