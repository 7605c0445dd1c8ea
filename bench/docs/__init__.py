"""The documentation site's generated pages: the reference (CLI, config keys, methods, recipes) and the committed
leaderboards, built from the code each time the site is (`make docs`; the MkDocs hook is `bench/docs/hook.py`)."""
