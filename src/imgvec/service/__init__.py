"""The HTTP service (`imgvec serve`): the API, the search page and /metrics, on the same wiring as the CLI."""
