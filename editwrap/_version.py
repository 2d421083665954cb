"""The library version (one place: the package, saved stacks and the build read it)."""
__version__ = "0.3.0.dev0"
