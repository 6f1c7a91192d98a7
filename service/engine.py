"""Generation engine (stub until the service issue lands)."""
from __future__ import annotations


class Engine:
    def __init__(self, settings, state):
        self.settings, self.state = settings, state

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
