"""FastAPI service: one shared random generator, masks hot-swapped per request, admin dashboard."""
