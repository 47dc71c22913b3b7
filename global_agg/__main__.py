from global_agg.cli import main

raise SystemExit(main())
