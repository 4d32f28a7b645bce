"""The browser chat page's static files (HTML, JS modules, CSS), served by frontends/server_ui.py."""
