"""Celery worker: mask searches as reliable jobs on Redis, job records, domain registry."""
