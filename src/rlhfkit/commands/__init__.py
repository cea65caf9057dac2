"""Command implementations that are not training loops: each module has `Config` and `main`."""
