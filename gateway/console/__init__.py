"""The operator console: server-rendered pages at /console on the admin listener (docs/console.md).

    app.py       the Starlette app and PAGES, the page modules it mounts
    context.py   Console: what pages read and change; `console.page` / `console.form`
    auth.py      sign-in, sign-out, who is asking (Authority)
    sessions.py  sessions in memory (embedded) or Redis (fleet)
    csrf.py      per-session form tokens, same-origin checks
    guards.py    the checks every GET page and POST form goes through
    forms.py     reading a URL-encoded form, bounded
    render.py    `render(request, template, context)`: one way to answer with a page
    pages/       one module per page: `routes(console) -> list[Route]`
    templates/   Jinja2 templates (base.html: navigation, blocks `title` and `content`)
    static/      the stylesheet and script, shipped in the package (no CDN)
"""
