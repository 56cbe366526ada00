"""The `scaling` command line: app.py assembles one module per command group."""
