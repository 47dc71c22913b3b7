from jurisfed.cli import main

raise SystemExit(main())
