"""The operator console: a JSON API, its dashboard, and who may use them."""
