from app.audit.cli import main

raise SystemExit(main())
