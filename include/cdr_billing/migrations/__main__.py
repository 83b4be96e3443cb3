"""`python -m cdr_billing.migrations`: upgrade the billing database, or show its version."""

from cdr_billing.migrations import main

raise SystemExit(main())
