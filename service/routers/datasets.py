"""Routes for datasets (stub until its issue lands)."""
from fastapi import APIRouter

router = APIRouter()
