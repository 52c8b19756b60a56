"""The admin console at /ui/: server-rendered HTML on the admin use-cases.

Modules: ``session`` (signed session cookies and CSRF tokens, pure), ``core``
(sign-in, the guard every page and action goes through, rendering, security
headers), ``pages`` (what an admin reads), ``actions`` (what an admin changes,
through fleet.authority), ``stats`` (the overview's numbers), ``routes``.
Templates live in ``templates/``, the one stylesheet in ``static/``.
"""
