"""`python -m service`: the API under uvicorn on SLT_HOST:SLT_PORT (default 127.0.0.1:8000)."""
from __future__ import annotations

import uvicorn

from service.admission import PacedHttpToolsProtocol
from service.settings import get_settings


def main() -> None:
    s = get_settings()
    uvicorn.run("service.app:app", factory=True, host=s.host, port=s.port,
                log_level=s.log_level.lower(), timeout_graceful_shutdown=10,
                http=PacedHttpToolsProtocol)  # a refused connection is paused (service.admission)


if __name__ == "__main__":
    main()
