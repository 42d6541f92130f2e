"""The echo benchmark: ``bench.echo.run.main(argv) -> int`` runs it (see bench/README.md)."""
