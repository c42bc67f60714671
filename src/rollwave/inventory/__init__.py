"""Inventories: rollwave YAML and Ansible INI/YAML files read into targets and groups.

Pure parsing (the only I/O is reading the file) and Ansible host patterns.
"""

from rollwave.inventory.load import load_inventory
from rollwave.inventory.model import Inventory, Target
from rollwave.inventory.patterns import select

__all__ = ["Inventory", "Target", "load_inventory", "select"]
