"""The admin listener and its clients (docs/admin-api.md).

- `app`: the admin listener: health, readiness, metrics, the admin API.
- `openapi`: its endpoints as an OpenAPI document.
- `client`: the HTTP client of `gateway admin`; `cli`, `control_cli`, `keys_cli`: its verbs.
"""
