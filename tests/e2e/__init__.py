"""End-to-end tests: real tusserver processes and real tus clients (tuspy, tus-js-client)."""
