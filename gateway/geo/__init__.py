"""Places: where a client address is, from GeoIP databases (docs/operators.md, "Client addresses").

- `reader`: an address to a `Place` (country, region, anonymizer) from `.mmdb` files.
- `embedded`, `region_overlay`: the databases the package ships.
- `files`: the databases in force, their age, and their replacement on disk.
- `lookup_cli`: `gateway geo lookup IP`.
"""
