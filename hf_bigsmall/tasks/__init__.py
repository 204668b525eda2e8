"""Data and teacher preparation shared by the recipes and the quickstart, one module per task."""
