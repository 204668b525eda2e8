"""Small helpers shared by every part of hf_bigsmall."""
