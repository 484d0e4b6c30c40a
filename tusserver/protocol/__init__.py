"""tus 1.0.0 over HTTP: header parsing, errors and the request handlers."""
