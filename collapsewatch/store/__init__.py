"""The run store: the one contract between hooks, diagnostics, dashboard and notebooks."""
