"""The rule profiles shipped with the product (YAML files in this folder; format in README.md)."""

from pathlib import Path

FOLDER = Path(__file__).parent
