"""The `ksched` command line."""
