"""One run: the controller, its ZeroMQ transport, rows built from results, the energy ledger."""
