"""Fixes to the themes' HTML found by the browser tests (tests/test_browser_book.py)."""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    """Sphinx 7.4 lists a body-only script twice (filename None and ""): drop the second copy.

    Without this, sphinx-thebe's inline script runs twice and every page logs
    "Identifier 'THEBE_JS_URL' has already been declared".
    """
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (str(getattr(script, "filename", script) or ""),
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
