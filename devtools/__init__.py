"""Developer tools, not part of the product: never installed, never imported by `gateway`.

- `fleet_local`: `make fleet`, the docker-compose topology as local processes.
"""
