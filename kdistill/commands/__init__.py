"""Core CLI commands, one module per verb group; registered by ``kdistill.plugins.builtin``."""
