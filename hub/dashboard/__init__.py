"""The web dashboard: server-rendered pages under ``/ui/``, served by the hub itself.

Kept free of imports so ``hub.route_access`` can import ``hub.dashboard.session``:
``session`` (cookie sessions and CSRF), ``pages`` (page-level access and rendering),
``plots`` (server-side SVG), and the page modules ``auth_pages``, ``fleet_pages``,
``device_pages`` whose ``routes`` ``hub.app`` adds.
"""
