"""The console's pages, one module each: `routes(console) -> list[Route]` (gateway/console/app.py PAGES)."""
