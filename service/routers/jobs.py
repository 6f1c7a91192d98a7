"""Routes for jobs (stub until its issue lands)."""
from fastapi import APIRouter

router = APIRouter()
