"""Commands: diagram and other operator commands."""
