"""Model cards and Hub upload for models made with hf_bigsmall."""

from .card import build_model_card, validate_card
from .push import HubUploadError, push_folder

__all__ = ["HubUploadError", "build_model_card", "push_folder", "validate_card"]
