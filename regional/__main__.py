from regional.cli import main

raise SystemExit(main())
