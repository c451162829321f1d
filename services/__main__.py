"""`python -m services` is the `adchain` command."""

from services.cli import main

raise SystemExit(main())
