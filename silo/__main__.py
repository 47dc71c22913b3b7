from silo.cli import main

raise SystemExit(main())
